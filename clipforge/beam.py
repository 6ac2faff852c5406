"""How every Beam stage is launched: Beam's own flags in, a pipeline on the right runner out.

Without ``--runner`` a stage runs on Beam's FnApiRunner in multi-processing mode with one
worker per core (``--direct_num_workers=0``); FnApiRunner is pinned because the default
local runner may pick Prism, which downloads a binary at start-up. Any other runner
(``FlinkRunner``, ``SparkRunner``, ``DataflowRunner``, ``PortableRunner``, ``DaskRunner``) is
passed through with the user's flags.

What every stage's pipeline keeps to, so that it runs unchanged on every runner (Beam's
DaskRunner is the strictest one that runs here):

- Funnel counts are data, never Beam Metrics (DaskRunner has none): steps emit small count
  dictionaries that ``FinishWithStats`` sums and writes as one JSON file for the launcher.
- Only Create, ParDo/Map/FlatMap, GroupByKey, Flatten and CombineGlobally(...).without_defaults()
  (a GroupByKey and a ParDo); no side inputs, no multi-output ParDos, no Read transforms, no
  output from finish_bundle:
  DaskRunner translates nothing else faithfully (a multi-output ParDo hands every consumer
  all outputs mixed, a Read becomes a no-op, a side input recomputes its producer,
  finish_bundle's output is dropped).
- One step ends the pipeline and depends on everything else: DaskRunner computes only the
  last step it visits.
"""

import argparse
import atexit
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from clipforge.errors import UserError

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
_SDK_WORKER_MAIN = "apache_beam.runners.worker.sdk_worker_main"


def fast_worker_exit():
    """In a Beam SDK worker process (``python -m apache_beam.runners.worker.sdk_worker_main``,
    as FnApiRunner, worker pools and Flink/Spark start them): leave with ``os._exit`` as soon as
    Python's exit begins, with the exit status the worker would have had.

    Measured here: a worker spends 1.3-1.5 s after its harness has returned in interpreter
    finalisation (no Python frames: gRPC's and the modules' teardown), and FnApiRunner stops
    its workers one after the other, so every local run of a stage ended ~2.5 s after its last
    output. When the exit hook runs, the harness has sent every response, closed its log
    channel and non-daemon threads are joined; the hook flushes logging and stdio, then exits:
    1 if an exception reached the top (``sys.excepthook``), else 0. Any other process
    (the launcher, a Dask worker, tests) is left alone."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) != _SDK_WORKER_MAIN or _EXIT_HOOK:
        return False
    failed = []
    previous = sys.excepthook

    def excepthook(*exc_info):
        failed.append(exc_info[0])
        previous(*exc_info)

    def leave():
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(1 if failed else 0)

    sys.excepthook = excepthook
    atexit.register(leave)
    _EXIT_HOOK.append(leave)
    return True


_EXIT_HOOK = []
fast_worker_exit()  # this module is imported by every stage's DoFns in each worker
_RUNNER_ALIASES = {"dask": DASK_RUNNER, "daskrunner": DASK_RUNNER}


def _register_runner_options(flags=None):
    """Import the runner modules that define their options outside pipeline_options, so that
    their flags are known (DaskOptions exists only once Beam's dask runner is imported). With
    ``flags`` given, only when one of them names Dask: importing dask costs half a second of
    every local run's start."""
    if flags is not None and not any("dask" in f.lower() for f in flags):
        return
    try:
        import apache_beam.runners.dask.dask_runner  # noqa: F401
    except ImportError:  # dask not installed: its flags are then rightly unknown
        pass


class BeamFlagError(UserError, ValueError):
    """A flag that neither the stage nor Beam knows."""


def _all_option_classes(cls=PipelineOptions):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_option_classes(sub)


def unknown_beam_flags(flags):
    """The flags in ``flags`` that no Beam options class of an installed runner accepts."""
    _register_runner_options(flags)
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
    _register_runner_options(beam_flags)
    unknown = unknown_beam_flags(beam_flags)
    if unknown:
        raise BeamFlagError(f"unrecognized arguments: {' '.join(unknown)}")
    options = PipelineOptions(beam_flags)
    standard = options.view_as(StandardOptions)
    runner = standard.runner
    if runner in (None, "DirectRunner", "FnApiRunner"):
        direct = options.view_as(DirectOptions)
        if "--direct_running_mode" not in " ".join(beam_flags):
            direct.direct_running_mode = "multi_processing"
        if "--direct_num_workers" not in " ".join(beam_flags):
            direct.direct_num_workers = default_workers
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    if _RUNNER_ALIASES.get(runner.lower(), runner) == DASK_RUNNER:
        try:
            from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner
            import dask.distributed  # noqa: F401
        except ImportError:
            raise BeamFlagError("--runner=DaskRunner needs dask: pip install 'dask[distributed]'") from None
        standard.runner = DASK_RUNNER  # Beam does not resolve the short name itself
        dask_options = options.view_as(DaskOptions)
        if dask_options.npartitions is None and dask_options.partition_size is None:
            # Our work items are coarse (a file, a row group, a partition): one Dask partition
            # each. Beam's default packs up to 128 into one partition, which runs them serially.
            dask_options.partition_size = 1
        return beam.Pipeline(runner=DaskRunner(), options=options)
    return beam.Pipeline(options=options)


def absolute(path):
    """A local path made absolute (workers of a distributed runner do not share the launcher's
    working directory); a filesystem URL (gs://, s3://, ...) as it is."""
    if FileSystems.get_scheme(path) is not None:
        return path
    return os.path.abspath(path)


class SumCounts(beam.CombineFn):
    """Sums count dictionaries ({name: int}); nested dictionaries are summed key by key."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, counts):
        return _add(acc, counts)

    def merge_accumulators(self, accs):
        out = {}
        for a in accs:
            _add(out, a)
        return out

    def extract_output(self, acc):
        return acc


def _add(into, counts):
    for k, v in counts.items():
        if isinstance(v, dict):
            _add(into.setdefault(k, {}), v)
        else:
            into[k] = into.get(k, 0) + v
    return into


class _WriteJson(beam.DoFn):
    def __init__(self, path):
        self.path = path

    def process(self, obj):
        tmp = self.path + ".tmp"
        with FileSystems.create(tmp) as f:
            f.write((json.dumps(obj, sort_keys=True) + "\n").encode("utf-8"))
        FileSystems.rename([tmp], [self.path])
        yield self.path


class FinishWithStats(beam.PTransform):
    """The last step of a stage: every count dictionary of the pipeline summed into one JSON
    file at ``path`` (read back with ``read_stats``). Give it every PCollection whose work
    must be done before the pipeline counts as finished (their elements are count dicts)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def expand(self, pcolls):
        return (pcolls | "AllCounts" >> beam.Flatten()
                | "SumCounts" >> beam.CombineGlobally(SumCounts()).without_defaults()
                | "WriteCounts" >> beam.ParDo(_WriteJson(self.path)))


def read_stats(path):
    """The counts ``FinishWithStats`` wrote ({} when the pipeline counted nothing)."""
    if not FileSystems.exists(path):
        return {}
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read().decode("utf-8"))


