"""Writing WebDataset tars with the standard library.

The layout is WebDataset's (and open_clip's, img2dataset's): a sample's members are adjacent,
each named ``<key>.<ext>``, extensions in sorted order. The stdlib writer is used instead of
``webdataset.TarWriter`` because importing ``webdataset`` imports torch (about 2.4 s of CPU in
every process that writes shards: the launcher and each Beam worker); the trainer still reads
the shards with webdataset. Readers: ``schemas.validate.read_tar_samples``, ``webdataset``.
"""

import io
import tarfile
import time


class TarSink:
    """``with TarSink(path) as sink: sink.write({"__key__": key, "jpg": bytes, "txt": str, ...})``"""

    def __init__(self, path, mode=0o444, user="bigdata", group="bigdata"):
        self.mode, self.user, self.group = mode, user, group
        self.tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)

    def write(self, sample):
        key = sample.get("__key__")
        if not key or "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must be non-empty, without '.' or '/'")
        now = time.time()
        for ext in sorted(k for k in sample if not k.startswith("_")):
            value = sample[ext]
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueError(f"{key}.{ext}: expected bytes or str, got {type(value).__name__}")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(value), now, self.mode, self.user, self.group
            self.tar.addfile(info, io.BytesIO(value))

    def close(self):
        self.tar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
