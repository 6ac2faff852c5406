"""Training speed on GPUs: samples/s, where a step's time goes, and MFU (issue 19).

For ViT-B/32 and RN50 at bf16 autocast, with and without ``torch.compile``:

1. One GPU: the trainer's model, loss (``clip_loss``) and fused AdamW on synthetic batches already
   on the device (the loader is not measured here), a step split into forward, backward and
   optimizer by CUDA events, and the model FLOPs utilisation: FLOPs of one step (counted by
   ``torch.utils.flop_counter`` on the real step) x steps/s over the GPU's dense bf16 peak.
2. All GPUs of a node (when it has more than one): the same configuration under ``torchrun
   --nproc_per_node=<GPUs>`` and DistributedDataParallel (each rank its own synthetic batch, the
   loss over the global batch as the trainer computes it); samples/s summed over the ranks, the
   scaling efficiency against one GPU, and the communication share: the time the backward takes
   longer with DDP's gradient all-reduce than the same steps under ``no_sync`` (the exposed
   all-reduce; the loss's feature gather runs in both), over the step time.
3. The data-wait share: steps fed by the real loader (``clipforge.trainer.data.make_loader``,
   the trainer's default worker count, pinned memory) over real shards written here (photo-like
   341x256 JPEGs, as clipforge's shard stage stores them, with ``sizes.json``), on one GPU and on
   all of them; the fraction of step time spent waiting for the next batch (each step
   synchronised, so a step is its wait plus its compute).

``python -m bench.bench_gpu MODEL [compile] [--data SHARDS] [--batch N] [--steps N]`` measures one
configuration in this process, or under ``torchrun`` one rank each (each writes
``$GPU_BENCH_OUT/rank<RANK>.json``); ``run_ddp`` starts that and ``aggregate`` combines the ranks.

On a machine without CUDA the section says so and measures nothing (its earlier figures stay).
"""

import contextlib
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ABOUT = None
MODELS = ("ViT-B-32", "RN50")
BATCH = 256
WARMUP, STEPS = 5, 20
DATA_IMAGE = (341, 256)     # clipforge's shard stage keeps the aspect and makes the shorter side 256
ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name fragment.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10G": 70.0,
                    "RTX 4090": 165.2, "V100": None}


def peak_tflops(name):
    """The dense bf16 peak of a device by its name, or None when unknown (no MFU then)."""
    for fragment, peak in PEAK_BF16_TFLOPS.items():
        if fragment in name:
            return peak
    return None


