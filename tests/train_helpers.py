"""Small WebDataset shards of the demo world's concepts, written directly (no crawl, no server)."""

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import webdataset as wds

from clipforge.demo import captions, concepts

ROOT = Path(__file__).resolve().parents[1]
CLIPFORGE = [sys.executable, "-m", "clipforge"]


def jpeg(attrs, rng, size=64) -> bytes:
    buf = io.BytesIO()
    concepts.draw(attrs, rng, size, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_shards(out: Path, n_shards: int = 4, per_shard: int = 96, seed: int = 0, extra=None) -> Path:
    """Shards of (KEY.jpg, KEY.txt, KEY.json) with English captions, plus sizes.json.

    `extra(shard_index, writer)` may add more (for example broken) samples to a shard.
    """
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sizes = {}
    key = 0
    for s in range(n_shards):
        name = f"{s:06d}.tar"
        with wds.TarWriter(str(out / name)) as w:
            n = 0
            for _ in range(per_shard):
                attrs = concepts.sample_attributes(rng)
                text = captions.english(attrs, rng)
                w.write({"__key__": f"{key:012d}", "jpg": jpeg(attrs, rng), "txt": text,
                         "json": json.dumps({"key": f"{key:012d}", "caption": text, **attrs}).encode()})
                key += 1
                n += 1
            if extra is not None:
                n += extra(s, w)
        sizes[name] = n
    (out / "sizes.json").write_text(json.dumps(sizes))
    return out


def write_heldout(out: Path, per_class: int = 2, seed: int = 1) -> Path:
    """An ImageFolder tree of the shapes (OUT/<shape>/<n>.jpg), as the demo world's held-out set."""
    rng = random.Random(seed)
    for shape in concepts.SHAPES:
        (out / shape).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            (out / shape / f"{j}.jpg").write_bytes(jpeg(concepts.sample_attributes(rng, shape=shape), rng))
    return out


# --- runs of `clipforge train` in a subprocess ----------------------------------------------------

def run_train(args, env=None, check=True):
    proc = subprocess.run(CLIPFORGE + ["train"] + args, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def metrics(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def kill_after_step(args, out, step, timeout=600):
    """Start `clipforge train ARGS` and SIGKILL its whole process group as soon as its
    metrics.jsonl logs `step` (read from outside, as an operator would see it). Returns the exit
    status and the last step logged when it died."""
    metrics_file, log = Path(out) / "metrics.jsonl", Path(f"{out}.log")
    with open(log, "w") as f:
        proc = subprocess.Popen(CLIPFORGE + ["train"] + args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            lines = (metrics_file.read_text() if metrics_file.exists() else "").split("\n")[:-1]   # whole lines only
            if lines and json.loads(lines[-1])["step"] >= step:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            assert proc.poll() is None, f"the run ended before step {step}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"step {step} not reached in {timeout} s"
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    return proc.returncode, metrics(out)[-1]["step"]
