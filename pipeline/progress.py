"""Progress of a running Beam stage, on any runner.

Workers write small JSON notes (``note``) into the stage's temporary directory through Beam's
filesystems; the launcher reads them back every few seconds (``read_notes``) and prints one
line: a bar that rewrites itself where stderr is a terminal, plain lines elsewhere (CI logs,
files). Runner metrics are not used: not every runner has them, and none delivers them to the
launcher while a local pipeline runs.
"""

import json
import os
import sys
import threading

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

INTERVAL = 10.0  # seconds between two progress lines
NOTE_EVERY = 2.0  # seconds between two notes of one worker


def note(root, name, obj):
    """Write (or replace) the note ``root/name.json``."""
    path = FileSystems.join(root, name + ".json")
    tmp = path + ".tmp"
    with FileSystems.create(tmp) as f:
        f.write(json.dumps(obj).encode("utf-8"))
    FileSystems.rename([tmp], [path])


def read_notes(root):
    """{name: note} of every note under ``root`` (a note being replaced is skipped this time)."""
    out = {}
    try:
        found = FileSystems.match([FileSystems.join(root, "*.json")])[0].metadata_list
    except Exception:  # the directory does not exist yet
        return out
    for m in found:
        try:
            with FileSystems.open(m.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                out[m.path.rsplit("/", 1)[-1][: -len(".json")]] = json.loads(f.read())
        except Exception:  # renamed or removed meanwhile
            continue
    return out


def eta(elapsed, fraction):
    if fraction <= 0 or elapsed <= 0:
        return "ETA ?"
    left = elapsed * (1 - fraction) / fraction
    return f"ETA {_duration(left)}"


def _duration(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


class ProgressLine:
    """``with ProgressLine(describe):`` calls ``describe()`` every ``interval`` seconds while the
    block runs and prints what it returns (None: nothing new to say)."""

    def __init__(self, describe, interval=INTERVAL, quiet=False, stream=None):
        self.describe, self.interval, self.quiet = describe, interval, quiet
        self.stream, self._own = stream, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._dirty = False

    def __enter__(self):
        if self.quiet:
            return self
        if self.stream is None:
            # stderr as it is now: the local runner later routes file descriptor 2 through a filter
            # that passes whole lines only, which a bar rewriting itself never ends with
            sys.stderr.flush()
            self.stream, self._own = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1), True
        self.tty = self.stream.isatty()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 5)
        if self._dirty:
            self.stream.write("\n")
            self.stream.flush()
        if self._own:
            self.stream.close()
        return False

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                line = self.describe()
            except Exception as e:  # progress must never end a run
                line = f"(progress unavailable: {e})"
            if not line:
                continue
            if self.tty:
                self.stream.write("\r\033[K" + line)
                self._dirty = True
            else:
                self.stream.write(line + "\n")
            self.stream.flush()


def bar(fraction, width=24):
    done = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * done + "." * (width - done) + "]"