def _inner(model):
    """The CLIP module under DDP's and torch.compile's wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _batch(model, batch, device):
    model = _inner(model)
    images = torch.randn(batch, 3, model.image_size, model.image_size, device=device)
    texts = torch.randint(1, 1000, (batch, model.context_length), device=device)
    texts[:, -1] = 49407  # an end-of-text id, the highest in each row
    return images, texts


def _step(model, images, texts, device_type, dtype):
    from clipforge.trainer.loss import clip_loss

    cast = torch.autocast(device_type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with cast:
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


def step_split(model, optimizer, batch, steps, device, dtype, warmup=2, sync=True):
    """Mean seconds of forward, backward and optimizer over ``steps`` steps (CUDA events on a GPU,
    the wall clock on a CPU), and samples/s of whole steps. Under DDP with ``sync=False`` the
    backward runs in ``no_sync`` (no gradient all-reduce; the loss's gather still runs)."""
    cuda = torch.device(device).type == "cuda"
    images, texts = _batch(model, batch, device)
    totals = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    no_sync = getattr(model, "no_sync", None)

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
        with (no_sync() if not sync and no_sync is not None else contextlib.nullcontext()):
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


def _process(device):
    """(rank, world, device) of this process: under torchrun joins the process group (NCCL on
    GPUs, gloo on CPUs) and takes the GPU of its local rank."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.device(device).type == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def _model(name, device):
    """The model (the same weights on every rank), its FLOPs per step counted before wrapping,
    the dtype, and the channels_last flag (RN50 on a GPU), as the trainer sets them."""
    from clipforge.trainer.model import CLIP, model_config

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cuda = torch.device(device).type == "cuda"
    model = CLIP(model_config(name)).to(device)
    channels_last = "RN" in name and cuda
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, (torch.bfloat16 if cuda else torch.float32), channels_last


def _wrap(model, compile_, world, device):
    run = torch.compile(model) if compile_ else model
    if world > 1:   # as the trainer does: compile, then DDP
        run = torch.nn.parallel.DistributedDataParallel(
            run, device_ids=[torch.device(device).index] if torch.device(device).type == "cuda" else None)
    return run


def param_digest(model) -> str:
    """A hash of the parameters' bytes: equal on every rank when DDP kept them in step."""
    h = hashlib.sha1()
    for p in _inner(model).parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _device_name(device):
    return torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else "cpu"


def measure(name, compile_, batch=BATCH, steps=STEPS, device="cuda", warmup=WARMUP):
    """One configuration on this process's device: samples/s, the split, TFLOP/s and MFU; under
    torchrun also the exposed gradient all-reduce (``comm_ms``) from a second run under no_sync."""
    rank, world, device = _process(device)
    model, dtype, _ = _model(name, device)
    flops = flops_per_step(model, batch, device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=torch.device(device).type == "cuda")
    run = _wrap(model, compile_, world, device)
    torch.manual_seed(1 + rank)     # each rank its own batch
    split, rate, step_s = step_split(run, optimizer, batch, steps, device, dtype, warmup=warmup)
    digest = param_digest(model)
    comm = None
    if world > 1:
        alone, _, _ = step_split(run, optimizer, batch, steps, device, dtype, warmup=warmup, sync=False)
        comm = max(0.0, split["backward"] - alone["backward"])
    dev_name = _device_name(device)
    peak = peak_tflops(dev_name)
    achieved = flops / step_s / 1e12
    return {"model": name, "compile": compile_, "batch": batch, "device": dev_name, "rank": rank, "world": world,
            "samples_per_s": rate, "step_ms": step_s * 1000, "split_ms": {k: v * 1000 for k, v in split.items()},
            "comm_ms": None if comm is None else comm * 1000, "tflops_per_step": flops / 1e12,
            "achieved_tflops": achieved, "mfu": achieved / peak if peak else None, "params": digest}


def measure_loader(name, shards, compile_=False, batch=BATCH, steps=STEPS, device="cuda", warmup=WARMUP,
                   workers=None):
    """Steps fed by the real loader over ``shards``: each step waits for its batch (``next`` on the
    DataLoader), copies it to the device, normalises it and trains; the step is synchronised, so
    its time is the wait plus the compute. Returns samples/s and the data-wait share of the
    ``steps`` after ``warmup`` (worker start-up falls in the warm-up), with the keys trained on."""
    from clipforge.trainer.data import DataConfig, default_workers, expand_shards, make_loader, normalize_images
    from clipforge.trainer.tokenizer import Tokenizer, train_bpe
    from clipforge.trainer.train import read_captions

    rank, world, device = _process(device)
    cuda = torch.device(device).type == "cuda"
    model, dtype, channels_last = _model(name, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    run = _wrap(model, compile_, world, device)
    urls = expand_shards(shards)
    tokenizer = Tokenizer(train_bpe(read_captions(urls, 2000), vocab_size=1000), model.config.text.context_length)
    workers = default_workers() if workers is None else workers
    cfg = DataConfig(urls, batch, model.image_size, seed=0, workers=workers)
    loader = iter(make_loader(cfg, tokenizer, 0, rank, world, pin_memory=cuda))
    wait = total = 0.0
    keys = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        item = next(loader, None)
        while item is not None and item["images"] is None:     # a worker's end: counts only
            item = next(loader, None)
        if item is None:
            raise RuntimeError(f"the shards ran out after {i} of {warmup + steps} steps on rank {rank}")
        t1 = time.perf_counter()
        images = normalize_images(item["images"].to(device, non_blocking=True))
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        texts = item["texts"].to(device, non_blocking=True)
        loss = _step(run, images, texts, torch.device(device).type, dtype)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= warmup:
            wait, total = wait + (t1 - t0), total + (t2 - t0)
            keys += item["keys"]
    del loader
    return {"model": name, "compile": compile_, "batch": batch, "device": _device_name(device), "rank": rank,
            "world": world, "workers": workers, "samples_per_s": batch * steps / total, "step_ms": 1000 * total / steps,
            "data_wait_ms": 1000 * wait / steps, "data_wait_share": wait / total, "keys": keys,
            "params": param_digest(model)}


def workers_per_process(local):
    """The trainer's default loader workers for each of ``local`` processes on this node."""
    from clipforge.trainer.data import default_workers

    before = os.environ.get("LOCAL_WORLD_SIZE")
    os.environ["LOCAL_WORLD_SIZE"] = str(local)
    try:
        return default_workers()
    finally:
        if before is None:
            del os.environ["LOCAL_WORLD_SIZE"]
        else:
            os.environ["LOCAL_WORLD_SIZE"] = before


def need_samples(world, workers, batch=BATCH, steps=WARMUP + STEPS):
    """Samples the shards must hold so that every rank has ``steps`` full batches: each of the
    world x workers slots makes its own batches (the loader takes them round-robin)."""
    per_slot = -(-steps // max(1, workers)) + 1
    return world * max(1, workers) * per_slot * batch


# --- all GPUs of a node -------------------------------------------------------------------------

def ddp_command(model, compile_, nproc, *extra):
    """torchrun with one rank per GPU, each running this module's single-configuration entry point."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "bench.bench_gpu", model] + (["compile"] if compile_ else []) + [str(a) for a in extra]


def run_ddp(model, compile_, nproc, out, *extra, env=None, timeout=1800):
    """Run one configuration under torchrun; every rank's result, in rank order."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank*.json"):
        old.unlink()
    proc = subprocess.run(ddp_command(model, compile_, nproc, *extra), cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {}), "GPU_BENCH_OUT": str(out)}, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"torchrun of {model} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"), key=lambda p: int(p.stem[4:]))]
    if [r["rank"] for r in ranks] != list(range(nproc)):
        raise RuntimeError(f"torchrun of {model}: results of ranks {[r['rank'] for r in ranks]}, not 0-{nproc - 1}")
    return ranks


