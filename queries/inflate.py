"""Compressed inputs read as bounded streams: a decompression bomb is refused, not inflated.

``open_input(path)`` gives a binary stream of a file's decompressed bytes (bz2 multistream,
gzip multi-member, xz/lzma, zstd, deflate, or plain, by extension) that raises ``OverBudget``
once a compressed file has inflated past ``clipforge.limits.decompressed_budget`` of its
compressed size. Every decompressor here works in bounded steps (Beam's own ``CompressedFile``
inflates whole read buffers at once, so it is not used for reading).
"""

import bz2
import gzip
import io
import lzma
import zlib

import zstandard

from clipforge.limits import decompressed_budget

CHUNK = 1 << 20

# Everything a damaged compressed stream or file can raise while it is read.
READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


class OverBudget(OSError):
    """A compressed input inflated past its decompression budget."""


# File extensions of compressed inputs, as Beam's CompressionTypes.detect_compression_type reads them.
_EXTENSIONS = {".bz2": "bz2", ".deflate": "deflate", ".gz": "gz", ".zst": "zst", ".zstd": "zst", ".xz": "xz",
               ".lzma": "xz"}


def compression(path):
    """"bz2", "gz", "xz", "zst", "deflate" or "" (plain), by the file's extension."""
    name = path.lower()
    return next((kind for ext, kind in _EXTENSIONS.items() if name.endswith(ext)), "")


class _Budgeted(io.RawIOBase):
    """The bytes of a decompressing stream, up to ``budget`` of them; past it, OverBudget."""

    def __init__(self, inner, budget, compressed):
        self.inner, self.budget, self.compressed, self.n = inner, budget, compressed, 0

    def readable(self):
        return True

    def readinto(self, b):
        want = min(len(b), self.budget + 1 - self.n)
        data = self.inner.read(max(want, 1))
        self.n += len(data)
        if self.n > self.budget:
            raise OverBudget(f"inflates past its decompression budget ({self.budget:,} bytes for "
                             f"{self.compressed:,} compressed: clipforge.limits.decompressed_budget)")
        b[: len(data)] = data
        return len(data)

    def close(self):
        try:
            self.inner.close()
        finally:
            super().close()


class _Deflate(io.RawIOBase):
    """A zlib (deflate) stream, inflated at most ``len(b)`` bytes at a time."""

    def __init__(self, raw):
        self.raw, self.d, self.tail = raw, zlib.decompressobj(), b""

    def readable(self):
        return True

    def readinto(self, b):
        while True:
            if self.d.eof:
                return 0
            data = self.tail or self.raw.read(CHUNK)
            if not data:
                raise EOFError("deflate stream ends before its end marker")
            out = self.d.decompress(data, len(b))
            self.tail = self.d.unconsumed_tail
            if out:
                b[: len(out)] = out
                return len(out)


def _decompressor(raw, kind):
    if kind == "bz2":
        return bz2.BZ2File(raw)
    if kind == "gz":
        return gzip.GzipFile(fileobj=raw)
    if kind == "xz":
        return lzma.LZMAFile(raw)
    if kind == "zst":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
    return _Deflate(raw)


def _size(raw, path):
    try:
        pos = raw.tell()
        size = raw.seek(0, io.SEEK_END)
        raw.seek(pos)
        return size
    except (OSError, AttributeError, ValueError):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.match([path])[0].metadata_list[0].size_in_bytes


def open_input(path, kind=None):
    """(stream, raw): a binary stream of the file's decompressed bytes, bounded by its budget,
    and the raw file under it (its ``tell()`` is the progress through the file). Plain files:
    stream is raw. Closing the stream closes raw."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems  # imported here: the prose worker does not need Beam

    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    kind = compression(path) if kind is None else kind
    if not kind:
        return raw, raw
    try:
        size = _size(raw, path)
        stream = _Budgeted(_Closing(_decompressor(raw, kind), raw), decompressed_budget(size), size)
    except BaseException:
        raw.close()
        raise
    return io.BufferedReader(stream, CHUNK), raw


class _Closing:
    """A decompressor whose close also closes the raw file under it."""

    def __init__(self, dec, raw):
        self.dec, self.raw = dec, raw

    def read(self, n):
        return self.dec.read(n)

    def close(self):
        try:
            self.dec.close()
        finally:
            self.raw.close()
