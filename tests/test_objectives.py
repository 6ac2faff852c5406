"""The paper's three objectives (contrastive, bag-of-words, captioning language model): each
learns on real shards through the same loader, checkpoints and exact resume, and the zero-shot
scorers of the predictive two are checked against models whose outputs are set by hand, with
the expected scores computed here from those weights (numpy, float64) and the tokenizer's ids."""

import json
import signal
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipforge.trainer.data import CLIP_MEAN, CLIP_STD, normalize_images
from clipforge.trainer.loss import bag_of_words, loss_units
from clipforge.trainer.model import BagOfWords, Captioner, CLIPConfig, TextConfig, VisionConfig, make_model
from clipforge.trainer.tokenizer import Tokenizer, train_bpe
from clipforge.trainer.train import backward_batch
from clipforge.trainer.zeroshot import ClassScorer, caption_prompt_scores, prompts, zero_shot_classify

from train_helpers import kill_after_step, metrics, run_train, write_heldout, write_shards

PALETTE = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20),
           "purple": (140, 40, 170), "orange": (250, 140, 10), "black": (10, 10, 10), "white": (245, 245, 245)}
NAMES = list(PALETTE)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), n_shards=4, per_shard=96)


@pytest.fixture(scope="module")
def tokenizer():
    text = [f"a photo of a {n} square on a plain background, a {n} photo." for n in NAMES] * 5
    tok = Tokenizer(train_bpe(text, vocab_size=700), 32)
    assert all(len(tok.encode(n)) == 1 for n in NAMES)   # each colour word is one token
    return tok


# --- hand-set models ---------------------------------------------------------------------------

