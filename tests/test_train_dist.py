"""Decisions every rank of a distributed run must share (gloo on CPUs, two processes).

The ranks are started by hand (RANK, WORLD_SIZE, MASTER_ADDR/PORT), not by torchrun, on
purpose: torchrun's agent kills the other ranks when one fails, which hides a rank left alone
in a collective; here such a rank would hang, and the test's timeout would catch it."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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


def _ranks(args_of_rank, timeout=300, base=TRAIN):
    """Start world-size-2 ranks with their own arguments; (return code, output) of each, or
    (None, output) for a rank still running at the timeout (then killed)."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_port()),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(base + [str(a) for a in args_of_rank(rank)], cwd=ROOT, stdout=subprocess.PIPE,
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


@pytest.mark.slow
def test_a_rank_that_already_sees_a_vocabulary_still_takes_rank_0s(tmp_path):
    shards = write_shards(tmp_path / "shards", n_shards=2, per_shard=48)
    stale = tmp_path / "rank1-view"
    stale.mkdir()
    write_merges(stale / "bpe.txt.gz", [("r", "e"), ("re", "d")])  # another vocabulary, seen by rank 1 only
    got = _ranks(lambda rank: ["--train-data", shards, "--out", tmp_path / "run" if rank == 0 else stale])
    for rank, (code, text) in enumerate(got):
        assert code == 0, f"rank {rank}: {'still waiting' if code is None else code}\n{text[-3000:]}"
    assert (tmp_path / "run" / "checkpoints").is_dir() and "train: done" in got[0][1]


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_refused_init_checkpoint_stops_every_rank(tmp_path):
    shards = write_shards(tmp_path / "shards", n_shards=2, per_shard=48)
    missing = tmp_path / "nowhere.pt"
    got = _ranks(lambda rank: ["--train-data", shards, "--out", tmp_path / "run", "--init-from", missing])
    for rank, (code, text) in enumerate(got):
        assert code == 1, f"rank {rank}: {'still waiting' if code is None else code}\n{text[-3000:]}"
        assert sum(line.startswith("clipforge: error:") for line in text.splitlines()) == 1, text[-3000:]


def _uneven_shards(out, n_shards=24, seed=5, per_shard=60):
    """Shards of per_shard to per_shard + 32 samples (sizes.json lists them), so slots cannot be
    balanced by whole shards."""
    import random

    from clipforge.demo import captions, concepts
    from train_helpers import jpeg

    rng = random.Random(seed)

    def more(s, w):
        extra = (s * 7) % 33
        for i in range(extra):
            attrs = concepts.sample_attributes(rng)
            w.write({"__key__": f"x{s:03d}{i:04d}", "jpg": jpeg(attrs, rng, size=32),
                     "txt": captions.english(attrs, rng)})
        return extra

    return write_shards(out, n_shards=n_shards, per_shard=per_shard, seed=seed, extra=more)


