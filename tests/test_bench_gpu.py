"""The GPU benchmark's CPU-side parts: FLOP counting of a real training step, the step split,
the peak table, and a plain "nothing measured" without CUDA."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_gpu  # noqa: E402
from clipforge.trainer.model import CLIP, model_config  # noqa: E402


def test_flops_of_a_step_grow_with_the_batch_and_match_the_linear_layers():
    torch.manual_seed(0)
    model = CLIP(model_config("tiny"))
    f8, f16 = bench_gpu.flops_per_step(model, 8), bench_gpu.flops_per_step(model, 16)
    assert f8 > 0 and f16 == pytest.approx(2 * f8, rel=0.02)  # the loss's n x n logits are the small rest
    # a lower bound from the text tower's linear layers alone: 3 x (2 x tokens x in x out) for
    # forward and backward, 4 per block (qkv, out, two MLP layers)
    t = model.config.text
    tokens = 8 * t.context_length
    per_block = 2 * tokens * (t.width * 3 * t.width + t.width * t.width + 2 * t.width * 4 * t.width)
    assert f8 > 3 * t.layers * per_block


def test_step_split_on_the_cpu_and_the_peaks():
    torch.manual_seed(0)
    model = CLIP(model_config("tiny"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    split, rate, step_s = bench_gpu.step_split(model, opt, 4, 2, "cpu", torch.float32, warmup=1)
    assert set(split) == {"forward", "backward", "optimizer"} and all(v > 0 for v in split.values())
    assert sum(split.values()) <= step_s * 1.05 and rate == pytest.approx(4 / step_s, rel=0.05)
    assert bench_gpu.peak_tflops("NVIDIA H200") == 989.4 and bench_gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench_gpu.peak_tflops("Some Future GPU") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_nothing_is_measured(tmp_path, capsys):
    assert bench_gpu.benchmarks(tmp_path) == [] and bench_gpu.ABOUT is None
    assert "no CUDA device" in capsys.readouterr().out


def test_the_node_run_is_torchrun_of_the_one_configuration_entry_point():
    cmd = bench_gpu.ddp_command("ViT-B-32", True, 8, "--data", "/shards")
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc_per_node=8" in cmd
    i = cmd.index("bench.bench_gpu")
    assert cmd[i - 1] == "-m" and cmd[i + 1:] == ["ViT-B-32", "compile", "--data", "/shards"]
    assert bench_gpu.ddp_command("RN50", False, 2)[-1] == "RN50"


def test_the_ranks_add_up_to_the_node():
    """The slowest rank sets the node's step; scaling is against GPUs x one GPU's samples/s; the
    shares are of that step; parameters that differ between ranks are reported."""
    def rank(r, step, comm, params="a"):
        return {"model": "ViT-B-32", "compile": False, "batch": 256, "device": "NVIDIA H100 80GB HBM3", "rank": r,
                "world": 2, "step_ms": step, "samples_per_s": 256_000 / step, "comm_ms": comm, "params": params,
                "split_ms": {"forward": 10.0, "backward": 20.0 + r, "optimizer": 2.0}, "tflops_per_step": 11.0,
                "mfu": 0.4}

    node = bench_gpu.aggregate([rank(0, 100.0, 4.0), rank(1, 110.0, 6.0)], single={"samples_per_s": 2560.0})
    assert node["world"] == 2 and node["step_ms"] == 110.0
    assert node["samples_per_s"] == pytest.approx(2 * 256 / 0.110)
    assert node["scaling"] == pytest.approx(2 * 256 / 0.110 / (2 * 2560.0))
    assert node["comm_share"] == pytest.approx(5.0 / 110.0) and node["split_ms"]["backward"] == 20.5
    assert node["mfu"] == pytest.approx(11.0 / 0.110 / 989.4) and node["in_step"]
    assert not bench_gpu.aggregate([rank(0, 100.0, 4.0), rank(1, 100.0, 4.0, params="b")])["in_step"]
    assert bench_gpu.need_samples(world=2, workers=3, batch=4, steps=7) == 2 * 3 * (3 + 1) * 4


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """Photo-like JPEGs in shards with sizes.json, written as the benchmark writes them, holding
    just enough samples for 2 ranks x 2 workers x 3 steps of 4."""
    from bench.bench_train import write_pool_shards

    out = tmp_path_factory.mktemp("gpu-bench-shards")
    n = bench_gpu.need_samples(world=2, workers=2, batch=4, steps=3)
    urls, _ = write_pool_shards(out, 80, 60, n_samples=n, n_shards=6, pool=8)
    assert len(urls) == 6
    return out, n


def test_steps_fed_by_the_real_loader_account_for_the_data_wait(small_shards):
    """One process, two real loader workers: the wait is part of each step and the steps trained
    on distinct samples of the shards (the loader's, not synthetic batches)."""
    from webdataset.tariterators import tarfile_samples

    shards, _ = small_shards
    r = bench_gpu.measure_loader("tiny", str(shards), batch=4, steps=2, warmup=1, device="cpu", workers=2)
    assert r["world"] == 1 and r["workers"] == 2
    assert 0 < r["data_wait_ms"] <= r["step_ms"]
    assert r["data_wait_share"] == pytest.approx(r["data_wait_ms"] / r["step_ms"])
    assert r["samples_per_s"] == pytest.approx(4 * 1000 / r["step_ms"])
    assert len(r["keys"]) == 2 * 4 == len(set(r["keys"]))
    in_shards = {s["__key__"] for s in tarfile_samples([{"url": str(p)} for p in sorted(shards.glob("*.tar"))])}
    assert set(r["keys"]) <= in_shards


@pytest.mark.slow
def test_all_gpus_of_a_node_under_ddp_with_two_gloo_ranks(small_shards, tmp_path):
    """The node path for real on the CPU: torchrun starts two ranks of the entry point (gloo),
    synthetic batches and then the real loader; each rank reports, DDP kept the parameters equal
    although the ranks trained on different batches, and the loader's ranks read disjoint samples."""
    shards, n = small_shards
    common = ["--batch", "4", "--warmup", "1"]
    env = {"OMP_NUM_THREADS": "1"}
    ranks = bench_gpu.run_ddp("tiny", False, 2, tmp_path / "synthetic", *common, "--steps", "2", env=env)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 and r["comm_ms"] >= 0 for r in ranks)
    single = bench_gpu.measure("tiny", False, batch=4, steps=2, warmup=1, device="cpu")
    assert single["params"] != ranks[0]["params"]       # one process's steps end elsewhere
    node = bench_gpu.aggregate(ranks, single)
    assert node["in_step"] and node["world"] == 2 and 0 <= node["comm_share"] < 1 and node["scaling"] > 0

    ranks = bench_gpu.run_ddp("tiny", False, 2, tmp_path / "fed", *common, "--steps", "2", "--data", shards,
                              "--workers", "2", env=env)
    assert all(r["workers"] == 2 and len(r["keys"]) == 2 * 4 == len(set(r["keys"])) for r in ranks)
    assert not set(ranks[0]["keys"]) & set(ranks[1]["keys"])
    node = bench_gpu.aggregate(ranks)
    assert node["in_step"] and 0 < node["data_wait_share"] < 1 and node["workers"] == 2


