"""Wikitext to prose in a child process held to caps on CPU time and memory.

mwparserfromhell's tokenizer takes quadratic time on some flat runs of unclosed markup and its
memory grows with the markup (see ``clipforge.limits``); neither can be stopped from inside the
process that calls it (the tokenizer is C code that does not return to Python). So the dump
reader hands pages to a child process (``ProseParser``), one at a time: the child sets its own
RLIMIT_AS once and, for each page, an RLIMIT_CPU of the page's share, so the kernel ends it when a
page takes longer (SIGXCPU). The page is then counted (page_parse_too_costly) and the next page
goes to a new child. A child that dies any other way is a bug and stops the run.

Run as ``python -m clipforge.queries.prose_worker MAX_BYTES``: requests on stdin are a 4-byte
length, a 4-byte CPU allowance in seconds and the UTF-8 wikitext; each reply is a status byte (0
prose, 1 parser error, 2 out of memory), a 4-byte length and the UTF-8 prose or message.
"""

import math
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time

from clipforge.limits import MAX_WIKI_PARSE_BYTES, WIKI_PARSE_CPU_SECONDS, WIKI_PARSE_CPU_SECONDS_PER_MCHAR
from clipforge.queries.wikidump import PageError, wikitext_to_prose

_REQUEST = struct.Struct(">II")
_REPLY = struct.Struct(">BI")
TOO_COSTLY = "page_parse_too_costly"


def cpu_allowance(chars, floor=WIKI_PARSE_CPU_SECONDS, per_mchar=WIKI_PARSE_CPU_SECONDS_PER_MCHAR):
    """Whole CPU seconds one page of ``chars`` characters may take to parse."""
    return math.ceil(floor + per_mchar * chars / 1e6)


class ProseParser:
    """``prose(text)``: wikitext_to_prose run in a capped child process. Raises PageError with
    ``reason`` page_parse_too_costly (CPU or memory cap) or page_unparsable (the parser failed);
    RuntimeError when the child dies for any other reason (a bug)."""

    def __init__(self, max_bytes=MAX_WIKI_PARSE_BYTES, floor=WIKI_PARSE_CPU_SECONDS,
                 per_mchar=WIKI_PARSE_CPU_SECONDS_PER_MCHAR):
        self.max_bytes, self.floor, self.per_mchar = max_bytes, floor, per_mchar
        self.proc = self.errors = None

    def _start(self):
        self.errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "clipforge.queries.prose_worker", str(self.max_bytes)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors)

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.errors.close()
            self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def prose(self, text):
        if self.proc is None:
            self._start()
        data = text.encode("utf-8", "surrogatepass")
        cpu = cpu_allowance(len(text), self.floor, self.per_mchar)
        try:
            self.proc.stdin.write(_REQUEST.pack(len(data), cpu) + data)
            self.proc.stdin.flush()
            # wall-clock safety net only: the child's CPU limit ends a slow page first
            head = self._read(_REPLY.size, time.monotonic() + 10 * cpu + 60)
            status, n = _REPLY.unpack(head)
            body = self._read(n, time.monotonic() + 60).decode("utf-8", "surrogatepass")
        except (BrokenPipeError, EOFError, TimeoutError):
            self._ended()
            raise PageError(f"the wikitext parser passed its cap ({cpu} CPU s, {self.max_bytes:,} bytes)",
                            TOO_COSTLY) from None
        if status == 0:
            return body
        raise PageError(body, TOO_COSTLY if status == 2 else "page_unparsable")

    def _read(self, n, deadline):
        fd, out = self.proc.stdout.fileno(), bytearray()
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            piece = os.read(fd, min(n - len(out), 1 << 20))
            if not piece:
                raise EOFError
            out += piece
        return bytes(out)

    def _ended(self):
        """The child stopped answering: kill it; a death that is not a cap is a bug."""
        proc = self.proc
        proc.kill()
        rc = proc.wait()
        self.errors.seek(0)
        errors = self.errors.read().decode("utf-8", "replace").strip()
        self.proc.stdout.close()
        self.errors.close()
        self.proc = None
        if rc not in (-signal.SIGXCPU, -signal.SIGKILL) and "MemoryError" not in errors:
            raise RuntimeError(f"the prose worker died (exit {rc}): {errors[-2000:]}")


def _read_exact(stream, n):
    out = bytearray()
    while len(out) < n:
        piece = stream.read(n - len(out))
        if not piece:
            return None
        out += piece
    return bytes(out)


def _limit(which, soft):
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def main(argv):
    _limit(resource.RLIMIT_CORE, 0)  # SIGXCPU would otherwise dump core
    _limit(resource.RLIMIT_AS, int(argv[0]))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = _read_exact(stdin, _REQUEST.size)
        if head is None:
            return 0
        n, cpu = _REQUEST.unpack(head)
        text = _read_exact(stdin, n).decode("utf-8", "surrogatepass")
        used = resource.getrusage(resource.RUSAGE_SELF)
        _limit(resource.RLIMIT_CPU, math.ceil(used.ru_utime + used.ru_stime + cpu))
        try:
            status, out = 0, wikitext_to_prose(text)
        except PageError as e:
            status, out = 1, str(e)
        except MemoryError:
            status, out = 2, f"the wikitext parser ran out of its {int(argv[0]):,} bytes"
        del text
        data = out.encode("utf-8", "surrogatepass")
        stdout.write(_REPLY.pack(status, len(data)) + data)
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
