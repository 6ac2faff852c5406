"""Checkpoints: written atomically, the last K kept, and found again by `latest`.

A clipforge checkpoint is a dict with `model` (state dict, OpenAI's parameter names), `model_config`,
`bpe_merges` (so a checkpoint alone can embed text), `step`, and for resuming `optimizer`,
`train_config` and `data` (the exact loader position of every rank). `load_weights` also reads
OpenAI-format weights: a plain state dict or OpenAI's TorchScript archives.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

CKPT_DIR = "checkpoints"
_STEP = re.compile(r"step_(\d+)\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    d = Path(run_dir) / CKPT_DIR
    found = [p for p in d.glob("step_*.pt") if _STEP.search(p.name)] if d.is_dir() else []
    return sorted(found, key=lambda p: int(_STEP.search(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, step: int, payload: dict, keep: int = 3) -> Path:
    """Write to a temporary file, fsync, rename: a crash leaves the old checkpoint or the new one."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(spec: str | Path) -> Path:
    """A checkpoint file, or a run directory (its latest checkpoint)."""
    p = Path(spec)
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise FileNotFoundError(f"{p}: no checkpoint in {p / CKPT_DIR}")
        return found
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    return p


def load_checkpoint(path: Path) -> dict:
    """A clipforge checkpoint, or {'model': state_dict} for OpenAI-format weights."""
    path = resolve_checkpoint(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except RuntimeError as e:
        if "TorchScript" not in str(e) and "constants.pkl" not in str(e):
            raise ValueError(f"{path}: not a checkpoint ({str(e).splitlines()[0]})") from None
        obj = torch.jit.load(str(path), map_location="cpu").state_dict()   # OpenAI's released archives
    except Exception as e:   # pickle and zip errors have many types
        raise ValueError(f"{path}: not a checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj
    if isinstance(obj, dict) and "state_dict" in obj:     # open_clip's training checkpoints
        return {"model": obj["state_dict"]}
    if isinstance(obj, dict) and any(k.endswith("token_embedding.weight") for k in obj):
        return {"model": obj}
    raise ValueError(f"{path}: not a CLIP checkpoint (no model weights with OpenAI's parameter names)")
