"""The loader and the training loop on real shards: determinism, bad samples, resume, torchrun."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from clipforge.cli import main
from clipforge.trainer.data import DataConfig, LoaderState, NoUsableSamples, ShardStream, expand_shards, make_loader
from clipforge.trainer.tokenizer import Tokenizer, train_bpe

from train_helpers import kill_after_step as _kill_after_step
from train_helpers import metrics as _metrics
from train_helpers import run_train as _run_train
from train_helpers import write_heldout, write_shards

ROOT = Path(__file__).resolve().parents[1]
CLIPFORGE = [sys.executable, "-m", "clipforge"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), n_shards=4, per_shard=96)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(train_bpe(["a red circle", "two blue squares on white"] * 10, vocab_size=600), 32)


def _keys(cfg, tokenizer, epoch=0, rank=0, world=1, state=None):
    return [k for item in make_loader(cfg, tokenizer, epoch, rank, world, state) if item["images"] is not None
            for k in item["keys"]]


# --- loader ------------------------------------------------------------------------------------

def test_shard_specs_expand(shards):
    assert len(expand_shards(str(shards))) == 4
    assert expand_shards(f"{shards}/{{000000..000001}}.tar::{shards}/000003.tar") == [
        str(shards / "000000.tar"), str(shards / "000001.tar"), str(shards / "000003.tar")]
    assert len(expand_shards(f"{shards}/*.tar")) == 4
    assert expand_shards(f"pipe:cat {shards}/000000.tar") == [f"pipe:cat {shards}/000000.tar"]
    with pytest.raises(FileNotFoundError, match="no such shard"):
        expand_shards(str(shards / "nope.tar"))


def test_loader_is_deterministic_and_covers_each_sample_once(shards, tokenizer):
    cfg = DataConfig(expand_shards(str(shards)), batch_size=16, image_size=32, seed=3, workers=2, shuffle_buffer=50)
    first, again = _keys(cfg, tokenizer), _keys(cfg, tokenizer)
    assert first == again
    assert _keys(cfg, tokenizer, epoch=1) != first          # reshuffled each epoch
    assert len(first) == len(set(first)) and len(first) >= 384 - 2 * 15   # only each worker's tail is left
    # Two ranks read disjoint shards; together they cover the same samples.
    r0, r1 = _keys(cfg, tokenizer, rank=0, world=2), _keys(cfg, tokenizer, rank=1, world=2)
    assert not set(r0) & set(r1)
    # Fewer shards than rank x worker slots: every slot reads all shards and keeps its share.
    few = DataConfig(cfg.shards[:1], 8, 32, 3, workers=2, shuffle_buffer=10)
    a, b = _keys(few, tokenizer, rank=0, world=2), _keys(few, tokenizer, rank=1, world=2)
    assert not set(a) & set(b) and len(a) + len(b) >= 96 - 4 * 7


def test_loader_batches_are_uint8_images_and_token_ids(shards, tokenizer):
    cfg = DataConfig(expand_shards(str(shards)), batch_size=8, image_size=48, workers=0)
    item = next(i for i in make_loader(cfg, tokenizer, 0) if i["images"] is not None)
    assert item["images"].dtype == torch.uint8 and item["images"].shape == (8, 3, 48, 48)
    assert item["texts"].shape == (8, 32) and (item["texts"][:, 0] == tokenizer.sot_id).all()
    assert len(item["keys"]) == 8 and item["cursor"] >= 8


def test_normalisation_is_clips():
    from clipforge.trainer.data import normalize_images
    from clipforge.trainer.model import CLIP_MEAN, CLIP_STD

    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    ref = (x.float() / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(normalize_images(x), ref, atol=1e-5)


def test_resumed_stream_continues_with_the_same_batches(shards, tokenizer):
    """Consume k items, rebuild the loader from the state: the rest is what the first run saw."""
    cfg = DataConfig(expand_shards(str(shards)), batch_size=16, image_size=32, seed=1, workers=2, shuffle_buffer=40)
    full = [item["keys"] for item in make_loader(cfg, tokenizer, 0) if item["images"] is not None]
    for k in (1, 4, 9):
        state, seen = LoaderState(2), []
        it = iter(make_loader(cfg, tokenizer, 0))
        while len(seen) < k:
            item = next(it)
            state.consume(item)
            if item["images"] is not None:
                seen.append(item["keys"])
        del it
        rest = [item["keys"] for item in make_loader(cfg, tokenizer, 0, state=state) if item["images"] is not None]
        assert seen + rest == full, k


_OPENED = {"fd": None}


def _log_tar_opens(event, args):
    """An audit hook (inherited by forked loader workers): every .tar the process opens, one line each."""
    if event == "open" and _OPENED["fd"] is not None and isinstance(args[0], str) and args[0].endswith(".tar"):
        os.write(_OPENED["fd"], (args[0] + "\n").encode())


@contextlib.contextmanager
def _tar_opens(path):
    if not getattr(_log_tar_opens, "installed", False):
        sys.addaudithook(_log_tar_opens)
        _log_tar_opens.installed = True
    opened = []
    _OPENED["fd"] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC)
    try:
        yield opened
    finally:
        os.close(_OPENED["fd"])
        _OPENED["fd"] = None
        opened += Path(path).read_text().splitlines()


def test_late_resume_opens_only_the_current_shards(tmp_path, tokenizer):
    """Resuming deep into an epoch: each worker opens only the shard it was reading (and the one
    before when its shuffle buffer still holds samples of it), not the shards it consumed before
    the checkpoint; the batches after it are those of the uninterrupted run, also when a worker
    had reached the end of its stream and was emptying its shuffle buffer."""
    d = write_shards(tmp_path / "s", n_shards=12, per_shard=16)
    cfg = DataConfig(expand_shards(str(d)), batch_size=4, image_size=32, seed=5, workers=2, shuffle_buffer=3)
    with _tar_opens(tmp_path / "full.log") as opened_full:
        full = [item["keys"] for item in make_loader(cfg, tokenizer, 0) if item["images"] is not None]
    assert sorted(set(opened_full)) == sorted(cfg.shards)     # the epoch reads all 12 shards (6 per worker)
    assert len(full) == 2 * (96 // 4)
    for k in (20, 42, 45, 47):       # mid-epoch; then late: each worker in its 6th and last shard, then its drain
        state, seen = LoaderState(2), []
        it = iter(make_loader(cfg, tokenizer, 0))
        while len(seen) < k:
            item = next(it)
            state.consume(item)
            if item["images"] is not None:
                seen.append(item["keys"])
        del it
        with _tar_opens(tmp_path / f"resume{k}.log") as opened:
            rest = [item["keys"] for item in make_loader(cfg, tokenizer, 0, state=state) if item["images"] is not None]
        assert seen + rest == full, k
        assert len(opened) == len(set(opened)), opened             # no shard opened twice
        if k >= 42:     # the last shard of each worker and, for its buffer, at most the one before (not 6 each)
            assert len(opened) <= 4, (k, opened)
    # Renaming the shards read before the checkpoint away does not matter to the resumed run.
    keep = set(opened)
    for url in cfg.shards:
        if url not in keep:
            os.rename(url, url + ".gone")
    rest = [item["keys"] for item in make_loader(cfg, tokenizer, 0, state=state) if item["images"] is not None]
    assert seen + rest == full


def test_resume_without_sizes_with_shared_shards_and_resampled(tmp_path, shards, tokenizer):
    """The shuffle state restores the same batches when shards are dealt whole (no sizes.json),
    when slots share a shard (every n-th sample), and in resampled mode."""
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for url in expand_shards(str(shards)):
        shutil.copy(url, bare)
    cases = [(DataConfig(expand_shards(str(bare)), 8, 32, seed=2, workers=2, shuffle_buffer=10), 0, 1, None),
             (DataConfig(expand_shards(str(bare))[:1], 4, 32, seed=2, workers=2, shuffle_buffer=5), 1, 2, None),
             (DataConfig(expand_shards(str(shards)), 8, 32, seed=2, workers=2, shuffle_buffer=10, resampled=True),
              0, 1, 40)]
    for cfg, rank, world, limit in cases:
        def batches(state=None, n=limit):
            out = []
            for item in make_loader(cfg, tokenizer, 0, rank, world, state):
                if item["images"] is not None:
                    out.append(item["keys"])
                if n is not None and len(out) == n:
                    break
            return out
        full = batches()
        k = len(full) * 3 // 4
        state, seen, it = LoaderState(2), [], iter(make_loader(cfg, tokenizer, 0, rank, world))
        while len(seen) < k:
            item = next(it)
            state.consume(item)
            if item["images"] is not None:
                seen.append(item["keys"])
        del it
        assert seen + batches(state, None if limit is None else limit - k) == full, (rank, world, limit)


def test_persistent_workers_read_each_epoch_as_fresh_ones_would(shards, tokenizer):
    """One loader for three epochs (set_epoch between them, the first resumed mid-way): the same
    batches as a new loader per epoch, from the same two worker processes throughout."""
    cfg = DataConfig(expand_shards(str(shards)), batch_size=16, image_size=32, seed=7, workers=2, shuffle_buffer=20)
    fresh = [[item["keys"] for item in make_loader(cfg, tokenizer, e) if item["images"] is not None] for e in range(3)]
    state, seen, it = LoaderState(2), [], iter(make_loader(cfg, tokenizer, 0))
    while len(seen) < 7:
        item = next(it)
        state.consume(item)
        if item["images"] is not None:
            seen.append(item["keys"])
    del it
    loader, got, pids = make_loader(cfg, tokenizer, 0, state=state), [], []
    assert loader.persistent_workers
    for epoch in range(3):
        if epoch:
            loader.dataset.set_epoch(epoch)
        it = iter(loader)
        got.append([item["keys"] for item in it if item["images"] is not None])
        pids.append([w.pid for w in it._workers])
    assert seen + got[0] == fresh[0] and got[1:] == fresh[1:]
    assert pids[0] == pids[1] == pids[2]


def test_default_loader_workers_share_the_cpus_of_the_node(monkeypatch):
    from clipforge.trainer.data import default_workers

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_workers() == max(1, cpus - 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus * 4))   # more processes than CPUs: still one each
    assert default_workers() == 1


def _bad_samples(shard_index, writer):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), "red").save(buf, "PNG")
    writer.write({"__key__": f"bad{shard_index}-a", "jpg": b"\xff\xd8\xff\xe0 not a jpeg", "txt": "broken"})
    writer.write({"__key__": f"bad{shard_index}-b", "txt": "a caption without an image"})
    writer.write({"__key__": f"bad{shard_index}-c", "jpg": buf.getvalue()})                # no caption
    writer.write({"__key__": f"bad{shard_index}-d", "png": buf.getvalue(), "txt": "   "})  # empty caption
    writer.write({"__key__": f"ok{shard_index}-e", "png": buf.getvalue(), "json": b'{"caption": "a red square"}'})
    return 5


def test_corrupt_samples_are_counted_and_skipped(tmp_path, tokenizer):
    d = write_shards(tmp_path / "s", n_shards=2, per_shard=20, extra=_bad_samples)
    cfg = DataConfig(expand_shards(str(d)), batch_size=6, image_size=32, workers=2, shuffle_buffer=5)
    skipped, keys = Counter(), []
    for item in make_loader(cfg, tokenizer, 0):
        skipped.update(item["skipped"])
        keys += item["keys"] if item["images"] is not None else []
    assert skipped["image_undecodable"] == 2 and skipped["missing_image"] == 2
    assert skipped["missing_text"] == 2 and skipped["empty_text"] == 2
    assert not any(k.startswith("bad") for k in keys)
    # Every sample ends up trained on, skipped for a reason, or in an epoch's tail.
    assert len(keys) + sum(skipped.values()) == 2 * 25


@pytest.mark.slow
def test_no_usable_sample_is_an_error_not_a_hang(tmp_path, tokenizer):
    d = tmp_path / "bad"
    d.mkdir()
    import webdataset as wds

    with wds.TarWriter(str(d / "000000.tar")) as w:
        for i in range(30):
            w.write({"__key__": f"{i:04d}", "jpg": b"garbage", "txt": "a caption"})
    (d / "sizes.json").write_text('{"000000.tar": 30}')
    # Resampled streams are endless: a run of unusable samples must stop them.
    cfg = DataConfig([str(d / "000000.tar")], 4, 32, workers=0, resampled=True, max_consecutive_bad=50)
    with pytest.raises(NoUsableSamples, match="no usable sample in 50 consecutive samples"):
        next(iter(ShardStream(cfg, tokenizer, 0)))
    # Through the CLI: one line, exit 1, for both modes.
    for extra in ([], ["--resampled"]):
        proc = _run_train(["--train-data", str(d), "--out", str(tmp_path / f"run{len(extra)}"), "--model", "tiny",
                           "--batch-size", "4", "--steps", "3", "--workers", "1"] + extra, check=False)
        assert proc.returncode == 1, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("clipforge: error:") and "image_undecodable" in last and len(proc.stderr.strip().splitlines()) == 1


# --- the loop ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_run_learns_and_writes_its_run_directory(shards, tmp_path):
    run = tmp_path / "run"
    proc = _run_train(["--train-data", str(shards), "--out", str(run), "--model", "tiny", "--batch-size", "64",
                       "--epochs", "8", "--lr", "2e-3", "--save-every", "10", "--keep", "2", "--log-every", "5"])
    m = _metrics(run)
    assert [r["step"] for r in m] == list(range(1, len(m) + 1)) and len(m) == 8 * (384 // 64)
    first, last = sum(r["loss"] for r in m[:3]) / 3, sum(r["loss"] for r in m[-3:]) / 3
    assert last < 0.75 * first, (first, last)
    assert "ETA" in proc.stdout and "samples/s" in proc.stdout
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.pt"))
    assert ckpts == ["step_00000040.pt", "step_00000048.pt"]       # the last --keep, the final one included
    assert not list((run / "checkpoints").glob("*.tmp*"))
    assert (run / "bpe.txt.gz").exists() and list((run / "tensorboard").glob("events.out.tfevents.*"))
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["steps"] == 48 and stats["loader_skipped"] == {}   # 2 workers x 192 samples: no tail
    ck = torch.load(run / "checkpoints" / "step_00000048.pt", weights_only=True)
    assert ck["step"] == 48 and ck["model_config"]["vision"]["image_size"] == 64 and ck["bpe_merges"]
    # A second run into the same directory must not overwrite it silently.
    again = _run_train(["--train-data", str(shards), "--out", str(run), "--model", "tiny", "--steps", "2"], check=False)
    assert again.returncode == 1 and "already has checkpoints" in again.stderr


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_losses_and_samples(shards, tmp_path):
    args = ["--train-data", str(shards), "--model", "tiny", "--batch-size", "32", "--steps", "16", "--workers", "2",
            "--save-every", "4", "--lr", "1e-3", "--shuffle-buffer", "64", "--no-tensorboard", "--log-every", "13"]
    _run_train(args + ["--out", str(tmp_path / "straight")])
    # Killed from outside with SIGKILL once it logs step 13 (past the epoch boundary and the
    # checkpoint at 12, before the one at 16), as a scheduler kills a job; then resumed. Metrics
    # lines are written (all steps since the last) on logging and checkpoint steps: 1, 4, 8, 12, 13, 16.
    killed = tmp_path / "killed"
    returncode, last = _kill_after_step(args + ["--out", str(killed)], killed, 13)
    assert returncode == -signal.SIGKILL
    assert 13 <= last < 16, last
    assert [r["step"] for r in _metrics(killed)] == list(range(1, last + 1))
    assert sorted(p.name for p in (killed / "checkpoints").glob("*.pt"))[-1] == "step_00000012.pt"
    assert not (killed / "train_stats.json").exists()
    _run_train(args + ["--out", str(killed), "--resume"])
    a, b = _metrics(tmp_path / "straight"), _metrics(tmp_path / "killed")
    assert [r["step"] for r in b] == list(range(1, 17))
    assert [r["keys"] for r in a] == [r["keys"] for r in b]
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] and a[-1]["epoch"] == 1
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6), ra["step"]
    wa = torch.load(tmp_path / "straight" / "checkpoints" / "step_00000016.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "killed" / "checkpoints" / "step_00000016.pt", weights_only=True)["model"]
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5) for k in wa)
    # The per-epoch counts survive the kill: the same as the uninterrupted run's, summing to the total.
    sa, sb = (json.loads((tmp_path / r / "train_stats.json").read_text()) for r in ("straight", "killed"))
    assert sa["epochs"] == sb["epochs"] and len(sa["epochs"]) == 2
    for record in sa["epochs"]:
        assert record["seen"] + sum(record["skipped"].values()) + sum(record["left_out"].values()) == 384
        assert record["distinct"] == record["seen"] and record["unaccounted"] == 0
    # Resuming with another loader layout is refused in one line.
    bad = _run_train(args + ["--out", str(tmp_path / "killed"), "--resume", "--workers", "1", "--steps", "20"],
                     check=False)
    assert bad.returncode == 1 and "--workers 2" in bad.stderr


@pytest.mark.slow
def test_nan_loss_stops_without_a_checkpoint(shards, tmp_path):
    proc = _run_train(["--train-data", str(shards), "--out", str(tmp_path / "r"), "--model", "tiny",
                       "--batch-size", "32", "--steps", "5", "--lr", "1e30", "--warmup", "1", "--save-every", "1"],
                      check=False)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert "loss is nan" in line or "loss is inf" in line
    ckpts = list((tmp_path / "r" / "checkpoints").glob("*.pt"))
    steps = [json.loads(x)["step"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(ckpts) == len(steps)   # a checkpoint for each good step, none for the bad one


@pytest.mark.slow
def test_resampled_mode_and_accumulation_run(shards, tmp_path):
    run = tmp_path / "r"
    _run_train(["--train-data", str(shards), "--out", str(run), "--model", "tiny", "--batch-size", "32",
                "--accum-steps", "4", "--resampled", "--samples-per-epoch", "128", "--epochs", "2", "--no-tensorboard"])
    m = _metrics(run)
    assert len(m) == 8 and [r["epoch"] for r in m] == [0] * 4 + [1] * 4


@pytest.mark.slow
def test_zero_shot_eval_during_training_goes_to_metrics(shards, tmp_path):
    held = write_heldout(tmp_path / "held")
    run = tmp_path / "r"
    proc = _run_train(["--train-data", str(shards), "--out", str(run), "--model", "tiny", "--batch-size", "32",
                       "--steps", "6", "--eval-every", "3", "--eval-data", str(held), "--no-tensorboard"])
    evals = [r for r in _metrics(run) if "eval" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(0 <= r["eval"]["top1"] <= 1 and r["eval"]["chance_top1"] == pytest.approx(1 / 12) for r in evals)
    assert "eval at step 6" in proc.stdout
    assert json.loads((run / "train_stats.json").read_text())["eval"]["top1"] == evals[-1]["eval"]["top1"]


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(shards, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "clipforge", "train", "--train-data", str(shards), "--out", str(run), "--model", "tiny",
           "--batch-size", "16", "--steps", "6", "--workers", "1", "--save-every", "3", "--no-tensorboard"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(run)
    assert len(m) == 6 and all(len(r["keys"]) == 2 and r["keys"][0] != r["keys"][1] for r in m)
    assert "x2" in proc.stdout and proc.stdout.count("train: done") == 1   # rank 0 alone reports
    ck = torch.load(run / "checkpoints" / "step_00000006.pt", weights_only=True)
    assert len(ck["data"]["ranks"]) == 2


@pytest.mark.slow
def test_learn_bpe_only_writes_the_vocabulary_that_the_run_then_reads(shards, tmp_path):
    from clipforge.trainer.tokenizer import read_merges

    run = tmp_path / "run"
    base = ["--train-data", str(shards), "--out", str(run), "--model", "tiny"]
    proc = _run_train(base + ["--learn-bpe-only", "--vocab-size", "700"])
    assert "ids learned from the shards' captions" in proc.stdout
    assert (run / "bpe.txt.gz").exists() and not (run / "checkpoints").exists()
    again = _run_train(base + ["--learn-bpe-only"], check=False)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1 and "already exists" in again.stderr
    proc = _run_train(base + ["--steps", "1", "--batch-size", "8", "--workers", "1", "--no-tensorboard"])
    assert "learned from the shards" not in proc.stdout          # read from the file, not learned again
    ck = torch.load(run / "checkpoints" / "step_00000001.pt", weights_only=True)
    assert [tuple(m) for m in ck["bpe_merges"]] == [tuple(m) for m in read_merges(run / "bpe.txt.gz")]


def test_cli_rejects_bad_values_in_one_line(shards, tmp_path, capsys):
    assert main(["train", "--train-data", str(shards), "--batch-size", "10", "--accum-steps", "3"]) == 1
    assert "does not split" in capsys.readouterr().err
    assert main(["train", "--train-data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
    assert "no such shard" in capsys.readouterr().err
    assert main(["train", "--train-data", str(shards), "--model", "ViT-Q-1", "--out", str(tmp_path / "o")]) == 1
    assert "unknown model" in capsys.readouterr().err


def test_resume_drops_a_metrics_line_cut_short_by_the_crash(tmp_path):
    """A run killed while writing metrics.jsonl leaves half a line; resuming keeps the whole lines
    up to the checkpoint's step and drops the rest, the half line included."""
    from clipforge.trainer.train import Run, TrainConfig

    run = Run(TrainConfig(train_data=str(tmp_path), out=str(tmp_path)))
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
    run._truncate_metrics(2)
    assert (tmp_path / "metrics.jsonl").read_text() == lines[0] + "\n" + lines[1] + "\n"


