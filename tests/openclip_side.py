"""Runs in the side environment (.venv-openclip: open_clip_torch with torch and torchvision), never here.

For each case directory given: builds open_clip's model (by its registered name, or by open_clip's
config dataclasses), loads clipforge's weights into it with strict=True, tokenizes the texts with
open_clip's tokenizer, and writes what it computes. Everything crosses as plain files:
  in:  case.json (the open_clip model), weights.npz (state dict, arrays only), images.npy
       (float32 [n, 3, size, size], already normalised), texts.json (list of strings)
  out: image_features.npy, text_features.npy, token_ids.npy, result.json (versions, keys)
"""

import json
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch


def build(spec: dict) -> torch.nn.Module:
    if "name" in spec:
        return open_clip.create_model(spec["name"], pretrained=None, device="cpu")
    vision = open_clip.model.CLIPVisionCfg(**{k: tuple(v) if isinstance(v, list) else v
                                              for k, v in spec["vision_cfg"].items()})
    text = open_clip.model.CLIPTextCfg(**spec["text_cfg"])
    return open_clip.model.CLIP(spec["embed_dim"], vision, text, quick_gelu=spec["quick_gelu"])


def run(case: Path):
    spec = json.loads((case / "case.json").read_text())
    model = build(spec).eval()
    with np.load(case / "weights.npz", allow_pickle=False) as z:
        state = {k: torch.from_numpy(z[k]) for k in z.files}
    result = model.load_state_dict(state, strict=True)
    texts = json.loads((case / "texts.json").read_text())
    ids = open_clip.get_tokenizer("ViT-B-32")(texts, context_length=model.context_length)
    images = torch.from_numpy(np.load(case / "images.npy", allow_pickle=False))
    with torch.no_grad():
        image_features = model.encode_image(images)
        text_features = model.encode_text(ids)
    np.save(case / "image_features.npy", image_features.float().numpy())
    np.save(case / "text_features.npy", text_features.float().numpy())
    np.save(case / "token_ids.npy", ids.numpy())
    (case / "result.json").write_text(json.dumps({
        "open_clip": open_clip.__version__, "torch": torch.__version__,
        "missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys),
        "parameters": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    for arg in sys.argv[1:]:
        run(Path(arg))