@pytest.mark.slow
def test_the_whole_section_runs_on_the_cpu_with_two_ranks(tmp_path):
    """What `make bench ARGS=gpu` runs on a GPU node, end to end on the CPU at toy sizes: one
    process, two ranks under torchrun, shards written, the fed steps; the text has both tables
    with a row per configuration and node, and gpu.json every figure."""
    import json

    text = bench_gpu.section(tmp_path, device="cpu", gpus=2, models=("tiny",), compiles=(False,), batch=4, steps=1,
                             warmup=1, image=(80, 60))
    tables = [line for line in text.splitlines() if line.startswith("| tiny |")]
    assert len(tables) == 4, text           # synthetic: 1 and 2 ranks; fed: 1 and 2 ranks
    assert tables[0].split(" | ")[2] == "1" and tables[1].split(" | ")[2] == "2" and tables[1].endswith("% |")
    assert [t.split(" | ")[1] for t in tables[2:]] == ["1", "2"]
    got = json.loads((tmp_path / "gpu.json").read_text())
    assert got["node"][0]["in_step"] and got["fed"][1]["in_step"] and got["fed"][1]["world"] == 2
    sizes = json.loads((tmp_path / "shards" / "sizes.json").read_text())
    assert len(sizes) == len(list((tmp_path / "shards").glob("*.tar"))) and sum(sizes.values()) >= 2 * 2 * 4
