"""Shared fixtures: a small demo world served on loopback, and paths to the sample files in tests/data."""

from pathlib import Path

import pytest

from clipforge.demo.server import DemoServer
from clipforge.demo.world import WorldConfig, generate

ROOT = Path(__file__).resolve().parents[1]
# Real sample files, kept in the repository (tests/data/README.md lists their sources).
TEST_DATA = ROOT / "tests" / "data"

# Small enough to build in a couple of seconds, big enough to hold every kind of page.
TEST_WORLD_SIZE = 120


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """A generated demo world (not served). Its port is free at generation time."""
    out = tmp_path_factory.mktemp("world") / "world"
    generate(WorldConfig(out=out, seed=7, size=TEST_WORLD_SIZE, heldout_per_class=3))
    return out


@pytest.fixture(scope="session")
def demo_server(world_dir):
    """The session's demo world, served on 127.0.0.1 for the whole test session."""
    with DemoServer(world_dir) as srv:
        yield srv


def shared_file(rel):
    """A sample file from tests/data. A missing one fails the test: it is part of the repository."""
    path = TEST_DATA / rel
    if not path.is_file():
        raise FileNotFoundError(f"sample data {rel} missing from {TEST_DATA} (see tests/data/README.md)")
    return path


# --- distributed engines, started by the tests on 127.0.0.1 ------------------------------------

def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port, proc, what, timeout=60):
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """A dask.distributed cluster of its own: `dask scheduler` and two `dask worker` processes
    (one thread each) on 127.0.0.1, as a user would start them. Yields the scheduler address."""
    import os
    import subprocess
    import sys
    import time

    pytest.importorskip("distributed")
    dask = str(Path(sys.executable).with_name("dask"))
    logs = tmp_path_factory.mktemp("dask")
    port, dash = _free_port(), _free_port()
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", f"127.0.0.1:{dash}"],
                              stdout=open(logs / "scheduler.log", "w"), stderr=subprocess.STDOUT, env=env)]
    try:
        _wait_for_port(port, procs[0], "dask scheduler")
        address = f"tcp://127.0.0.1:{port}"
        for i in range(2):
            procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "4GB",
                                           "--local-directory", str(logs / f"w{i}")],
                                          stdout=open(logs / f"worker{i}.log", "w"), stderr=subprocess.STDOUT,
                                          env=env))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        time.sleep(0.1)


@pytest.fixture(scope="session")
def worker_pool():
    """Beam's external worker pool (how Flink and Spark run Python code) in its own process on
    127.0.0.1. Yields the flags that send a portable pipeline's work to it."""
    import subprocess
    import sys

    import os

    port = _free_port()
    # The pool starts each SDK worker as `python` from PATH: this environment's, as on a cluster
    # whose worker image has clipforge installed.
    env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                             "--service_port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    try:
        _wait_for_port(port, proc, "Beam worker pool")
        yield ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
               f"--environment_config=127.0.0.1:{port}"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
