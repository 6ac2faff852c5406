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
