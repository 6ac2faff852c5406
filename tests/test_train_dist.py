"""Decisions every rank of a distributed run must share (gloo on CPUs, two processes).

The ranks are started by hand (RANK, WORLD_SIZE, MASTER_ADDR/PORT), not by torchrun, on
purpose: torchrun's agent kills the other ranks when one fails, which hides a rank left alone
in a collective; here such a rank would hang, and the test's timeout would catch it."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from clipforge.trainer.checkpoint import checkpoint_path
from clipforge.trainer.tokenizer import write_merges
from train_helpers import write_shards

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, "-m", "clipforge", "train", "--model", "tiny", "--batch-size", "16", "--steps", "2",
         "--workers", "1", "--no-tensorboard", "--save-every", "2"]


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(args_of_rank, timeout=300):
    """Start world-size-2 ranks with their own arguments; (return code, output) of each, or
    (None, output) for a rank still running at the timeout (then killed)."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_port()),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(TRAIN + [str(a) for a in args_of_rank(rank)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in (0, 1)]
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=timeout)
            out.append((p.returncode, text))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out.append((None, p.communicate()[0]))
    return out


def test_a_rank_that_already_sees_a_vocabulary_still_takes_rank_0s(tmp_path):
    shards = write_shards(tmp_path / "shards", n_shards=2, per_shard=48)
    stale = tmp_path / "rank1-view"
    stale.mkdir()
    write_merges(stale / "bpe.txt.gz", [("r", "e"), ("re", "d")])  # another vocabulary, seen by rank 1 only
    got = _ranks(lambda rank: ["--train-data", shards, "--out", tmp_path / "run" if rank == 0 else stale])
    for rank, (code, text) in enumerate(got):
        assert code == 0, f"rank {rank}: {'still waiting' if code is None else code}\n{text[-3000:]}"
    assert (tmp_path / "run" / "checkpoints").is_dir() and "train: done" in got[0][1]


def test_existing_checkpoints_stop_every_rank_with_the_same_error(tmp_path):
    shards = write_shards(tmp_path / "shards", n_shards=2, per_shard=48)
    run = tmp_path / "run"
    path = checkpoint_path(run, 4)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"an earlier run's checkpoint")
    got = _ranks(lambda rank: ["--train-data", shards, "--out", run])
    for rank, (code, text) in enumerate(got):
        assert code == 1, f"rank {rank}: {'still waiting' if code is None else code}\n{text[-3000:]}"
        errors = [line for line in text.splitlines() if line.startswith("clipforge: error:")]
        assert len(errors) == 1 and "already has checkpoints; pass --resume" in errors[0], text[-3000:]


def test_a_refused_init_checkpoint_stops_every_rank(tmp_path):
    shards = write_shards(tmp_path / "shards", n_shards=2, per_shard=48)
    missing = tmp_path / "nowhere.pt"
    got = _ranks(lambda rank: ["--train-data", shards, "--out", tmp_path / "run", "--init-from", missing])
    for rank, (code, text) in enumerate(got):
        assert code == 1, f"rank {rank}: {'still waiting' if code is None else code}\n{text[-3000:]}"
        assert sum(line.startswith("clipforge: error:") for line in text.splitlines()) == 1, text[-3000:]