class ColourTower(nn.Module):
    """An image tower whose output is known: `scale` x one-hot of the palette colour nearest to the
    image's mean colour (images are solid colours here)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.register_buffer("palette", torch.tensor([PALETTE[n] for n in NAMES], dtype=torch.float32))

    def forward(self, x):
        rgb = (x * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) * 255
        return self.scale * F.one_hot(torch.cdist(rgb.mean(dim=(2, 3)), self.palette).argmin(dim=1),
                                      len(NAMES)).float()


def solid_images(per_colour=2, size=32):
    images, labels = [], []
    for i, name in enumerate(NAMES):
        for _ in range(per_colour):
            images.append(torch.tensor(PALETTE[name], dtype=torch.uint8).view(3, 1, 1).expand(3, size, size))
            labels.append(i)
    return torch.stack(images), torch.tensor(labels)


def small_config(vocab_size):
    return CLIPConfig(len(NAMES), VisionConfig(32, 2, 64, 8), TextConfig(32, vocab_size, 16, 2, 2))


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


TEMPLATES = ("a photo of a {}.", "{}", "a {} square on a plain background.", "{} photo.")


# --- zero-shot scorers ---------------------------------------------------------------------------

def test_bow_scorer_is_the_prompts_log_likelihood_under_the_known_word_distribution(tokenizer):
    torch.manual_seed(0)
    model = BagOfWords(small_config(tokenizer.vocab_size))
    model.visual = ColourTower(1.0)
    v = tokenizer.vocab_size
    weight = torch.zeros(v, len(NAMES))
    for i, name in enumerate(NAMES):
        weight[tokenizer.encode(name)[0], i] = 3.0        # the image's colour word gets +3
    bias = torch.randn(v) * 0.5
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)
    model.eval()
    images, labels = solid_images()

    # Expected, from the weights set above: log p(word | colour i) = log_softmax(bias + 3 e_word(i)).
    log_p = log_softmax(bias.double().numpy()[None, :] + weight.double().numpy().T)   # [colours, vocab]
    expected = np.zeros((len(NAMES), len(NAMES)))   # [image colour, class]
    for c, name in enumerate(NAMES):
        for t in TEMPLATES:
            counts = Counter(tokenizer.encode(t.format(name)))
            expected[:, c] += sum(k * log_p[:, tok] for tok, k in counts.items()) / len(TEMPLATES)
    assert (expected.argmax(axis=1) == np.arange(len(NAMES))).all()

    got = ClassScorer(model, tokenizer, NAMES, TEMPLATES)(images)
    np.testing.assert_allclose(got.numpy(), expected[labels.numpy()], rtol=1e-5, atol=1e-4)
    result = zero_shot_classify(model, tokenizer, [(images, labels)], NAMES, TEMPLATES)
    assert result["top1"] == 1.0 and result["samples"] == len(labels)


def test_bag_of_words_target_counts_the_caption_tokens_only(tokenizer):
    captions = ["a red red square.", "", "!! a"]
    tokens = tokenizer(captions)
    want = torch.zeros(len(captions), tokenizer.vocab_size)
    for row, c in enumerate(captions):
        for tok, k in Counter(tokenizer.encode(c)).items():   # id 0 ("!") is a token like any other
            want[row, tok] = k
    assert torch.equal(bag_of_words(tokens, tokenizer.vocab_size, normalize=False), want)
    norm = bag_of_words(tokens, tokenizer.vocab_size)
    assert torch.allclose(norm[0].sum(), torch.tensor(1.0)) and norm[1].sum() == 0
    assert torch.equal(loss_units("caption", tokens), torch.tensor([len(tokenizer.encode(c)) + 1.0 for c in captions]))


def _known_captioner(tokenizer):
    """A captioning model whose next-token distribution is known: every Transformer block's output
    projections are zero (the blocks pass their input on), so position j's logits are
    lm_head(ln_final(token_embedding[id_j] + positional_embedding[j] + [j = 0] prefix)), and the
    prefix (image_prefix of the colour tower's one-hot) points the first token at the colour word."""
    torch.manual_seed(1)
    cfg = small_config(tokenizer.vocab_size)
    model = Captioner(cfg)
    model.visual = ColourTower(1.0)
    width = cfg.text.width
    with torch.no_grad():
        for block in model.transformer.resblocks:
            for layer in (block.attn.out_proj, block.mlp.c_proj):
                layer.weight.zero_()
                layer.bias.zero_()
        model.image_prefix.weight.copy_(torch.eye(width)[:, :len(NAMES)] * 8.0)   # colour i -> 8 e_i
        model.image_prefix.bias.zero_()
        head = torch.randn(tokenizer.vocab_size, width) * 0.3
        for i, name in enumerate(NAMES):
            head[tokenizer.encode(name)[0], i] += 4.0
        model.lm_head.weight.copy_(head)
    return model.eval()


def _expected_caption_scores(model, tokenizer, templates):
    """log p(prompt | colour) for every (colour, class), from the weights, in numpy."""
    emb = model.token_embedding.weight.detach().double().numpy()
    pos = model.positional_embedding.detach().double().numpy()
    prefix = model.image_prefix.weight.detach().double().numpy().T       # row i: colour i's prefix
    ln_w, ln_b = model.ln_final.weight.detach().double().numpy(), model.ln_final.bias.detach().double().numpy()
    head = model.lm_head.weight.detach().double().numpy()
    out = np.zeros((len(NAMES), len(NAMES)))
    for colour in range(len(NAMES)):
        for c, name in enumerate(NAMES):
            for t in templates:
                ids = [tokenizer.sot_id] + tokenizer.encode(t.format(name)) + [tokenizer.eot_id]
                h = emb[ids[:-1]] + pos[:len(ids) - 1]
                h[0] += prefix[colour]
                h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5) * ln_w + ln_b
                lp = log_softmax(h @ head.T)
                out[colour, c] += sum(lp[j, ids[j + 1]] for j in range(len(ids) - 1)) / len(templates)
    return out


def test_caption_scorer_is_the_prompts_log_likelihood_under_a_known_language_model(tokenizer):
    model = _known_captioner(tokenizer)
    templates = ("{}", "{} photo.", "a photo of a {}.")     # the image decides the first token only
    expected = _expected_caption_scores(model, tokenizer, templates)
    assert (expected.argmax(axis=1) == np.arange(len(NAMES))).all()
    images, labels = solid_images()
    got = ClassScorer(model, tokenizer, NAMES, templates)(images)
    np.testing.assert_allclose(got.numpy(), expected[labels.numpy()], rtol=1e-4, atol=1e-4)
    result = zero_shot_classify(model, tokenizer, [(images, labels)], NAMES, templates)
    assert result["top1"] == 1.0
    # One (image, prompt) row a pass gives the same scores as all at once.
    x, tokens = normalize_images(images), prompts(tokenizer, NAMES, templates)
    assert torch.allclose(caption_prompt_scores(model, x, tokens, logits_per_pass=1),
                          caption_prompt_scores(model, x, tokens), atol=1e-5)