def test_24_shards_over_16_slots_every_sample_read_once_and_slots_balanced(tmp_path):
    """4 ranks x 4 loader workers over 24 shards of uneven sizes: the slots' sample runs cover
    every sample exactly once, and differ in length by at most one, so an epoch (which ends for
    all ranks when one runs out of full batches, each worker making its own batches) leaves out
    at most each worker's last partial batch. Dealing whole shards round-robin would give ranks
    0-1 eight shards and ranks 2-3 four: a third of the samples unseen."""
    import json
    from collections import Counter

    from clipforge.trainer.data import DataConfig, ShardStream, expand_shards

    shards = _uneven_shards(tmp_path / "shards")
    sizes = json.loads((shards / "sizes.json").read_text())
    total = sum(sizes.values())
    assert len(set(sizes.values())) > 5
    cfg = DataConfig(expand_shards(str(shards)), batch_size=4, image_size=32, seed=2, workers=4)
    world, workers, slot_lengths, seen = 4, 4, [], Counter()
    for rank in range(world):
        for worker in range(workers):
            stream = ShardStream(cfg, tokenizer=None, epoch=1, rank=rank, world=world)
            keys = [s["__key__"] for s in stream._raw_samples(worker, workers, Counter())]
            seen.update(keys)
            slot_lengths.append(len(keys))
    assert sum(seen.values()) == total and max(seen.values()) == 1       # every sample once
    assert max(slot_lengths) - min(slot_lengths) <= 1
    b = cfg.batch_size
    full = [sum(n // b for n in slot_lengths[r * workers:(r + 1) * workers]) for r in range(world)]
    seen_in_epoch = world * min(full) * b                               # every rank stops with the first
    assert seen_in_epoch >= total - world * workers * (b - 1) and seen_in_epoch >= 0.97 * total


def test_ranks_see_the_balanced_epoch_through_the_real_loader(tmp_path):
    """The same dealing through PyTorch's DataLoader with worker processes: two ranks, two
    workers each, one epoch's batches; the ranks' samples are disjoint and together all but
    the last partial batches."""
    from clipforge.trainer.data import DataConfig, expand_shards, make_loader
    from clipforge.trainer.tokenizer import Tokenizer, train_bpe

    shards = _uneven_shards(tmp_path / "shards", n_shards=6)
    total = sum(__import__("json").loads((shards / "sizes.json").read_text()).values())
    tok = Tokenizer(train_bpe(["a red circle", "two blue squares"] * 5, vocab_size=600), 16)
    cfg = DataConfig(expand_shards(str(shards)), batch_size=8, image_size=32, seed=4, workers=2, shuffle_buffer=20)
    keys = []
    for rank in range(2):
        got = [k for b in make_loader(cfg, tok, 0, rank, 2) if b["images"] is not None for k in b["keys"]]
        keys.append(got)
    assert not set(keys[0]) & set(keys[1])
    assert len(keys[0]) + len(keys[1]) >= total - 2 * 2 * cfg.batch_size   # each worker's last partial batch


def test_the_demo_is_not_prepared_by_several_ranks_at_once(tmp_path):
    """`make train NPROC=8` with no data: every rank would generate, crawl and shard the demo
    into the same folders before the process group exists; each refuses instead, in one line."""
    proc = subprocess.run([sys.executable, "-m", "clipforge", "train"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "WORLD_SIZE": "2", "RANK": "1"},
                          timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ranks would all make them at once" in lines[0]
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_an_epoch_over_16_slots_counts_every_sample_in_train_stats(tmp_path):
    """2 ranks x 8 loader workers over 24 shards of uneven sizes, one epoch at batch 4:
    train_stats.json's epoch record counts the samples trained on (at least 97% of them, each
    once: distinct ids), and the rest by reason (each worker's last partial batch, the samples
    other ranks had left when the first ran out), summing to the shards' total."""
    import json

    shards = _uneven_shards(tmp_path / "shards")
    total = sum(json.loads((shards / "sizes.json").read_text()).values())
    out = tmp_path / "run"
    base = [sys.executable, "-m", "clipforge", "train", "--model", "tiny", "--batch-size", "4", "--epochs", "1",
            "--workers", "8", "--no-tensorboard", "--save-every", "100000", "--shuffle-buffer", "10",
            "--log-every", "1000"]
    results = _ranks(lambda rank: ["--train-data", shards, "--out", out], timeout=400, base=base)
    for code, text in results:
        assert code == 0, text[-3000:]
    stats = json.loads((out / "train_stats.json").read_text())
    first = stats["epochs"][0]
    assert first["samples"] == total
    assert first["seen"] >= 0.97 * total and first["distinct"] == first["seen"]
    assert set(first["skipped"]) <= {"epoch_tail"} and set(first["left_out"]) <= {"epoch_ended"}
    assert first["seen"] + sum(first["skipped"].values()) + sum(first["left_out"].values()) == total
    assert first["unaccounted"] == 0
    # The run's steps (total // 8) reach into a second epoch, cut short by the end of the run: counted too.
    assert stats["steps"] == total // 8
    for record in stats["epochs"][1:]:
        assert record["seen"] + sum(record["skipped"].values()) + sum(record["left_out"].values()) == total


_GRADS = r'''
import os, sys, torch, torch.distributed as dist
from clipforge.trainer.loss import clip_loss

rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2)
torch.manual_seed(0)
n, d = 6, 8
feats = [torch.nn.functional.normalize(torch.randn(2 * n, d), dim=-1) for _ in range(2)]
scale = torch.tensor(7.5)


class OldGather(torch.autograd.Function):   # the previous backward: all_reduce, then this rank's rows
    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(2)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[rank * n:(rank + 1) * n]


def local_loss(i, t, all_i, all_t, r):
    labels = torch.arange(n) + n * r
    ce = torch.nn.functional.cross_entropy
    return (ce(scale * i @ all_t.T, labels) + ce(scale * t @ all_i.T, labels)) / 2


# Reference: one process holds every rank's rows; the gradient of the sum of the ranks' local losses.
img, txt = (f.clone().requires_grad_() for f in feats)
sum(local_loss(img[r * n:(r + 1) * n], txt[r * n:(r + 1) * n], img, txt, r) for r in range(2)).backward()
want = torch.cat([img.grad[rank * n:(rank + 1) * n], txt.grad[rank * n:(rank + 1) * n]])

mine = [f[rank * n:(rank + 1) * n].clone().requires_grad_() for f in feats]
clip_loss(mine[0], mine[1], scale).backward()                      # reduce-scatter backward
new = torch.cat([mine[0].grad, mine[1].grad])

mine = [f[rank * n:(rank + 1) * n].clone().requires_grad_() for f in feats]
local_loss(mine[0], mine[1], OldGather.apply(mine[0]), OldGather.apply(mine[1]), rank).backward()
old = torch.cat([mine[0].grad, mine[1].grad])
assert want.abs().max() > 0
print("GRADS", rank, float((new - want).abs().max()), float((new - old).abs().max()))
dist.destroy_process_group()
'''


def test_gathered_features_backward_by_reduce_scatter_gives_the_full_batch_gradients(tmp_path):
    """Two gloo ranks: the gradients reaching each rank's features through the gather's
    reduce-scatter backward equal those of the full batch's loss computed in one process, and
    those of the previous all_reduce backward (gloo has reduce_scatter_tensor in this PyTorch)."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_port()),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _GRADS], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**env, "RANK": str(rank)}) for rank in (0, 1)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, text in zip(procs, outs):
        assert p.returncode == 0, text[-3000:]
        line = next(x for x in text.splitlines() if x.startswith("GRADS"))
        vs_full, vs_old = map(float, line.split()[2:])
        assert vs_full < 1e-6 and vs_old < 1e-6, line


_FLAGS = r'''
import os
import torch
import torch.distributed as dist
from clipforge.trainer import train

dist.init_process_group("gloo")
rank = dist.get_rank()
train._CONTROL = dist.new_group(backend="gloo")     # the side group setup_distributed makes under NCCL
groups, real = [], dist.all_reduce


def watched(tensor, *args, **kwargs):     # the real collective, noting its group and device
    groups.append((kwargs.get("group"), tensor.device.type))
    return real(tensor, *args, **kwargs)


dist.all_reduce = watched
got = [train._all_min(True), train._all_min(rank == 0), train._all_min(rank == 1), train._all_min(False)]
dist.all_reduce = real
assert groups == [(train._CONTROL, "cpu")] * 4, groups
# the default group is still in step after the side group's collectives
t = torch.tensor([rank + 1])
dist.all_reduce(t)
print("FLAGS", rank, *got, int(t))
dist.destroy_process_group()
'''


def test_the_per_step_flag_is_agreed_on_the_hosts_own_group():
    """The "some rank ran out of batches" flag goes through a separate gloo group (under NCCL,
    so that agreeing on it does not wait for the GPU's queue): with two ranks it is the minimum
    over both, and the default group's collectives are unaffected."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_port()),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _FLAGS], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**env, "RANK": str(rank)}) for rank in (0, 1)]
    for rank, p in enumerate(procs):
        text = p.communicate(timeout=120)[0]
        assert p.returncode == 0, text[-3000:]
        line = next(x for x in text.splitlines() if x.startswith("FLAGS"))
        assert line.split()[1:] == [str(rank), "True", "False", "False", "False", "3"], line


@pytest.mark.slow
def test_evaluation_during_training_is_spread_over_the_ranks(tmp_path):
    """Two ranks evaluate half the held-out images each (with a loader worker) and sum the counts:
    the metrics line equals a one-process evaluation of the checkpoint written at that step."""
    import json

    import torch

    from clipforge.trainer.zeroshot import evaluate_imagefolder, load_model
    from train_helpers import write_heldout

    shards = write_shards(tmp_path / "shards", n_shards=2, per_shard=32)
    heldout = write_heldout(tmp_path / "heldout", per_class=3)
    out = tmp_path / "run"
    results = _ranks(lambda rank: ["--train-data", shards, "--out", out, "--eval-every", "2", "--eval-data", heldout])
    for code, text in results:
        assert code == 0, text[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    got = [x["eval"] for x in lines if "eval" in x]
    assert len(got) == 1
    model, tokenizer = load_model(checkpoint_path(out, 2))
    model.eval()
    with torch.no_grad():
        want = evaluate_imagefolder(model, tokenizer, heldout, workers=0)
    for k in ("top1", "top5", "mean_per_class_recall", "chance_top1"):
        assert got[0][k] == pytest.approx(want[k], abs=1e-6), k     # float32 means there; one image of 12 is 0.083
