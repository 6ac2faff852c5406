"""How every Beam stage is launched: Beam's own flags in, a pipeline on the right runner out.

Without ``--runner`` a stage runs on Beam's FnApiRunner in multi-processing mode with one
worker per core (``--direct_num_workers=0``); FnApiRunner is pinned because the default
local runner may pick Prism, which downloads a binary at start-up. Any other runner
(``FlinkRunner``, ``SparkRunner``, ``DataflowRunner``, ``PortableRunner``) is passed through
untouched with the user's flags.
"""

import argparse
import contextlib
import os
import re
import sys
import tempfile
import threading

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner


class BeamFlagError(ValueError):
    """A flag that neither the stage nor Beam knows."""


def _all_option_classes(cls=PipelineOptions):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_option_classes(sub)


def unknown_beam_flags(flags):
    """The flags in ``flags`` that no Beam options class accepts."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    seen = set()
    for cls in _all_option_classes():
        if cls in seen:
            continue
        seen.add(cls)
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:
            pass  # an option defined by two classes; the first definition is enough
    _, unknown = parser.parse_known_args(flags)
    return [u for u in unknown if u.startswith("-")]


def make_pipeline(beam_flags, default_workers=0):
    """A ``beam.Pipeline`` for the given Beam flags (the stage's own flags already removed)."""
    unknown = unknown_beam_flags(beam_flags)
    if unknown:
        raise BeamFlagError(f"unrecognized arguments: {' '.join(unknown)}")
    options = PipelineOptions(beam_flags)
    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "FnApiRunner"):
        direct = options.view_as(DirectOptions)
        if "--direct_running_mode" not in " ".join(beam_flags):
            direct.direct_running_mode = "multi_processing"
        if "--direct_num_workers" not in " ".join(beam_flags):
            direct.direct_num_workers = default_workers
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def counters(result):
    """Committed Beam counter values of a finished pipeline, by name (summed over steps)."""
    out = {}
    for c in result.metrics().query()["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + value
    return out


_OURS = re.compile(r"^(?:INFO|WARNING|ERROR):clipforge[\w.]*:(.*)$")
_BEAM_CHATTER = re.compile(r"^(?:INFO|DEBUG):|^WARNING:(?:root|__main__|apache_beam)[\w.]*:")


@contextlib.contextmanager
def filtered_worker_output():
    """Keep the terminal readable while local Beam workers run.

    FnApiRunner's worker processes inherit stderr and log every start-up step at INFO. For the
    duration of the block, file descriptor 2 goes through a pipe: clipforge's own progress
    lines pass through (without the logger prefix), Beam's chatter is dropped, anything else
    (warnings of ours, tracebacks) passes. Everything is also kept in a log file whose path is
    yielded, to read after a failure.
    """
    log = tempfile.NamedTemporaryFile("w", prefix="clipforge-beam-", suffix=".log", delete=False)
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    out = os.fdopen(os.dup(saved), "w", buffering=1)

    def pump():
        with os.fdopen(read_fd, "r", errors="replace") as pipe:
            for line in pipe:
                log.write(line)
                m = _OURS.match(line)
                if m:
                    out.write(m.group(1).lstrip() + "\n")
                elif not _BEAM_CHATTER.match(line):
                    out.write(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield log.name
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end held by this process
        os.close(saved)
        thread.join(timeout=10)
        out.close()
        log.close()


def run_pipeline(pipeline):
    """Run a pipeline to completion; local runs with their workers' output filtered."""
    local = isinstance(pipeline.runner, FnApiRunner)
    ctx = filtered_worker_output() if local else contextlib.nullcontext(None)
    with ctx as log_path:
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except Exception as e:
            if log_path:
                raise RuntimeError(f"the Beam pipeline failed: {str(e).splitlines()[-1] if str(e) else e!r} "
                                   f"(worker log: {log_path})") from e
            raise
    if log_path:
        os.unlink(log_path)
    return result