# --- training ------------------------------------------------------------------------------------

@pytest.mark.parametrize("objective", ["bow", "caption"])
def test_accumulated_micro_batches_give_the_whole_batchs_loss_and_gradient(objective, tokenizer):
    """Without batch norm (a ViT tower): 4 micro-batches sum to the 16-sample batch's mean loss
    (per caption for bow, per predicted token for caption) and its gradient."""
    torch.manual_seed(0)
    model = make_model(small_config(tokenizer.vocab_size), objective)
    images = normalize_images(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8))
    texts = tokenizer([f"a {NAMES[i % 8]} square" + " on a plain background" * (i % 3) for i in range(16)])
    whole = backward_batch(model, images, texts, 1, objective=objective)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    parts = backward_batch(model, images, texts, 4, objective=objective)
    assert torch.allclose(whole, parts, atol=1e-5)
    for k, p in model.named_parameters():
        if k in grads:
            assert torch.allclose(p.grad, grads[k], atol=1e-6, rtol=1e-4), k
    # The whole batch's loss, recomputed from the rows: mean per caption, or per predicted token.
    with torch.no_grad():
        rows = model(images, texts)
    assert torch.allclose(whole, rows.sum() / loss_units(objective, texts).sum(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["contrastive", "bow", "caption"])
def test_each_objective_learns_on_real_shards_and_evaluates(objective, shards, tmp_path):
    run = tmp_path / objective
    run_train(["--train-data", str(shards), "--out", str(run), "--model", "tiny", "--objective", objective,
               "--batch-size", "64", "--epochs", "5", "--lr", "2e-3", "--save-every", "30", "--no-tensorboard",
               "--log-every", "5"])
    m = metrics(run)
    assert [r["step"] for r in m] == list(range(1, 31))
    first, last = sum(r["loss"] for r in m[:3]) / 3, sum(r["loss"] for r in m[-3:]) / 3
    assert last < 0.75 * first, (first, last)
    ck = torch.load(run / "checkpoints" / "step_00000030.pt", weights_only=True)
    assert ck.get("objective", "contrastive") == objective and ck["train_config"]["objective"] == objective
    assert ("logit_scale" in m[-1]) == (objective == "contrastive")
    # eval builds the checkpoint's model and scores the held-out shapes by its objective's rule.
    held = write_heldout(tmp_path / "held")
    from clipforge.cli import main

    assert main(["eval", "--checkpoint", str(run), "--imagefolder", str(held), "--workers", "0"]) == 0
    r = json.loads((run / "eval" / "eval.json").read_text())["results"]["held"]
    assert r["samples"] == 24 and 0 <= r["top1"] <= 1 and r["chance_top1"] == pytest.approx(1 / 12)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["bow", "caption"])
