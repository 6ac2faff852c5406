"""Shared fixtures: a small demo world served on loopback, and paths to ../shared/data."""

from pathlib import Path

import pytest

from clipforge.demo.server import DemoServer
from clipforge.demo.world import WorldConfig, generate

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

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
    """A file from ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA / rel
    if not path.exists():
        pytest.skip(f"sample data {rel} not present at {SHARED_DATA}")
    return path
