"""Downloading and sharding: clipforge shard against img2dataset, same pairs, same server.

nginx (Debian's package) serves a folder of photo-like JPEGs on 127.0.0.1, so the server is
not the bottleneck; both tools resize to 256 px (keep ratio), encode JPEG quality 95, write
WebDataset shards, and run 2 processes with 32 threads each. CPU seconds per image are the
user+system time of each tool's whole process tree. Three sets: 800x600, 1600x1200, and sizes
as the web serves them (300 to 1,900 px a side, most under 1,000). Beside the speed, the
quality of each tool's images: PSNR against a high-quality reference (Pillow's full decode,
EXIF orientation applied, LANCZOS to the same size, JPEG at the same quality).
"""

import atexit
import io
import json
import math
import random
import tarfile
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from bench.harness import Comparison

CLI = str(Path(sys.executable).with_name("clipforge"))
IMG2DATASET = str(Path(sys.executable).with_name("img2dataset"))
N_IMAGES = 6_000
N_BASE = 300  # distinct scenes; each image is a distinct crop, flip and re-encode of one
SETS = ("800x600", "1600x1200", "varied")
QUALITY_SAMPLE = 400  # images per tool compared with the reference

ABOUT = """\
Where a shard worker's time goes (issue 16), measured with py-spy (250 Hz, `--subprocesses`) on
the varied set, one Beam worker (`--direct_num_workers=1`, 32 transfers, 2 image threads), as a
share of the worker process's samples, 2026-11-28:

- Before: HTTP through urllib3 from 32 Python threads took about half of the samples (the pool's
  lock, socket reads, threads waiting for the GIL); fetch alone cost 1.52 ms of CPU per image on
  loopback. Start-up cost 12 s of wall time for a 6-pair run, 2.4 s of it in each process
  importing torch, because `import webdataset` imports it.
- Changes: shards are written with the standard library's tarfile (no torch import: a 6-pair run
  now takes 6 s); libcurl's multi interface (pycurl) drives all transfers of a worker from one
  thread (0.26 ms of CPU per image) and hands bodies to image threads, which release the GIL in
  libjpeg-turbo and OpenCV; bilinear instead of bicubic after the scaled decode (cheaper and
  1.5 dB closer to the reference on 800x600).
- After: JPEG decode 23%, the perceptual hash added for issue 17 10% (since halved: np.median
  replaced by a sort), JPEG encode 5%, resize 5%, tar writing 3%, Pillow's header and EXIF read
  2%, libcurl and its callbacks 2%; hand-offs between the fetch loop and the image threads
  (semaphore, GIL) about 20%; Beam's harness, gRPC and start-up imports about 15%. The decode is
  mostly entropy decoding, which a scaled decode does not shrink: decoding a 145 kB 800x600 JPEG
  at half size costs 2.7 ms, at full size 2.8 ms.
"""


def photo_like(rng, w=800, h=600):
    """A smooth gradient with shapes, blur and noise: compresses like a photo (~100 kB)."""
    img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = rng.randrange(w), rng.randrange(h)
        r = rng.randrange(20, 200)
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    img = img.filter(ImageFilter.GaussianBlur(6))
    noise = Image.effect_noise((w, h), 40).convert("RGB")
    return Image.blend(img, noise, 0.18)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    def __init__(self, root, workdir):
        self.root, self.workdir, self.port = root, workdir, _free_port()

    def __enter__(self):
        conf = self.workdir / "nginx.conf"
        conf.write_text(f"""
worker_processes 2;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/nginx-error.log;
daemon off;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  keepalive_requests 100000;
  types {{ image/jpeg jpg; }}
  client_body_temp_path {self.workdir}/tmp;
  proxy_temp_path {self.workdir}/tmp;
  fastcgi_temp_path {self.workdir}/tmp;
  uwsgi_temp_path {self.workdir}/tmp;
  scgi_temp_path {self.workdir}/tmp;
  server {{ listen 127.0.0.1:{self.port}; root {self.root}; }}
}}
""")
        (self.workdir / "tmp").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGQUIT)
        self.proc.wait(timeout=10)


def _cpu_of(argv):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def benchmarks(workdir):
    if not shutil.which("nginx"):
        print("  skipped: nginx is not installed (apt-get install nginx-light)")
        return []
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "www"
    root.mkdir(exist_ok=True)
    nginx = Nginx(root, workdir).__enter__()
    atexit.register(nginx.__exit__, None, None, None)
    return [_comparison(workdir, root, nginx.port, name) for name in SETS]


def _varied_size(rng):
    """A web image's size: the longer side log-normal around 700 px, 300 to 1,900; aspect 1 to 1.8,
    landscape more often than portrait."""
    long = int(min(1900, max(300, rng.lognormvariate(math.log(700), 0.45))))
    short = int(long / rng.uniform(1.0, 1.8))
    return (long, short) if rng.random() < 0.65 else (short, long)


