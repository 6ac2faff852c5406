"""Checkpoints: written atomically, the last K kept, and found again by `latest`.

A clipforge checkpoint is a dict with `model` (state dict, OpenAI's parameter names), `model_config`,
`bpe_merges` (so a checkpoint alone can embed text), `step`, and for resuming `optimizer`,
`train_config` and `data` (the exact loader position of every rank). `load_checkpoint` also reads
OpenAI-format weights: a plain state dict or OpenAI's TorchScript archives.

No checkpoint runs code. Pickles load with ``torch.load(weights_only=True)`` (tensors, containers,
numbers and strings only); TorchScript archives are never handed to ``torch.jit.load`` (whose
``__setstate__`` methods run TorchScript code): ``read_torchscript_weights`` unpickles their module
tree with an unpickler that knows tensors, storages and ``OrderedDict`` and nothing else, and reads
which attributes are parameters and buffers from the archive's class declarations as text.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from clipforge.errors import InputError, MissingInput, UserError

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
            raise MissingInput(f"{p}: no checkpoint in {p / CKPT_DIR}")
        return found
    if not p.exists():
        raise MissingInput(f"{p}: no such checkpoint")
    return p


class UnsafeCheckpoint(UserError, ValueError):
    """A file that would need code to load (a pickled global outside the allow-list)."""


_STORAGE_DTYPES = {f"{name}Storage": dtype for name, dtype in (
    ("Float", torch.float32), ("Half", torch.float16), ("BFloat16", torch.bfloat16), ("Double", torch.float64),
    ("Long", torch.int64), ("Int", torch.int32), ("Short", torch.int16), ("Char", torch.int8),
    ("Byte", torch.uint8), ("Bool", torch.bool))}
# TorchScript's own tags for typed lists and dicts; each returns its argument unchanged here.
_PASSTHROUGH = {"build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "build_genericlist"}


class _Script:
    """A TorchScript object (module) seen as data: its class name and its attributes, nothing run."""

    def __init__(self, *args):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage, offset, size, stride, *_):
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("tensor without storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: tensors, storages, OrderedDict; any other global is refused."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module, name):
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_Script,), {"qualname": f"{module}.{name}"})
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch.jit._pickle" and name in _PASSTHROUGH:
            return lambda x: x
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, _type: value
        module = "builtins" if module == "__builtin__" else module    # protocol 2 spells it so
        raise UnsafeCheckpoint(f"it would import {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes for {numel} elements")
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


_CLASS = re.compile(r"^class (\w+)\(Module\):\n((?:[ \t]+.*\n|\n)*)", re.MULTILINE)
_DECLARED = re.compile(r"^\s+__(parameters|buffers)__ = \[([^\]]*)\]", re.MULTILINE)


def _declared_state(archive: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """{qualified class name: names of its parameters and buffers}, read from the archive's code as text."""
    out = {}
    for name in archive.namelist():
        if not (name.startswith(prefix + "code/") and name.endswith(".py")):
            continue
        module = name[len(prefix + "code/"):-3].replace("/", ".")
        text = archive.read(name).decode("utf-8", "replace")
        for m in _CLASS.finditer(text):
            names = set()
            for d in _DECLARED.finditer(m.group(2)):
                names.update(x.strip().strip('"') for x in d.group(2).split(",") if x.strip())
            out[f"{module}.{m.group(1)}"] = names
    return out


def is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or n.endswith("/code/__torch__.py") or "/code/__torch__/" in n
                       for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_torchscript_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript archive (as ``torch.jit.load(path).state_dict()``), running nothing."""
    with zipfile.ZipFile(path) as z:
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise InputError(f"{path}: not a TorchScript archive (no data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        declared = _declared_state(z, prefix)
        root = _WeightsUnpickler(z.read(pkl[0]), z, prefix).load()
    if not isinstance(root, _Script):
        raise InputError(f"{path}: a TorchScript archive without a module")
    state, stack = OrderedDict(), [("", root)]
    while stack:
        name, obj = stack.pop()
        keep = declared.get(obj.qualname)
        children = []
        for key, value in obj.state.items():
            if isinstance(value, _Script):
                children.append((f"{name}{key}.", value))
            elif isinstance(value, torch.Tensor) and (keep is None or key in keep):
                state[f"{name}{key}"] = value.clone()
        stack.extend(reversed(children))
    return state


# What a token id means. Checkpoints written before CLIP's byte order was adopted (no "token_ids"
# key) numbered the 256 base symbols, and the 256 with "</w>", by byte value; their first 512
# embedding rows are put in CLIP's order on load, so old runs keep working.
TOKEN_IDS = "clip"


def _byte_order_permutation() -> torch.Tensor:
    from clipforge.trainer.tokenizer import byte_alphabet

    new_of_byte = {b: i for i, b in enumerate(byte_alphabet())}
    old = torch.tensor([b for b in sorted(new_of_byte, key=new_of_byte.get)])   # new id -> old id
    return torch.cat([old, old + 256])


def upgrade_token_ids(ck: dict) -> dict:
    """A clipforge checkpoint from before CLIP's byte order, with its id-indexed rows reordered."""
    if "model_config" not in ck or "bpe_merges" not in ck or ck.get("token_ids") == TOKEN_IDS:
        return ck
    order = _byte_order_permutation()
    emb = ck["model"].get("token_embedding.weight")
    if emb is not None and emb.shape[0] >= 512:
        shape = emb.shape

        def fix(t):
            t = t.clone()
            t[:512] = t[order]
            return t

        ck["model"]["token_embedding.weight"] = fix(emb)
        for state in (ck.get("optimizer") or {}).get("state", {}).values():   # Adam's moments of that row block
            for k, v in list(state.items()):
                if isinstance(v, torch.Tensor) and v.shape == shape:
                    state[k] = fix(v)
    ck["token_ids"] = TOKEN_IDS
    return ck


def load_checkpoint(path: Path) -> dict:
    """A clipforge checkpoint, or {'model': state_dict} for OpenAI-format weights."""
    path = resolve_checkpoint(path)
    try:
        if is_torchscript(path):            # OpenAI's released archives
            obj = read_torchscript_weights(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except UnsafeCheckpoint as e:
        raise UnsafeCheckpoint(f"{path}: refused: {e}; clipforge loads weights only and never runs code "
                               "from a checkpoint") from None
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "weights only" in first.lower() or "global" in first.lower():
            unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            what = f"it would import {unsupported.group(1)}" if unsupported else "it holds more than weights"
            raise UnsafeCheckpoint(f"{path}: refused: {what}; clipforge loads weights only and never runs code "
                                   "from a checkpoint") from None
        raise InputError(f"{path}: not a checkpoint (UnpicklingError: {first})") from None
    except Exception as e:   # pickle and zip errors have many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(f"{path}: not a checkpoint ({type(e).__name__}: {first})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return upgrade_token_ids(obj)
    if isinstance(obj, dict) and "state_dict" in obj:     # open_clip's training checkpoints
        return {"model": obj["state_dict"]}
    if isinstance(obj, dict) and any(k.endswith("token_embedding.weight") for k in obj):
        return {"model": obj}
    raise InputError(f"{path}: not a CLIP checkpoint (no model weights with OpenAI's parameter names)")