def aggregate(ranks, single=None):
    """The node's figures from its ranks' results: samples/s of the global batch at the slowest
    rank's step time, the mean split, the communication and data-wait shares, the scaling
    efficiency against ``single`` (one GPU's result of the same configuration), and whether
    every rank ended with the same parameters (DDP kept them in step)."""
    world = len(ranks)
    step_ms = max(r["step_ms"] for r in ranks)
    out = {"model": ranks[0]["model"], "compile": ranks[0]["compile"], "batch": ranks[0]["batch"],
           "device": ranks[0]["device"], "world": world, "step_ms": step_ms,
           "samples_per_s": world * ranks[0]["batch"] * 1000 / step_ms,
           "in_step": len({r["params"] for r in ranks}) == 1}
    if all("split_ms" in r for r in ranks):
        out["split_ms"] = {k: sum(r["split_ms"][k] for r in ranks) / world for k in ranks[0]["split_ms"]}
    if all(r.get("comm_ms") is not None for r in ranks):
        out["comm_ms"] = sum(r["comm_ms"] for r in ranks) / world
        out["comm_share"] = out["comm_ms"] / step_ms
    if all("data_wait_ms" in r for r in ranks):
        out["workers"] = ranks[0]["workers"]
        out["data_wait_share"] = sum(r["data_wait_ms"] for r in ranks) / world / step_ms
    if all(r.get("mfu") is not None for r in ranks):
        out["mfu"] = ranks[0]["tflops_per_step"] * 1e12 / (step_ms / 1000) / 1e12 / peak_tflops(ranks[0]["device"])
    if single is not None:
        out["scaling"] = out["samples_per_s"] / (world * single["samples_per_s"])
    return out


# --- the section ----------------------------------------------------------------------------------

def _row(r, label):
    s = r.get("split_ms")
    split = f"{s['forward']:.1f} / {s['backward']:.1f} / {s['optimizer']:.1f} ms" if s else ""
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "(peak unknown)"
    comm = f"{100 * r['comm_share']:.1f}%" if r.get("comm_share") is not None else ""
    scaling = f"{100 * r['scaling']:.0f}%" if r.get("scaling") is not None else ""
    return (f"| {r['model']} | {'yes' if r['compile'] else 'no'} | {label} | {r['samples_per_s']:,.0f} | "
            f"{r['step_ms']:.1f} ms | {split} | {comm} | {mfu} | {scaling} |")


def benchmarks(workdir):
    global ABOUT
    if not torch.cuda.is_available():
        print("  gpu: no CUDA device on this machine: nothing measured (the section keeps its earlier figures)")
        return []
    ABOUT = section(workdir)
    return []


