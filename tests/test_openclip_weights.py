"""clipforge's weights run in open_clip itself and give the same features (issue 14).

open_clip needs torchvision, which does not load beside this environment's CPU torch, so open_clip
runs in a side environment, `.venv-openclip` (`make openclip-env`: torch 2.14.1, torchvision
0.29.1, open_clip_torch from PyPI), started as a subprocess with tests/openclip_side.py. The two
sides share only files: the state dict as arrays (.npz, no pickles), images and features as .npy,
texts and model settings as JSON.

Each case: a clipforge model with every parameter and buffer randomised (so each one counts,
BatchNorm statistics and the zero-initialised residual norms included) is saved; open_clip builds
the matching model (from its own registered config for the paper's models) and loads the weights
with strict=True; both embed the same real photographs (matplotlib's sample photographs) and the
same texts, each side with its own tokenizer. Features must agree within 1e-4 in cosine.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipforge.trainer.data import load_image, normalize_images
from clipforge.trainer.model import CLIP, CONFIGS, CLIPConfig
from clipforge.trainer.tokenizer import Tokenizer
from conftest import ROOT

SIDE_PYTHON = ROOT / ".venv-openclip" / "bin" / "python"
pytestmark = [pytest.mark.skipif(
    not SIDE_PYTHON.exists(),
    reason="no .venv-openclip (open_clip with torchvision, which cannot load beside this torch): "
           "`make openclip-env` builds it"),
    pytest.mark.slow]   # one side-venv process for every case: over a minute

TOLERANCE = 1e-4   # 1 - cosine similarity, per image and per text
TEXTS = ["a photo of a cat", "Grace Hopper in uniform, 1984", "a blue gift box with a ribbon 🎁",
         "Ein Porträt einer Frau — naïve café", "东京タワーの夜景", "", "word " * 100]

# clipforge's config -> open_clip's: its own registered config for the paper's models, else its
# config dataclasses spelled out.
CASES = {
    "tiny": (CONFIGS["tiny"].with_vocab(49408, 77), None),                  # modified ResNet, 64 px
    "tiny-vit": (CONFIGS["tiny-vit"].with_vocab(49408, 77), None),          # ViT, 64 px
    "tiny-vit-gelu": (CLIPConfig.from_dict({**CONFIGS["tiny-vit"].with_vocab(49408, 77).to_dict(), "quick_gelu": False}), None),
    "ViT-B-32": (CONFIGS["ViT-B-32"], "ViT-B-32-quickgelu"),
    "RN50": (CONFIGS["RN50"], "RN50-quickgelu"),
}


def _openclip_spec(cfg: CLIPConfig, name: str | None) -> dict:
    if name:
        return {"name": name}
    v, t = cfg.vision, cfg.text
    if isinstance(v.layers, (tuple, list)):
        heads = v.heads or v.width * 32 // 64
        vision = {"layers": list(v.layers), "width": v.width, "head_width": v.width * 32 // heads, "image_size": v.image_size}
    else:
        heads = v.heads or v.width // 64
        vision = {"layers": v.layers, "width": v.width, "head_width": v.width // heads, "patch_size": v.patch_size,
                  "image_size": v.image_size}
    text = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
            "layers": t.layers}
    return {"embed_dim": cfg.embed_dim, "vision_cfg": vision, "text_cfg": text, "quick_gelu": cfg.quick_gelu}


def _photos() -> list[bytes]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    files = [folder / "grace_hopper.jpg", folder / "Minduka_Present_Blue_Pack.png"]
    return [f.read_bytes() for f in files if f.exists()]


def _randomise(model: CLIP, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            noise = torch.randn(v.shape, generator=g)
            v = (torch.rand(v.shape, generator=g) + 0.5) if k.endswith("running_var") else v + 0.05 * noise
        state[k] = v.contiguous()
    model.load_state_dict(state, strict=True)
    return state


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Per case: (clipforge image and text features, open_clip's, clipforge's and open_clip's ids, result.json)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    tokenizer_file = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    photos = _photos()
    assert len(photos) == 2, "matplotlib's sample photographs are missing"
    ours, dirs = {}, []
    torch.set_num_threads(1)
    for i, (case, (cfg, name)) in enumerate(CASES.items()):
        d = tmp_path_factory.mktemp(case)
        model = CLIP(cfg).eval()
        state = _randomise(model, seed=i)
        np.savez(d / "weights.npz", **{k: v.numpy() for k, v in state.items()})
        size = cfg.vision.image_size
        # Each photo whole (centre crop) and mirrored: four images.
        pixels = torch.stack([torch.from_numpy(load_image(p, size)) for p in photos])
        images = normalize_images(torch.cat([pixels, pixels.flip(-1)]))
        np.save(d / "images.npy", images.numpy())
        (d / "texts.json").write_text(json.dumps(TEXTS))
        (d / "case.json").write_text(json.dumps(_openclip_spec(cfg, name)))
        tok = Tokenizer.from_file(tokenizer_file, cfg.text.context_length)
        ids = tok(TEXTS)
        with torch.no_grad():
            ours[case] = (model.encode_image(images), model.encode_text(ids), ids)
        del model, state
        dirs.append(d)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    proc = subprocess.run([str(SIDE_PYTHON), str(ROOT / "tests" / "openclip_side.py"), *map(str, dirs)],
                          capture_output=True, text=True, env={**env, "CUDA_VISIBLE_DEVICES": ""}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for case, d in zip(CASES, dirs):
        image, text, ids = ours[case]
        out[case] = (image, text, torch.from_numpy(np.load(d / "image_features.npy")),
                     torch.from_numpy(np.load(d / "text_features.npy")), ids,
                     torch.from_numpy(np.load(d / "token_ids.npy")), json.loads((d / "result.json").read_text()))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_open_clip_loads_clipforge_weights_and_gives_the_same_features(compared, case):
    image, text, their_image, their_text, ids, their_ids, result = compared[case]
    assert result["missing"] == [] and result["unexpected"] == []
    assert torch.equal(ids, their_ids)                 # open_clip's own tokenizer, in open_clip itself
    image_dev = 1 - F.cosine_similarity(image, their_image, dim=-1)
    text_dev = 1 - F.cosine_similarity(text, their_text, dim=-1)
    print(f"{case}: open_clip {result['open_clip']} torch {result['torch']}, {result['parameters']:,} parameters; "
          f"max 1-cos image {image_dev.max():.2e} text {text_dev.max():.2e}; "
          f"max |diff| image {(image - their_image).abs().max():.2e} text {(text - their_text).abs().max():.2e}")
    assert image_dev.max() < TOLERANCE and text_dev.max() < TOLERANCE
    # The features are not degenerate: different inputs give clearly different features.
    assert F.cosine_similarity(image[0], image[1], dim=0) < 0.999
    assert F.cosine_similarity(text[0], text[1], dim=0) < 0.999