def test_excluded_keys_are_never_trained_on_and_are_counted(shards, tokenizer, tmp_path):
    """`train --exclude`: the keys of an exclude file (clipforge overlap's) are skipped before
    decoding and counted as excluded; every other sample is trained on or counted as before."""
    base = DataConfig(expand_shards(str(shards)), batch_size=8, image_size=32, seed=5, workers=2, shuffle_buffer=20)
    everything = _keys(base, tokenizer)
    out = set(everything[::7])
    cfg = DataConfig(base.shards, 8, 32, 5, workers=2, shuffle_buffer=20, exclude=frozenset(out))
    skipped, keys = Counter(), []
    for item in make_loader(cfg, tokenizer, 0):
        skipped.update(item["skipped"])
        keys += item["keys"] if item["images"] is not None else []
    assert not set(keys) & out and skipped["excluded"] == len(out)
    assert len(keys) + sum(skipped.values()) == 4 * 96  # every sample trained on, excluded or in a tail
    # the command line reads the file; a key that is not one is a one-line error
    (tmp_path / "exclude.txt").write_text("# from clipforge overlap\n" + "".join(f"{k}\n" for k in sorted(out)))
    from clipforge.trainer.train import excluded_keys
    assert excluded_keys(str(tmp_path / "exclude.txt")) == out
    (tmp_path / "bad.txt").write_text("000000000001\nnot-a-key\n")
    proc = _run_train(["--train-data", str(shards), "--out", str(tmp_path / "run"), "--model", "tiny", "--steps", "1",
                       "--exclude", str(tmp_path / "bad.txt")], check=False)
    assert proc.returncode == 1 and "not-a-key" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