def section(workdir, device="cuda", gpus=None, models=MODELS, compiles=(False, True), batch=BATCH, steps=STEPS,
            warmup=WARMUP, image=DATA_IMAGE):
    """Every measurement of the section and its text (the GPU table, then the fed one); gpu.json
    in ``workdir`` keeps every figure. On the CPU (tests) with ``device="cpu"`` and ``gpus`` ranks."""
    from bench.bench_train import write_pool_shards

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cuda = device == "cuda"
    gpus = gpus or torch.cuda.device_count()
    sizes = ["--batch", batch, "--steps", steps, "--warmup", warmup, "--device", device]
    configs = [(name, c) for name in models for c in compiles]
    single = {cfg: measure(*cfg, batch=batch, steps=steps, device=device, warmup=warmup) for cfg in configs}
    if cuda:
        torch.cuda.empty_cache()    # the ranks below share GPU 0 with this process
    node = {}
    if gpus > 1:
        for cfg in configs:
            node[cfg] = aggregate(run_ddp(cfg[0], cfg[1], gpus, workdir / f"ddp-{cfg[0]}-{cfg[1]}", *sizes),
                                  single[cfg])
    # The real loader: enough samples for every rank's steps at the default worker count per GPU.
    workers1, workers_n = workers_per_process(1), workers_per_process(gpus)
    n = max(need_samples(1, workers1, batch, warmup + steps), need_samples(gpus, workers_n, batch, warmup + steps))
    shards = workdir / "shards"
    _, kb = write_pool_shards(shards, *image, n_samples=n, n_shards=min(n, max(64, 4 * gpus * workers_n)))
    fed = {}
    for name in models:
        fed[(name, 1)] = measure_loader(name, str(shards), batch=batch, steps=steps, device=device, warmup=warmup,
                                        workers=workers1)
        fed[(name, 1)].pop("keys")
        if cuda:
            torch.cuda.empty_cache()
        if gpus > 1:
            ranks = run_ddp(name, False, gpus, workdir / f"data-{name}", *sizes, "--data", shards)
            fed[(name, gpus)] = aggregate(ranks, fed[(name, 1)])

    lines = ["| model | torch.compile | GPUs | samples/s | step | forward / backward / optimizer | "
             "all-reduce share | MFU | scaling |", "|---|---|---|---|---|---|---|---|---|"]
    for cfg in configs:
        lines.append(_row(single[cfg], "1"))
        if cfg in node:
            lines.append(_row(node[cfg], str(gpus)))
    data_lines = ["| model | GPUs | loader workers per GPU | samples/s | step | data wait | scaling |",
                  "|---|---|---|---|---|---|---|"]
    for (name, g), r in fed.items():
        scaling = f"{100 * r['scaling']:.0f}%" if r.get("scaling") is not None else ""
        data_lines.append(f"| {name} | {g} | {r['workers']} | {r['samples_per_s']:,.0f} | {r['step_ms']:.1f} ms | "
                          f"{100 * r['data_wait_share']:.0f}% | {scaling} |")
    rows = {"one_gpu": list(single.values()), "node": list(node.values()), "fed": list(fed.values())}
    (workdir / "gpu.json").write_text(json.dumps(rows, indent=1))
    return (f"{gpus} x {single[configs[0]]['device']}, {'bf16 autocast' if cuda else 'fp32'}, batch {batch} per "
            f"GPU, TF32 on, fused AdamW, channels_last for RN50; mean of {steps} steps after {warmup}. Synthetic "
            f"batches on the device: MFU against the dense bf16 peak of the data sheet; on all GPUs under DDP "
            f"(torchrun), the all-reduce share is the backward's extra time over the same steps under no_sync, the "
            f"scaling is samples/s over GPUs x one GPU's.\n\n" + "\n".join(lines) + "\n\n"
            f"Fed by clipforge's loader over {n:,} photo-like {image[0]}x{image[1]} JPEGs (~{kb:.0f} kB, as the "
            f"shard stage stores them), the trainer's default loader workers for the CPUs ({os.cpu_count()} on this "
            f"node), pinned memory, no torch.compile; each step synchronised, the data wait is the time spent in "
            f"the loader's next():\n\n" + "\n".join(data_lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_gpu", description="one configuration of the GPU benchmark")
    p.add_argument("model")
    p.add_argument("compile", nargs="?", choices=["compile"])
    p.add_argument("--data", help="shards: feed the steps from the real loader and measure the data wait")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--warmup", type=int, default=WARMUP)
    p.add_argument("--workers", type=int, help="loader workers (default: the trainer's, from the CPUs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    kw = dict(batch=a.batch, steps=a.steps, device=a.device, warmup=a.warmup)
    r = (measure_loader(a.model, a.data, a.compile == "compile", workers=a.workers, **kw) if a.data
         else measure(a.model, a.compile == "compile", **kw))
    print(json.dumps({k: v for k, v in r.items() if k != "keys"}))
    if os.environ.get("GPU_BENCH_OUT"):
        out = Path(os.environ["GPU_BENCH_OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{r['rank']}.json").write_text(json.dumps(r))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":  # one configuration, e.g. under torchrun: python -m bench.bench_gpu ViT-B-32 [compile]
    main()
