"""Checkpoints from strangers: nothing in them runs, in any command that reads one.

The probes are real: each malicious file is first shown to write its file when unpickled the
ordinary way, then given to eval, score, train --init-from and train --resume, which must refuse it
in one line and write nothing. TorchScript archives (OpenAI's released format) are read without
torch.jit.load; torch.jit.load itself is the oracle for what they hold.
"""

import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from clipforge.trainer.checkpoint import load_checkpoint, read_torchscript_weights, save_checkpoint
from clipforge.trainer.model import CLIP, model_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import write_shards  # noqa: E402

CLIPFORGE = [sys.executable, "-m", "clipforge"]


class _WritesAFile:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return exec, (f"open({self.target!r}, 'w').write('pwned')",)


def _evil_pickle(path: Path, target: Path):
    torch.save({"model": {"token_embedding.weight": torch.zeros(2, 2)}, "x": _WritesAFile(target)}, path)


def _evil_torchscript(path: Path, target: Path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_WritesAFile(target), protocol=2))
        z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("archive/code/__torch__.py", "class M(Module):\n  __parameters__ = []\n")
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize("make", [_evil_pickle, _evil_torchscript], ids=["pickle", "torchscript"])
def test_the_probe_is_real_and_load_checkpoint_refuses_it(make, tmp_path):
    target = tmp_path / "pwned"
    make(tmp_path / "evil.pt", target)
    with zipfile.ZipFile(tmp_path / "evil.pt") as z:     # unpickled the ordinary way, it writes
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        try:
            pickle.loads(z.read(name)) if make is _evil_torchscript else torch.load(tmp_path / "evil.pt", weights_only=False)
        except Exception:
            pass
    assert target.read_text() == "pwned"
    target.unlink()
    with pytest.raises(ValueError, match=r"refused: it would import (builtins\.)?exec; clipforge loads weights only"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not target.exists()


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    d = tmp_path_factory.mktemp("evil")
    shards = write_shards(d / "shards", n_shards=1, per_shard=8)
    _evil_pickle(d / "evil.pt", d / "pwned")
    _evil_torchscript(d / "evil_ts.pt", d / "pwned")
    (d / "resume" / "checkpoints").mkdir(parents=True)
    _evil_pickle(d / "resume" / "checkpoints" / "step_00000004.pt", d / "pwned")
    return d, shards


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval", "score", "train --init-from", "train --resume"])
@pytest.mark.parametrize("kind", ["evil.pt", "evil_ts.pt"])
def test_every_command_refuses_a_malicious_checkpoint_in_one_line(evil, command, kind, tmp_path):
    d, shards = evil
    ckpt = d / kind
    if command == "eval":
        args = ["eval", "--checkpoint", ckpt, "--wds", shards / "000000.tar", "--out", tmp_path / "ev"]
    elif command == "score":
        args = ["score", "--checkpoint", ckpt, "--pairs", shards / "000000.tar", "--out", tmp_path / "sc"]
    elif command == "train --init-from":
        args = ["train", "--train-data", shards, "--model", "tiny", "--steps", "1", "--init-from", ckpt,
                "--out", tmp_path / "run"]
    else:
        if kind == "evil_ts.pt":
            pytest.skip("a resumed run reads clipforge's own checkpoints; the pickle probe covers it")
        args = ["train", "--train-data", shards, "--model", "tiny", "--steps", "8", "--out", d / "resume", "--resume"]
    proc = subprocess.run(CLIPFORGE + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"refused: it would import (builtins\.)?exec;", lines[0]), proc.stderr[-2000:]
    assert not (d / "pwned").exists()


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)
        self.attn_mask = torch.ones(2, 2)         # a tensor attribute, neither parameter nor buffer

    def forward(self, x):
        return self.lin(x) + self.attn_mask.sum()


class _Scripted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(2, 3)
        self.register_buffer("counts", torch.arange(5))
        self.scale = torch.nn.Parameter(torch.randn(4, 6).half()[:, ::2])   # strided, half precision
        self.seq = torch.nn.Sequential(torch.nn.LayerNorm(3), _Block())
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])

    def forward(self, x):
        y = self.seq(self.first(x))
        for b in self.blocks:
            y = b(y)
        return y + self.counts.sum()


def test_torchscript_weights_equal_torch_jit_load(tmp_path):
    torch.jit.script(_Scripted()).save(str(tmp_path / "ts.pt"))
    theirs = torch.jit.load(str(tmp_path / "ts.pt"), map_location="cpu").state_dict()
    ours = read_torchscript_weights(tmp_path / "ts.pt")
    assert list(ours) == list(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape and torch.equal(ours[k], theirs[k])


def test_a_traced_clip_archive_loads_as_openai_weights(tmp_path):
    """OpenAI ships TorchScript archives of CLIP; one traced from our model loads to its weights."""
    torch.manual_seed(0)
    model = CLIP(model_config("tiny")).eval()
    size = model.config.vision.image_size
    inputs = (torch.randn(1, 3, size, size), torch.randint(0, 100, (1, model.config.text.context_length)))
    torch.jit.trace(model, inputs).save(str(tmp_path / "clip.pt"))
    got = load_checkpoint(tmp_path / "clip.pt")["model"]
    want = model.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_own_checkpoints_still_load(tmp_path):
    torch.manual_seed(0)
    model = CLIP(model_config("tiny"))
    optim = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 64, 64), torch.randint(0, 100, (2, model.config.text.context_length)))[0].sum().backward()
    optim.step()
    path = save_checkpoint(tmp_path, 3, {"model": model.state_dict(), "model_config": model.config.to_dict(),
                                         "bpe_merges": [("a", "b")], "step": 3, "optimizer": optim.state_dict(),
                                         "train_config": {"lr": 1e-3, "model": "tiny", "out": str(tmp_path)},
                                         "data": {"epoch": 0, "ranks": [{"pos": 1}], "skipped": {}}})
    ck = load_checkpoint(path)
    assert ck["step"] == 3 and ck["bpe_merges"] == [("a", "b")] and ck["optimizer"]["state"]


def test_checkpoints_from_before_clips_byte_order_are_renumbered(tmp_path):
    """Before CLIP's byte order, "a</w>" was id 353 and ".</w>" id 302; CLIP numbers them 320 and 269
    (the ids published in issue 14). An old checkpoint's rows move to CLIP's ids on load."""
    torch.manual_seed(0)
    model = CLIP(model_config("tiny"))
    sd = model.state_dict()
    emb = sd["token_embedding.weight"]
    emb[353], emb[302], emb[600] = 1.0, 2.0, 3.0           # merge ids (>= 512) keep their rows
    opt = {"state": {0: {"exp_avg": emb.clone(), "step": torch.tensor(3.0)}}, "param_groups": []}
    old = save_checkpoint(tmp_path / "old", 1, {"model": sd, "model_config": model.config.to_dict(),
                                                "bpe_merges": [("a", "b")], "step": 1, "optimizer": opt})
    ck = load_checkpoint(old)
    got = ck["model"]["token_embedding.weight"]
    assert ck["token_ids"] == "clip"
    assert (got[320] == 1.0).all() and (got[269] == 2.0).all() and (got[600] == 3.0).all()
    assert (ck["optimizer"]["state"][0]["exp_avg"][320] == 1.0).all()
    assert sorted(got[:512].sum(1).tolist()) == sorted(emb[:512].sum(1).tolist())   # a permutation
    new = save_checkpoint(tmp_path / "new", 1, {**ck, "model": {"token_embedding.weight": got.clone()}})
    assert torch.equal(load_checkpoint(new)["model"]["token_embedding.weight"], got)   # not moved twice
