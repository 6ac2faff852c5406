"""Loader throughput against worker count (issue 19): how many CPU cores feed a GPU.

clipforge's loader (``clipforge.trainer.data.make_loader``: draft-mode JPEG decode, one
crop-and-resize call, uint8 between processes, normalised in the main process) and open_clip's
WebDataset pipeline (``peer_openclip_loader``) side by side, for 0 loader workers (decoding in the
main process), 1, 2, 4, ... up to the CPUs this process may use; each run is one epoch over the
same shards, worker start-up included, at batch 128 with a 224 px random resized crop. Two kinds
of shards: photo-like 341x256 JPEGs (what clipforge's shard stage stores: the shorter side made
256) and 640x480 ones.

The section's text gives samples/s per worker count, the rate of one worker (one core decoding),
and how many such cores an H100 needs at ViT-B/32: batch 256 per step, the step's FLOPs counted
by torch's FLOP counter on the real model (``bench_gpu.flops_per_step``, on the meta device) at
40% of the H100's dense bf16 peak (the 25-30 ms a step the issue estimates). The figure
``bench/loader.png`` plots the rates.
"""

import os
import statistics
import time
from pathlib import Path

import torch

from bench.bench_train import write_pool_shards
from bench.harness import Comparison
from bench.peer_openclip_loader import openclip_loader
from clipforge.trainer.data import DataConfig, make_loader, normalize_images
from clipforge.trainer.tokenizer import Tokenizer, train_bpe

ABOUT = None
BATCH = 128
SIZES = ((341, 256), (640, 480))
H100_MFU = 0.4
PLOT = Path(__file__).resolve().parent / "loader.png"


def cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def worker_counts(n):
    """0, 1, 2, 4, ... and ``n`` itself: the curve's shape without a run at every count."""
    counts, w = [0], 1
    while w < n:
        counts.append(w)
        w *= 2
    return counts + [n]


def samples_for(max_workers):
    """An epoch long enough that every worker decodes many batches (start-up stays small)."""
    return max(2048, 8 * BATCH * max_workers)


def h100_rate():
    """Samples/s an H100 trains ViT-B/32 at, batch 256, at ``H100_MFU`` of its dense bf16 peak."""
    from bench.bench_gpu import PEAK_BF16_TFLOPS, flops_per_step
    from clipforge.trainer.model import CLIP, model_config

    with torch.device("meta"):
        model = CLIP(model_config("ViT-B-32"))
    flops = flops_per_step(model, 256, "meta")
    step_s = flops / (H100_MFU * PEAK_BF16_TFLOPS["H100"] * 1e12)
    return 256 / step_s, flops, step_s


def epoch_clipforge(urls, tokenizer, workers):
    cfg = DataConfig(urls, BATCH, 224, seed=0, workers=workers, shuffle_buffer=1000)
    n = 0
    for item in make_loader(cfg, tokenizer, 0):
        if item["images"] is not None:
            images = normalize_images(item["images"])
            n += images.shape[0]
            assert images.dtype == torch.float32 and images.shape[1:] == (3, 224, 224)
    return n


def epoch_openclip(urls, tokenizer, workers):
    n = 0
    for images, texts in openclip_loader(urls, tokenizer, BATCH, workers):
        n += images.shape[0]
        assert images.shape[1:] == (3, 224, 224) and texts.shape[0] == images.shape[0]
    return n