def _make_set(sub, name, rng):
    sub.mkdir(exist_ok=True)
    if name == "varied":
        scenes = [photo_like(rng, 2000, 2000) for _ in range(N_BASE // 10)]
        for i in range(N_IMAGES):
            w, h = _varied_size(rng)
            x, y = rng.randrange(2000 - w + 1), rng.randrange(2000 - h + 1)
            img = scenes[i % len(scenes)].crop((x, y, x + w, y + h))
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            img.save(sub / f"{i:05d}.jpg", "JPEG", quality=rng.choice((65, 72, 80)))
        return "photo-like JPEGs of web sizes (300-1,900 px a side, most under 1,000)"
    w, h = map(int, name.split("x"))
    scenes = [photo_like(rng, w + w // 4, h + h // 4) for _ in range(N_BASE)]
    for i in range(N_IMAGES):
        x, y = rng.randrange(w // 4), rng.randrange(h // 4)
        img = scenes[i % N_BASE].crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img.save(sub / f"{i:05d}.jpg", "JPEG", quality=rng.choice((85, 90, 92)))
    return f"photo-like {w}x{h} JPEGs"


def _samples(out_dir):
    """(url, jpg bytes) of the images in a folder of WebDataset tars (either tool's)."""
    for tar in sorted(out_dir.glob("*.tar")):
        with tarfile.open(tar) as tf:
            members = {}
            for m in tf.getmembers():
                key, _, ext = m.name.rpartition(".")
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
            for parts in members.values():
                if "jpg" in parts and "json" in parts:
                    yield json.loads(parts["json"])["url"], parts["jpg"]


def _decode(jpg):
    return np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"), dtype=np.float64)


def quality(out_dir, root, base, quality_=95, sample=QUALITY_SAMPLE):
    """Mean PSNR (dB) of a tool's images against the reference resize of their sources."""
    scores = []
    for url, jpg in _samples(out_dir):
        got = _decode(jpg)
        src = ImageOps.exif_transpose(Image.open(root / url[len(base) + 1:])).convert("RGB")
        ref = io.BytesIO()
        src.resize((got.shape[1], got.shape[0]), Image.LANCZOS).save(ref, "JPEG", quality=quality_)
        mse = np.mean((got - _decode(ref.getvalue())) ** 2)
        scores.append(10 * math.log10(255 ** 2 / max(mse, 1e-12)))
        if len(scores) >= sample:
            break
    return sum(scores) / len(scores)


def _comparison(workdir, root, port, name):
    rng = random.Random(7 if name == "varied" else int(name.split("x")[0]))
    what = _make_set(root / name, name, rng)
    kb = sum(p.stat().st_size for p in (root / name).iterdir()) / N_IMAGES / 1000
    base = f"http://127.0.0.1:{port}/{name}"
    pairs = workdir / f"pairs-{name}"
    pairs.mkdir(exist_ok=True)
    pq.write_table(pa.table({"url": [f"{base}/{i:05d}.jpg" for i in range(N_IMAGES)],
                             "text": [f"a photo number {i}" for i in range(N_IMAGES)]}), pairs / "pairs-00000.parquet")
    ours_out, peer_out = workdir / f"ours-{name}", workdir / f"i2d-{name}"
    ours = [CLI, "shard", "--pairs", str(pairs), "--out", str(ours_out), "--allow-private-hosts",
            "--image-size", "256", "--resize-mode", "keep_ratio", "--min-size", "0", "--threads", "32",
            "--per-host", "64", "--samples-per-shard", "1000", "--direct_num_workers=2"]
    peer = [IMG2DATASET, "--url_list", str(pairs), "--input_format", "parquet", "--url_col", "url",
            "--caption_col", "text", "--output_format", "webdataset", "--output_folder", str(peer_out),
            "--processes_count", "2", "--thread_count", "32", "--image_size", "256", "--resize_mode", "keep_ratio",
            "--encode_quality", "95", "--number_sample_per_shard", "1000", "--enable_wandb", "False",
            "--distributor", "multiprocessing", "--timeout", "10"]

    def clean():
        shutil.rmtree(ours_out, ignore_errors=True)
        shutil.rmtree(peer_out, ignore_errors=True)

    def verify(side):  # a run that fetched nothing must not count as fast
        if side == "ours":
            got = json.loads((ours_out / "shard_stats.json").read_text())["kept"]
        else:
            got = sum(json.loads(p.read_text())["successes"] for p in peer_out.glob("*_stats.json"))
        if got != N_IMAGES:
            raise RuntimeError(f"{side} produced {got} of {N_IMAGES} images ({name})")

    clean()
    cpu_ours = _cpu_of(ours) / N_IMAGES * 1000
    q_ours = quality(ours_out, root / name, base)
    cpu_peer = _cpu_of(peer) / N_IMAGES * 1000
    q_peer = quality(peer_out, root / name, base)
    print(f"  {name}: CPU ms per image, whole process tree: clipforge {cpu_ours:.2f}, img2dataset {cpu_peer:.2f}; "
          f"PSNR against the reference resize: clipforge {q_ours:.2f} dB, img2dataset {q_peer:.2f} dB")
    return Comparison(
        name=f"shard: fetch + resize + write, {name} sources", ours=ours, peer=peer, peer_name="img2dataset 1.47",
        items=N_IMAGES, unit="images",
        input=f"{N_IMAGES:,} {what} (~{kb:.0f} kB) from nginx on 127.0.0.1",
        repeats=2, setup=clean, verify=verify,
        notes=(f"both: 2 processes x 32 threads, 256 px keep-ratio, JPEG q95, 1,000 samples per shard, whole "
               f"command timed including start-up. CPU time per image (start-up included): clipforge "
               f"{cpu_ours:.2f} ms, img2dataset {cpu_peer:.2f} ms. Quality, mean PSNR over {QUALITY_SAMPLE} "
               f"images against the reference resize (Pillow full decode, LANCZOS, JPEG q95): clipforge "
               f"{q_ours:.2f} dB, img2dataset {q_peer:.2f} dB. clipforge decodes JPEGs with libjpeg-turbo at "
               f"the smallest n/8 scale at least the target size and resamples with OpenCV (bilinear for "
               f"the factor under 2x that is left); img2dataset decodes at full size and resamples by area."))
