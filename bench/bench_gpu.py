"""Training speed on GPUs: samples/s, where a step's time goes, and MFU (issue 19).

For ViT-B/32 and RN50 at bf16 autocast, with and without ``torch.compile``, on one GPU: the
trainer's model, loss (``clip_loss``) and fused AdamW on synthetic batches already on the device
(so the loader is not measured here), a step split into forward, backward and optimizer by CUDA
events, and the model FLOPs utilisation: FLOPs of one step (counted by
``torch.utils.flop_counter`` on the real step) x steps/s over the GPU's dense bf16 peak.
``python -m bench.bench_gpu MODEL [compile]`` measures one configuration (under ``torchrun`` too).

On a machine without CUDA the section says so and measures nothing (its earlier figures stay).
Not yet here: all GPUs of a node under DDP, and the data-wait share with the real loader.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

ABOUT = None
MODELS = ("ViT-B-32", "RN50")
BATCH = 256
WARMUP, STEPS = 5, 20
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name fragment.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10G": 70.0,
                    "RTX 4090": 165.2, "V100": None}


def peak_tflops(name):
    """The dense bf16 peak of a device by its name, or None when unknown (no MFU then)."""
    for fragment, peak in PEAK_BF16_TFLOPS.items():
        if fragment in name:
            return peak
    return None


def _batch(model, batch, device):
    images = torch.randn(batch, 3, model.image_size, model.image_size, device=device)
    texts = torch.randint(1, 1000, (batch, model.context_length), device=device)
    texts[:, -1] = 49407  # an end-of-text id, the highest in each row
    return images, texts


def _step(model, images, texts, device_type, dtype):
    from clipforge.trainer.loss import clip_loss

    with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
        image_f, text_f, scale = model(images, texts)
        loss = clip_loss(image_f, text_f, scale)
    return loss


def flops_per_step(model, batch, device="cpu", dtype=torch.float32):
    """FLOPs of one forward and backward pass at ``batch`` (torch's FLOP counter on the real step)."""
    from torch.utils.flop_counter import FlopCounterMode

    images, texts = _batch(model, batch, device)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = _step(model, images, texts, torch.device(device).type, dtype)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def step_split(model, optimizer, batch, steps, device, dtype, warmup=2):
    """Mean seconds of forward, backward and optimizer over ``steps`` steps (CUDA events on a GPU,
    the wall clock on a CPU), and samples/s of whole steps."""
    cuda = torch.device(device).type == "cuda"
    images, texts = _batch(model, batch, device)
    totals = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def mark():
        if cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def between(a, b):
        return a.elapsed_time(b) / 1000 if cuda else b - a

    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        a = mark()
        loss = _step(model, images, texts, torch.device(device).type, dtype)
        b = mark()
        loss.backward()
        c = mark()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        d = mark()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            for k, (x, y) in zip(totals, ((a, b), (b, c), (c, d))):
                totals[k] += between(x, y)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {k: v / steps for k, v in totals.items()}, batch * steps / wall, wall / steps


def measure(name, compile_, batch=BATCH, steps=STEPS, device="cuda"):
    """One configuration on this process's device: samples/s, the split, TFLOP/s and MFU."""
    from clipforge.trainer.model import CLIP, model_config

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = CLIP(model_config(name)).to(device)
    if "RN" in name and torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    flops = flops_per_step(model, batch, device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=torch.device(device).type == "cuda")
    run = torch.compile(model) if compile_ else model
    split, rate, step_s = step_split(run, optimizer, batch, steps, device, dtype, warmup=WARMUP)
    dev_name = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else "cpu"
    peak = peak_tflops(dev_name)
    achieved = flops / step_s / 1e12
    return {"model": name, "compile": compile_, "batch": batch, "device": dev_name, "samples_per_s": rate,
            "step_ms": step_s * 1000, "split_ms": {k: v * 1000 for k, v in split.items()},
            "tflops_per_step": flops / 1e12, "achieved_tflops": achieved,
            "mfu": achieved / peak if peak else None}


def benchmarks(workdir):
    global ABOUT
    if not torch.cuda.is_available():
        print("  gpu: no CUDA device on this machine: nothing measured (the section keeps its earlier figures)")
        return []
    rows = [measure(name, c) for name in MODELS for c in (False, True)]
    lines = ["| model | torch.compile | samples/s | step | forward / backward / optimizer | TFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["split_ms"]
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "(peak unknown)"
        lines.append(f"| {r['model']} | {'yes' if r['compile'] else 'no'} | {r['samples_per_s']:,.0f} | "
                     f"{r['step_ms']:.1f} ms | {s['forward']:.1f} / {s['backward']:.1f} / {s['optimizer']:.1f} ms | "
                     f"{r['achieved_tflops']:.0f} | {mfu} |")
    ABOUT = (f"One {rows[0]['device']}, bf16 autocast, batch {BATCH} per GPU, synthetic batches on the device, "
             f"TF32 on, fused AdamW, channels_last for RN50; mean of {STEPS} steps after {WARMUP}; MFU against "
             f"the dense bf16 peak of the data sheet.\n\n" + "\n".join(lines) + "\n")
    (Path(workdir)).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / "gpu.json").write_text(json.dumps(rows, indent=1))
    return []


if __name__ == "__main__":  # one configuration, e.g. under torchrun: python -m bench.bench_gpu ViT-B-32 [compile]
    r = measure(sys.argv[1], len(sys.argv) > 2 and sys.argv[2] == "compile",
                device="cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps(r))
    if os.environ.get("GPU_BENCH_OUT"):
        Path(os.environ["GPU_BENCH_OUT"]).write_text(json.dumps(r))