class Curve:
    """Timings of both loaders at every (size, worker count), kept by the runs themselves so the
    section's text and figure can be redrawn after each one."""

    def __init__(self, n_samples, sizes=SIZES, plot=PLOT):
        self.n, self.sizes, self.plot_path = n_samples, sizes, plot
        self.times = {}       # (size, workers, side) -> [seconds]
        self.seen = {}        # (size, workers, side) -> samples of the last run
        self.loads = []       # 1-minute load average before each run: other work on the machine shows here

    def timed(self, key, fn):
        def run():
            self.loads.append(load_average())
            t = time.perf_counter()
            count = fn()
            self.times.setdefault(key, []).append(time.perf_counter() - t)
            self.seen[key] = count
        return run

    def rate(self, size, workers, side):
        t = self.times.get((size, workers, side))
        return self.n / statistics.median(t) if t else None

    def table(self, size, counts):
        rows = ["| loader workers | clipforge samples/s | per worker | open_clip's pipeline samples/s | per worker |",
                "|---|---|---|---|---|"]
        for w in counts:
            ours, peer = self.rate(size, w, "ours"), self.rate(size, w, "peer")
            if ours is None or peer is None:
                continue
            per = (lambda r: f"{r / w:,.0f}" if w else "(main process)")
            rows.append(f"| {w} | {ours:,.0f} | {per(ours)} | {peer:,.0f} | {per(peer)} |")
        return rows

    def redraw(self):
        global ABOUT
        ABOUT = self.text()
        self.plot()

    def text(self):
        counts = sorted({w for (_, w, _) in self.times})
        need, flops, step_s = h100_rate_cached()
        lines = [f"Samples/s of one epoch over {self.n:,} samples (batch {BATCH}, 224 px random resized crop, "
                 f"CLIP normalisation, BPE tokens; worker start-up included) against loader worker processes, "
                 f"on this machine's {cpus()} cores; each row of the table below is one worker count, ratio "
                 f"= open_clip's time / clipforge's. The 1-minute load average before the runs ranged "
                 f"{min(self.loads):.1f}-{max(self.loads):.1f} (the runs' own work included). "
                 f"![loader throughput against workers](bench/loader.png)", ""]
        for size in self.sizes:
            one, peer_one = self.rate(size, 1, "ours"), self.rate(size, 1, "peer")
            if one is None or peer_one is None:
                continue
            label = f"{size[0]}x{size[1]}"
            lines += [f"{label} JPEGs:", ""] + self.table(size, counts) + [""]
            lines.append(f"- one core decoding ({label}, one worker): clipforge {one:,.0f} samples/s, open_clip's "
                         f"pipeline {peer_one:,.0f}; an H100 at ViT-B/32 (batch 256, {flops / 1e12:.1f} TFLOP a step, "
                         f"{1000 * step_s:.0f} ms at {100 * H100_MFU:.0f}% of its bf16 peak) takes {need:,.0f} "
                         f"samples/s: about **{need / one:.0f} such cores for clipforge's loader** "
                         f"({need / peer_one:.0f} for open_clip's), with the training process's own core on top, "
                         f"or GPU decoding (nvJPEG, DALI)")
            lines.append("")
        return "\n".join(lines)

    def plot(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(self.sizes), figsize=(4.2 * len(self.sizes), 3.2), squeeze=False)
        for ax, size in zip(axes[0], self.sizes):
            for side, label, color in (("ours", "clipforge", "#264653"), ("peer", "open_clip's pipeline", "#e76f51")):
                pts = sorted((w, self.rate(size, w, side)) for (s, w, sd) in self.times if s == size and sd == side)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=label)
            ax.set_title(f"{size[0]}x{size[1]} JPEGs -> 224 px, batch {BATCH}", fontsize=9)
            ax.set_xlabel("loader worker processes")
            ax.set_ylabel("samples/s")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        fig.suptitle(f"loader throughput against workers ({cpus()} cores)", fontsize=10)
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=90)
        plt.close(fig)


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


_H100 = {}


def h100_rate_cached():
    if "rate" not in _H100:
        _H100["rate"] = h100_rate()
    return _H100["rate"]


def benchmarks(workdir, max_workers=None, sizes=SIZES, repeats=3, plot=PLOT):
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    counts = worker_counts(max_workers or cpus())
    n = samples_for(max(counts))
    tokenizer = Tokenizer(train_bpe([f"a photo of scene {i} with some circles, number {i}" for i in range(500)],
                                    vocab_size=2000), 77)
    curve = Curve(n, sizes, plot)
    out = []
    for w, h in sizes:
        t = time.time()
        urls, kb = write_pool_shards(workdir / f"{w}x{h}", w, h, n_samples=n, n_shards=max(16, 2 * max(counts)))
        print(f"  {w}x{h}: {n:,} samples in {len(urls)} shards written in {time.time() - t:.0f} s", flush=True)
        for k in counts:
            def verify(side, key=((w, h), k)):
                got = curve.seen[key + (side,)]
                # each worker (or the main process) leaves out at most its last partial batch
                assert n - max(1, k) * BATCH <= got <= n, (side, got, n)
                curve.redraw()      # after the timed call: the text and figure so far

            out.append(Comparison(
                name=f"loader, {k} worker{'s' if k != 1 else ''}: {w}x{h} JPEGs -> 224 px",
                ours=curve.timed(((w, h), k, "ours"), lambda k=k, urls=urls: epoch_clipforge(urls, tokenizer, k)),
                peer=curve.timed(((w, h), k, "peer"), lambda k=k, urls=urls: epoch_openclip(urls, tokenizer, k)),
                peer_name="open_clip's WebDataset pipeline", items=n, unit="samples", verify=verify,
                input=f"{n:,} photo-like {w}x{h} JPEGs (~{kb:.0f} kB) in {len(urls)} shards", repeats=repeats,
                notes=("" if k else f"every row of {w}x{h}: batch {BATCH}, one epoch, worker start-up included "
                       f"(0 workers: decoding in the main process); clipforge balances the shards' samples over its "
                       f"workers (sizes.json), open_clip's pipeline deals them whole shards")))
    return out