_OURS = re.compile(r"^(?:INFO|WARNING|ERROR):clipforge[\w.]*:(.*)$")
_BEAM_CHATTER = re.compile(r"^(?:INFO|DEBUG):|^WARNING:(?:root|__main__|apache_beam)[\w.]*:")


_LOG = re.compile(r"^clipforge-beam-(\d+)-\w+\.log$")


def _remove_stale_logs(older_than=86_400):
    """Worker logs of runs that were killed (no ``finally`` ran): removed once their process is
    gone and they are a day old. A failed run's log stays that day for its user to read."""
    tmp, now = tempfile.gettempdir(), time.time()
    for name in os.listdir(tmp):
        m = _LOG.match(name)
        if not m:
            continue
        path = os.path.join(tmp, name)
        try:
            os.kill(int(m.group(1)), 0)
            continue                        # its process still runs
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError, ValueError):
            continue
        try:
            if now - os.path.getmtime(path) > older_than:
                os.unlink(path)
        except OSError:
            pass


@contextlib.contextmanager
def filtered_worker_output():
    """Keep the terminal readable while local Beam workers run.

    FnApiRunner's worker processes inherit stderr and log every start-up step at INFO. For the
    duration of the block, file descriptor 2 goes through a pipe: clipforge's own progress
    lines pass through (without the logger prefix), Beam's chatter is dropped, anything else
    (warnings of ours, tracebacks) passes. Everything is also kept in a log file whose path is
    yielded, to read after a failure.
    """
    _remove_stale_logs()
    log = tempfile.NamedTemporaryFile("w", prefix=f"clipforge-beam-{os.getpid()}-", suffix=".log", delete=False)
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
    client = getattr(result, "client", None)  # DaskRunner's: let the scheduler forget this job
    if client is not None:
        client.close()
    if log_path:
        os.unlink(log_path)
    return result
