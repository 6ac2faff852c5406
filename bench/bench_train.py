"""Training benchmarks.

1. Loader: clipforge's ShardStream (draft-mode JPEG decode, one crop-and-resize call, uint8 to
   the main process, normalised there) against open_clip's WebDataset pipeline (see
   peer_openclip_loader.py), same shards, same worker count, batch and output (normalised
   float images and token ids), one whole epoch each, worker start-up included.
2. Training step: ViT-B/32 forward + backward + AdamW at a fixed batch on the CPU, clipforge's
   model (attention through scaled_dot_product_attention) against the same weights with
   attention through nn.MultiheadAttention, as OpenAI's and open_clip's blocks run it.
"""

import io
import random
import time

import torch
import webdataset as wds

from bench.bench_shard import photo_like
from bench.harness import Comparison
from bench.peer_openclip_loader import openclip_loader
from clipforge.trainer.data import DataConfig, make_loader, normalize_images
from clipforge.trainer.model import CLIP, model_config
from clipforge.trainer.tokenizer import Tokenizer, train_bpe
from clipforge.trainer.train import backward_batch

N_SAMPLES = 2048
SHARDS = 8
BATCH = 128
WORKERS = 2
STEP_BATCH = 32
STEPS = 2


def write_shards(out, w, h):
    rng = random.Random(w)
    scenes = [photo_like(rng, w + w // 4, h + h // 4) for _ in range(64)]
    out.mkdir(parents=True, exist_ok=True)
    per = N_SAMPLES // SHARDS
    total_bytes = 0
    for s in range(SHARDS):
        with wds.TarWriter(str(out / f"{s:06d}.tar")) as tw:
            for i in range(per):
                x, y = rng.randrange(w // 4), rng.randrange(h // 4)
                img = scenes[(s * per + i) % len(scenes)].crop((x, y, x + w, y + h))
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=90)
                total_bytes += buf.tell()
                tw.write({"__key__": f"{s * per + i:09d}", "jpg": buf.getvalue(),
                          "txt": f"a photo of scene {i % 64} with some circles, number {i}"})
    return sorted(str(p) for p in out.glob("*.tar")), total_bytes / N_SAMPLES / 1000


def write_pool_shards(out, w, h, n_samples, n_shards, pool=256, seed=0):
    """Shards of ``n_samples`` photo-like ``w`` x ``h`` JPEGs (``pool`` distinct encodings, cycled:
    decoding costs the same, and writing many samples stays cheap) with varied captions, and the
    ``sizes.json`` the loader balances its slots by. Returns (urls, mean kB per JPEG)."""
    import json

    rng = random.Random(seed * 1000003 + w * 1009 + h)
    scenes = [photo_like(rng, w + w // 4, h + h // 4) for _ in range(min(pool, 64))]
    jpegs = []
    for i in range(pool):
        x, y = rng.randrange(w // 4), rng.randrange(h // 4)
        buf = io.BytesIO()
        scenes[i % len(scenes)].crop((x, y, x + w, y + h)).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    out.mkdir(parents=True, exist_ok=True)
    sizes, key = {}, 0
    for s in range(n_shards):
        name = f"{s:06d}.tar"
        n = n_samples // n_shards + (s < n_samples % n_shards)
        with wds.TarWriter(str(out / name)) as tw:
            for _ in range(n):
                tw.write({"__key__": f"{key:09d}", "jpg": jpegs[key % pool],
                          "txt": f"a photo of scene {key % 64} with some circles, number {key}"})
                key += 1
        sizes[name] = n
    (out / "sizes.json").write_text(json.dumps(sizes))
    return sorted(str(out / name) for name in sizes), sum(map(len, jpegs)) / pool / 1000


def _loader_comparison(workdir, w, h, tokenizer):
    urls, kb = write_shards(workdir / f"{w}x{h}", w, h)
    seen = {}

    def ours():
        cfg = DataConfig(urls, BATCH, 224, seed=0, workers=WORKERS, shuffle_buffer=1000)
        n = 0
        for item in make_loader(cfg, tokenizer, 0):
            if item["images"] is not None:
                images = normalize_images(item["images"])
                n += images.shape[0]
                assert images.dtype == torch.float32 and item["texts"].shape[1] == 77
        seen["ours"] = n

    def peer():
        n = 0
        for images, texts in openclip_loader(urls, tokenizer, BATCH, WORKERS):
            n += images.shape[0]
            assert images.shape[1:] == (3, 224, 224)
        seen["peer"] = n

    def verify(side):
        # Both drop each worker's partial last batch: the same number of samples either way.
        assert seen[side] >= N_SAMPLES - WORKERS * BATCH, seen

    return Comparison(
        name=f"loader: {w}x{h} JPEGs -> 224 px batches", ours=ours, peer=peer,
        peer_name="open_clip's WebDataset pipeline", items=N_SAMPLES, unit="samples", verify=verify,
        input=f"{N_SAMPLES:,} photo-like {w}x{h} JPEGs (~{kb:.0f} kB) in {SHARDS} shards", repeats=3,
        notes=(f"{WORKERS} worker processes, batch {BATCH}, random resized crop (scale 0.9-1) to 224, bicubic, "
               "CLIP normalisation, BPE tokens; one epoch, worker start-up included. The peer's torchvision "
               "transforms are the same PIL calls written out (torchvision does not load here). clipforge "
               "decodes in JPEG draft mode (libjpeg scales by 1/2 while decoding when the source is at least "
               "twice the crop), crops and resizes in one call, and sends uint8 between processes (normalising "
               "in the main process, which the timing includes)"))


class _MHA(torch.nn.Module):
    """nn.MultiheadAttention holding the same weights (the attention of OpenAI's and open_clip's blocks)."""

    def __init__(self, ours):
        super().__init__()
        width = ours.out_proj.in_features
        self.mha = torch.nn.MultiheadAttention(width, ours.heads, batch_first=True)
        self.mha.load_state_dict(ours.state_dict())

    def forward(self, x, causal=False):
        mask = None
        if causal:
            n = x.shape[1]
            mask = torch.full((n, n), float("-inf"), device=x.device).triu(1)
        return self.mha(x, x, x, need_weights=False, attn_mask=mask)[0]


def _step_comparison():
    torch.manual_seed(0)
    ours_model = CLIP(model_config("ViT-B-32"))
    peer_model = CLIP(model_config("ViT-B-32"))
    peer_model.load_state_dict(ours_model.state_dict())
    for block in list(peer_model.transformer.resblocks) + list(peer_model.visual.transformer.resblocks):
        block.attn = _MHA(block.attn)
    images = torch.randn(STEP_BATCH, 3, 224, 224)
    texts = torch.randint(0, 49406, (STEP_BATCH, 77))
    texts[:, 20] = 49407
    optimizers = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (ours_model, peer_model)}

    def steps(model):
        opt = optimizers[id(model)]
        for _ in range(STEPS):
            backward_batch(model, images, texts)
            opt.step()
            opt.zero_grad(set_to_none=True)

    steps(ours_model)   # warm-up: allocator, optimizer state
    steps(peer_model)
    return Comparison(
        name="train step: ViT-B/32, CPU, fp32", ours=lambda: steps(ours_model), peer=lambda: steps(peer_model),
        peer_name="same model, nn.MultiheadAttention (OpenAI/open_clip blocks)", items=STEPS * STEP_BATCH,
        unit="samples", input=f"batch {STEP_BATCH}, 224 px, 77 tokens, forward + backward + AdamW", repeats=2,
        notes=(f"{torch.get_num_threads()} threads; identical weights and inputs; a step is the symmetric InfoNCE "
               "loss over the batch. On a CPU both attention paths end in the same matrix products, so this "
               "shows the model is not slower than the reference code; the GPU figures need a GPU"))


def benchmarks(workdir):
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(train_bpe([f"a photo of scene {i} with some circles, number {i}" for i in range(500)],
                                    vocab_size=2000), 77)
    t = time.time()
    comparisons = [_loader_comparison(workdir, 256, 256, tokenizer), _loader_comparison(workdir, 640, 480, tokenizer)]
    print(f"  shards written in {time.time() - t:.0f} s", flush=True)
    return comparisons + [_step_comparison()]