def test_killed_run_resumes_to_the_same_losses_and_weights(objective, shards, tmp_path):
    """As test_train's contrastive resume test: killed after step 13, resumed from step 12's
    checkpoint, the run logs the uninterrupted run's batches and losses and ends at its weights."""
    args = ["--train-data", str(shards), "--model", "tiny", "--objective", objective, "--batch-size", "32",
            "--steps", "16", "--workers", "2", "--save-every", "4", "--lr", "1e-3", "--shuffle-buffer", "64",
            "--no-tensorboard", "--log-every", "13"]
    run_train(args + ["--out", str(tmp_path / "straight")])
    killed = tmp_path / "killed"
    returncode, last = kill_after_step(args + ["--out", str(killed)], killed, 13)
    assert returncode == -signal.SIGKILL and 13 <= last < 16
    run_train(args + ["--out", str(killed), "--resume"])
    a, b = metrics(tmp_path / "straight"), metrics(killed)
    assert [r["step"] for r in b] == list(range(1, 17))
    assert [r["keys"] for r in a] == [r["keys"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6), ra["step"]
    wa = torch.load(tmp_path / "straight" / "checkpoints" / "step_00000016.pt", weights_only=True)["model"]
    wb = torch.load(killed / "checkpoints" / "step_00000016.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5) for k in wa)
    # Resuming under another objective is refused in one line.
    other = "caption" if objective == "bow" else "bow"
    bad = run_train([x if x != objective else other for x in args] + ["--out", str(killed), "--resume"],
                    check=False)
    assert bad.returncode == 1 and f"objective={objective!r}" in bad.stderr


# --- the benchmark's arithmetic and a toy run of it ------------------------------------------------

def _curve(points):
    return [{"images": x, "shape": {"top1": y, "samples": 400, "chance": 0.1}} for x, y in points]


def test_images_to_reach_and_the_efficiency_ratios():
    from bench.bench_objectives import efficiency, images_to_reach

    curve = _curve([(0, 0.1), (100, 0.3), (200, 0.5), (300, 0.4)])
    assert images_to_reach(curve, "shape", 0.4) == pytest.approx(150)   # halfway between 100 and 200
    assert images_to_reach(curve, "shape", 0.05) == 0 and images_to_reach(curve, "shape", 0.6) is None
    records = [{"objective": "contrastive", "curve": _curve([(0, 0.1), (100, 0.5), (400, 0.9)])},
               {"objective": "bow", "curve": _curve([(0, 0.1), (200, 0.3), (400, 0.5)])},
               {"objective": "caption", "curve": _curve([(0, 0.1), (200, 0.2), (400, 0.3)])}]
    e = efficiency(records, "shape")
    assert e["slowest"] == "caption" and e["target_top1"] == 0.3
    # images to 30%: contrastive 50 (0.1 -> 0.5 over 100), bow 200, caption 400
    assert e["images_to_target"] == {"contrastive": pytest.approx(50), "bow": 200, "caption": 400}
    assert e["ratios"]["contrastive_over_bow"] == pytest.approx(4) and e["ratios"]["bow_over_caption"] == 2
    assert e["ratios"]["contrastive_over_caption"] == pytest.approx(8) and e["target_above_chance"]


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_at_toy_size(shards, tmp_path):
    from bench import bench_objectives as b

    held = tmp_path / "held"
    write_heldout(held / "shape")
    result = b.run(tmp_path / "work", images=256, points=2, templates=("a photo of a {}.", "{}"),
                   json_path=tmp_path / "o.json", plot_path=tmp_path / "o.png", inputs=(str(shards), held, None),
                   log=lambda *_: None)
    assert [r["objective"] for r in result["records"]] == ["contrastive", "bow", "caption"]
    for r in result["records"]:
        assert [p["images"] for p in r["curve"]] == [0, 128, 256] and "colour" not in r["curve"][0]
    assert json.loads((tmp_path / "o.json").read_text())["efficiency"]["shape"]["slowest"] in b.OBJECTIVES
    assert (tmp_path / "o.png").stat().st_size > 0 and "objectives.png" in b.text(result)
    # the honest word counts the shards' samples (4 x 96 here) from their sizes.json
    assert result["shard_samples"] == 384 and "the shards hold 384 synthetic drawings" in b.text(result)


def test_the_objective_flag_reaches_the_config_and_demo_runs_go_beside_the_contrastive_one():
    import argparse

    from clipforge import cli
    from clipforge.stages import train_config

    parser = argparse.ArgumentParser()
    cli._add_train(parser.add_subparsers())
    cfg = lambda *argv: train_config(parser.parse_args(["train", *argv]))   # noqa: E731
    assert (cfg().objective, cfg().out) == ("contrastive", "data/demo/runs/tiny")
    assert (cfg("--objective", "bow").objective, cfg("--objective", "bow").out) == ("bow", "data/demo/runs/tiny-bow")
    assert cfg("--objective", "caption", "--out", "r").out == "r"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--objective", "mlm"])


def test_the_caption_model_runs_on_meta_tensors_as_a_flop_count_does():
    # Trimming reads the batch's length, which meta tensors do not have: the caption model must run
    # untrimmed there (as encode_text does), where it used to stop with "Tensor.item() cannot be called".
    from clipforge.trainer.model import make_model, model_config

    with torch.device("meta"):
        model = make_model(model_config("tiny").with_vocab(600), "caption")
        out = model(torch.empty(4, 3, 64, 64), torch.zeros(4, 32, dtype=torch.long))
    assert out.is_meta and out.shape == (4,)
