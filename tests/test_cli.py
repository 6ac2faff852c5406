"""The `clipforge` command as a user runs it: the installed console script, in a subprocess."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

CLI = str(Path(sys.executable).with_name("clipforge"))
COMMANDS = ("queries", "crawl", "shard", "stats", "train", "eval", "score", "demo")


def run(*args, timeout=120):
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_top_level_help_lists_every_command():
    r = run("--help")
    assert r.returncode == 0
    for cmd in COMMANDS:
        assert re.search(rf"^\s+{cmd}\s+\S", r.stdout, re.M), cmd
    assert "demo web" in r.stdout
    assert run("--version").stdout.startswith("clipforge ")
    m = subprocess.run([sys.executable, "-m", "clipforge", "--help"], capture_output=True, text=True)
    assert m.returncode == 0 and m.stdout == r.stdout


@pytest.mark.parametrize("args", [(c,) for c in COMMANDS] + [("demo", "generate"), ("demo", "serve")])
def test_every_subcommand_has_useful_help(args):
    r = run(*args, "--help")
    assert r.returncode == 0 and r.stderr == ""
    assert f"usage: clipforge {' '.join(args)}" in r.stdout
    description = r.stdout.split("\n\n")[1]
    assert len(description.split()) >= 5, description


@pytest.mark.parametrize("args", [("--bogus",), ("demo", "--bogus"), ("demo", "generate", "--nope"),
                                  ("queries", "--wiki", "x.xml", "--not-a-beam-flag"),
                                  ("crawl", "--input", "x.warc.gz", "--bogus_option=1"),
                                  ("demo", "generate", "--size", "many"), ("frobnicate",),
                                  ("train", "--batch-size", "x"), ("train", "--bogus"), ("stats", "--bogus"),
                                  ("eval", "--bogus"), ("score", "--checkpoint", "x")])
def test_usage_errors_are_one_line(args):
    r = run(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "error:" in r.stderr and "--help" in r.stderr


def test_bad_input_is_one_line_and_nonzero(tmp_path):
    r = run("demo", "serve", "--world", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "no manifest.json" in r.stderr
    r = run("demo", "generate", "--out", str(tmp_path / "w"), "--size", "3")
    assert r.returncode == 1 and "--size must be at least 20" in r.stderr
    r = run("demo", "serve", "--world", str(tmp_path / "nowhere"), "--host", "0.0.0.0")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1


def test_generate_reuses_an_identical_world(tmp_path):
    out = tmp_path / "w"
    first = run("demo", "generate", "--out", str(out), "--size", "30", "--heldout-per-class", "1")
    assert first.returncode == 0 and "base URL http://127.0.0.1:" in first.stdout
    manifest = (out / "manifest.json").read_bytes()
    again = run("demo", "generate", "--out", str(out), "--size", "30", "--heldout-per-class", "1")
    assert again.returncode == 0 and "already at" in again.stdout
    assert (out / "manifest.json").read_bytes() == manifest
    other = run("demo", "generate", "--out", str(out), "--size", "31", "--heldout-per-class", "1")
    assert other.returncode == 0 and "generating" in other.stdout


def test_serve_runs_until_interrupted(world_dir):
    proc = subprocess.Popen([CLI, "demo", "serve", "--world", str(world_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+)/", line).group(1)
        assert requests.get(url + "/index.html", timeout=5).status_code == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.strip().endswith("stopped")


def test_every_installed_runners_flags_pass_the_flag_check():
    """Dask's flags exist only once Beam's dask runner module is imported: the check imports it
    (run in a fresh interpreter, where nothing else has)."""
    code = ("from clipforge.beam import unknown_beam_flags as u; "
            "print(u(['--runner=DaskRunner', '--dask_client_address=tcp://127.0.0.1:8786', '--dask_npartitions=4', "
            "'--flink_master=localhost:8081', '--spark_master_url=spark://m:7077', '--nonsense_flag=1']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "['--nonsense_flag=1']"


def _as_beam_worker(body):
    """Python code that runs ``body`` in a process whose __main__ claims to be Beam's SDK worker
    (``python -m apache_beam.runners.worker.sdk_worker_main``), after importing the runner."""
    return ("import sys, types\n"
            "sys.modules['__main__'].__spec__ = types.SimpleNamespace(name='apache_beam.runners.worker.sdk_worker_main')\n"
            "import logging\n"
            "logging.basicConfig(stream=sys.stderr, format='LOG %(message)s')\n"
            "import atexit\n"
            "atexit.register(lambda: print('finalising', file=sys.stderr))  # runs after later hooks\n"
            "from clipforge import beam as runner\n" + body)


def test_beam_workers_exit_at_once_with_their_own_exit_status():
    """In a Beam SDK worker the runner module's exit hook ends the process with os._exit as
    Python's exit begins: buffered output and log records still come out, a normal end is 0,
    an uncaught exception is 1 with its traceback; other processes keep Python's own exit."""
    ok = subprocess.run([sys.executable, "-c", _as_beam_worker(
        "print('buffered line', end='')\nlogging.warning('last record')\nprint(runner._EXIT_HOOK != [], end='')")],
        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "buffered lineTrue"  # flushed although os._exit skips Python's own flush
    assert "LOG last record" in ok.stderr
    assert "finalising" not in ok.stderr  # left before the rest of Python's exit
    failed = subprocess.run([sys.executable, "-c", _as_beam_worker("raise RuntimeError('worker broke')")],
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert "RuntimeError: worker broke" in failed.stderr
    interrupted = subprocess.run([sys.executable, "-c", _as_beam_worker("raise KeyboardInterrupt")],
                                 capture_output=True, text=True, timeout=120)
    assert interrupted.returncode == 1
    plain = subprocess.run([sys.executable, "-c", "import atexit, sys\n"
                            "atexit.register(lambda: print('finalising', file=sys.stderr))\n"
                            "from clipforge import beam as runner\n"
                            "print(runner._EXIT_HOOK)\nraise SystemExit(3)"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 3 and plain.stdout.strip() == "[]" and "finalising" in plain.stderr


def test_flag_values_are_hyphenated_and_older_underscores_still_work():
    """--resize-mode takes keep-ratio and center-crop, as every other flag value is spelt, and the
    older keep_ratio and center_crop still parse to the same; help shows the hyphenated ones."""
    from clipforge.cli import build_parser

    parse = build_parser().parse_args
    for given, parsed in (("keep-ratio", "keep-ratio"), ("keep_ratio", "keep-ratio"), ("center-crop", "center-crop"),
                          ("center_crop", "center-crop"), ("no", "no")):
        assert parse(["shard", "--resize-mode", given]).resize_mode == parsed
    assert parse(["shard"]).resize_mode == "keep-ratio"
    r = run("shard", "--help")
    assert "keep-ratio" in r.stdout and "center-crop" in r.stdout and "keep_ratio:" not in r.stdout
    r = run("shard", "--resize-mode", "keep-aspect")
    assert r.returncode == 2 and "invalid choice: 'keep-aspect'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["crawl", "shard"])
def test_headerless_lists_are_in_the_help(command):
    r = run(command, "--help")
    assert r.returncode == 0 and "--no-header" in r.stdout and "--page-url-col" in r.stdout
    assert "--url-col 2 --text-col 1" in " ".join(r.stdout.split())  # whatever the wrapping


# --- demo-mode defaults: only where the user gave no value, however the flag was written ----------

def _flags(*argv):
    from clipforge.cli import build_parser

    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv", [["queries", "--min-pmi=5"], ["queries", "--min-pmi", "5"]])
def test_a_given_min_pmi_is_kept_in_demo_mode(argv):
    """`clipforge queries --min-pmi=5` with no inputs (the demo mode) uses 5, not the demo's 3."""
    from clipforge.demo.chain import DEMO_MIN_PMI
    from clipforge.stages import queries_config

    cfg = queries_config(_flags(*argv))
    assert cfg.min_pmi == 5 and cfg.wiki and cfg.out == "data/demo/queries"
    assert queries_config(_flags("queries")).min_pmi == DEMO_MIN_PMI
    assert queries_config(_flags("queries", "--text", "t.txt")).min_pmi == 30.0


def test_given_sizes_and_caps_are_kept_in_demo_mode():
    from clipforge.demo.chain import DEMO_IMAGE_SIZE, DEMO_MAX_PER_QUERY, DEMO_SAMPLES_PER_SHARD, pick_defaults

    shard = pick_defaults(_flags("shard", "--image-size=128", "--samples-per-shard=7"), demo=True)
    assert (shard.image_size, shard.samples_per_shard) == (128, 7)
    shard = pick_defaults(_flags("shard"), demo=True)
    assert (shard.image_size, shard.samples_per_shard) == (DEMO_IMAGE_SIZE, DEMO_SAMPLES_PER_SHARD)
    assert pick_defaults(_flags("shard"), demo=False).image_size == 256
    assert pick_defaults(_flags("crawl", "--max-per-query=7"), demo=True).max_per_query == 7
    assert pick_defaults(_flags("crawl"), demo=True).max_per_query == DEMO_MAX_PER_QUERY
    assert pick_defaults(_flags("crawl", "--input", "x.wat.gz"), demo=False).max_per_query == 20_000


def test_help_shows_the_regular_and_the_demo_defaults():
    for command, texts in (("queries", ["(default: 30.0; demo 3.0)"]), ("crawl", ["(default: 20,000; demo 400)"]),
                           ("shard", ["(default: 256; demo 64)", "(default: 10,000; demo 1,000)"])):
        help_text = " ".join(run(command, "--help").stdout.split())
        for text in texts:
            assert text in help_text, (command, text)


def test_only_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from clipforge import cli, stages
    from clipforge.errors import InputError

    def bad_input(a):
        raise InputError("x.tar: not a shard")

    monkeypatch.setattr(stages, "stats", bad_input)
    assert cli.main(["stats"]) == 1
    assert capsys.readouterr().err == "clipforge: error: x.tar: not a shard\n"

    def bug(a):
        raise ValueError("a bug, not the user's")

    monkeypatch.setattr(stages, "stats", bug)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["stats"])
