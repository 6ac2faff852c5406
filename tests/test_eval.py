"""Zero-shot evaluation against models whose answers are known, and against plain references."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from clipforge.trainer.checkpoint import save_checkpoint
from clipforge.trainer.data import CLIP_MEAN, CLIP_STD
from clipforge.trainer.model import CLIP, CLIPConfig, TextConfig, VisionConfig, model_config
from clipforge.trainer.tokenizer import Tokenizer, train_bpe
from clipforge.trainer.zeroshot import (TEMPLATES, class_embeddings, evaluate_imagefolder, evaluate_retrieval,
                                        evaluate_wds, load_model, retrieval_metrics)

ROOT = Path(__file__).resolve().parents[1]
PALETTE = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20),
           "purple": (140, 40, 170), "orange": (250, 140, 10), "black": (10, 10, 10), "white": (245, 245, 245),
           "pink": (250, 150, 200), "brown": (120, 70, 20)}
NAMES = list(PALETTE)


class KnownAnswerCLIP(torch.nn.Module):
    """Image i (a solid colour) embeds to one-hot(i) plus 0.1 of its palette neighbours i±1 and 0.01
    of i±2; a text embeds to one-hot of the colour word it contains. Every ranking is known: the
    true colour, then i±1, then i±2, then the rest (tied at zero)."""

    image_size = 32

    def __init__(self, tokenizer, neighbours=(0.1, 0.01)):
        super().__init__()
        self.word_ids = {tokenizer.encode(n)[0]: i for i, n in enumerate(NAMES)}
        assert all(len(tokenizer.encode(n)) == 1 for n in NAMES)
        self.neighbours = neighbours
        self.palette = torch.tensor([PALETTE[n] for n in NAMES], dtype=torch.float32)

    def encode_image(self, x):
        rgb = (x * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) * 255
        idx = torch.cdist(rgb.mean(dim=(2, 3)), self.palette).argmin(dim=1)
        n = len(NAMES)
        emb = F.one_hot(idx, n).float()
        for d, w in enumerate(self.neighbours, start=1):
            emb += w * (F.one_hot((idx + d) % n, n) + F.one_hot((idx - d) % n, n)).float()
        return emb

    def encode_text(self, tokens):
        out = torch.zeros(len(tokens), len(NAMES))
        for row, ids in enumerate(tokens.tolist()):
            for t in ids:
                if t in self.word_ids:
                    out[row, self.word_ids[t]] = 1.0
        return out


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(train_bpe([f"a photo of a {n} thing" for n in NAMES] * 20, vocab_size=2000), 32)


def solid(colour):
    return Image.new("RGB", (40, 40), PALETTE[colour])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 images per colour, except: two 'red' images are blue and one 'green' image is yellow."""
    root = tmp_path_factory.mktemp("folder")
    truth = []
    for name in NAMES:
        (root / name).mkdir()
        for j in range(3):
            shown = {("red", 0): "blue", ("red", 1): "blue", ("green", 2): "yellow"}.get((name, j), name)
            solid(shown).save(root / name / f"{j}.png")
            truth.append((name, shown))
    return root, truth


def test_imagefolder_accuracy_is_exactly_the_known_answer(folder, tokenizer):
    root, truth = folder
    model = KnownAnswerCLIP(tokenizer)
    r = evaluate_imagefolder(model, tokenizer, root, workers=0)
    assert r["samples"] == 30 and r["classes"] == 10
    assert r["top1"] == pytest.approx(27 / 30)
    # Top-5 holds the shown colour and its neighbours within 2: blue-for-red and yellow-for-green are in.
    def distance(a, b):
        d = abs(NAMES.index(a) - NAMES.index(b))
        return min(d, 10 - d)
    assert r["top5"] == pytest.approx(sum(distance(t, s) <= 2 for t, s in truth) / 30) == 1.0
    assert r["per_class_recall"]["red"] == pytest.approx(1 / 3) and r["per_class_recall"]["green"] == pytest.approx(2 / 3)
    assert r["mean_per_class_recall"] == pytest.approx((8 + 1 / 3 + 2 / 3) / 10)
    cm, order = np.array(r["confusion_matrix"]), r["classnames"]   # ImageFolder: folders sorted by name
    assert cm.sum() == 30 and cm[order.index("red"), order.index("blue")] == 2
    assert cm[order.index("green"), order.index("yellow")] == 1 and np.trace(cm) == 27


def test_webdataset_and_imagefolder_give_the_same_accuracy(folder, tokenizer, tmp_path):
    root, truth = folder
    order = sorted(NAMES)   # the ImageFolder's class order
    with wds.TarWriter(str(tmp_path / "000000.tar")) as w:
        for i, f in enumerate(sorted(root.rglob("*.png"))):
            w.write({"__key__": f"{i:06d}", "png": f.read_bytes(), "cls": str(order.index(f.parent.name))})
    names = tmp_path / "classnames.txt"
    names.write_text("\n".join(order) + "\n")
    model = KnownAnswerCLIP(tokenizer)
    a = evaluate_imagefolder(model, tokenizer, root, workers=0)
    b = evaluate_wds(model, tokenizer, str(tmp_path / "000000.tar"), names, workers=0)
    for k in ("top1", "top5", "mean_per_class_recall", "samples", "confusion_matrix"):
        assert a[k] == b[k], k
    with pytest.raises(ValueError, match="--classnames"):
        evaluate_wds(model, tokenizer, str(tmp_path / "000000.tar"), None)


def test_retrieval_recalls_are_exactly_the_known_answer(tokenizer, tmp_path):
    # Pairs 0-7 match; pairs 8 and 9 swap their captions (image brown/pink with the other's word).
    colours = NAMES[:8] + ["pink", "brown"]
    captions = [f"a photo of a {c} thing" for c in NAMES[:8]] + ["a photo of a brown thing", "a photo of a pink thing"]
    with wds.TarWriter(str(tmp_path / "000000.tar")) as w:
        for i, (c, t) in enumerate(zip(colours, captions)):
            buf = __import__("io").BytesIO()
            solid(c).save(buf, "PNG")
            w.write({"__key__": f"{i:04d}", "png": buf.getvalue(), "txt": t})
    r = evaluate_retrieval(KnownAnswerCLIP(tokenizer), tokenizer, str(tmp_path / "000000.tar"), workers=0)
    # The swapped pairs' true matches score 0.1 (palette neighbours): second place, behind the exact colour.
    assert r["pairs"] == 10
    assert r["image_to_text_R@1"] == pytest.approx(0.8) and r["text_to_image_R@1"] == pytest.approx(0.8)
    assert r["image_to_text_R@5"] == r["text_to_image_R@5"] == r["image_to_text_R@10"] == 1.0


def test_retrieval_metrics_against_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    img, txt = F.normalize(torch.randn(50, 8, generator=g), dim=-1), F.normalize(torch.randn(50, 8, generator=g), dim=-1)
    r = retrieval_metrics(img, txt)
    sim = (img @ txt.T).tolist()
    for k in (1, 5, 10):
        i2t = np.mean([sorted(range(50), key=lambda j: -sim[i][j]).index(i) < k for i in range(50)])
        t2i = np.mean([sorted(range(50), key=lambda j: -sim[j][i]).index(i) < k for i in range(50)])
        assert r[f"image_to_text_R@{k}"] == pytest.approx(i2t) and r[f"text_to_image_R@{k}"] == pytest.approx(t2i)


@pytest.mark.slow
def test_prompt_ensemble_matches_a_plain_reference(tokenizer):
    torch.manual_seed(0)
    model = CLIP(model_config("tiny").with_vocab(tokenizer.vocab_size)).eval()
    classes = ["red", "blue", "green"]
    ours = class_embeddings(model, tokenizer, classes, TEMPLATES)
    with torch.no_grad():
        for i, c in enumerate(classes):
            embs = [model.encode_text(tokenizer(t.format(c)))[0] for t in TEMPLATES]
            mean = sum(e / e.norm() for e in embs) / len(embs)
            assert torch.allclose(ours[i], mean / mean.norm(), atol=1e-5)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(3), atol=1e-6)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    # OpenAI's layout leaves the head count implicit (width / 64), so this model follows that rule.
    model = CLIP(CLIPConfig(128, VisionConfig(64, 2, 128, 8), TextConfig(32, tokenizer.vocab_size, 128, 2, 2)))
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run, 7, {"model": model.state_dict(), "model_config": model.config.to_dict(),
                             "bpe_merges": tokenizer.merges, "token_ids": "clip", "step": 7})
    return run, model


def test_checkpoints_and_openai_weights_load_to_the_same_embeddings(checkpoint, tokenizer, tmp_path):
    run, model = checkpoint
    from clipforge.trainer.tokenizer import write_merges

    ours, tok = load_model(run)
    torch.save(model.state_dict(), tmp_path / "openai.pt")   # OpenAI's layout: a bare state dict
    write_merges(tmp_path / "bpe.txt.gz", tokenizer.merges)
    theirs, tok2 = load_model(tmp_path / "openai.pt", bpe=tmp_path / "bpe.txt.gz")
    x, t = torch.rand(2, 3, 64, 64), tokenizer(["a red thing", "blue"])
    with torch.no_grad():
        assert torch.equal(ours.encode_image(x), theirs.encode_image(x))
        assert torch.equal(ours.encode_text(t), theirs.encode_text(tok2(["a red thing", "blue"])))
    with pytest.raises(ValueError, match="--bpe"):
        load_model(tmp_path / "openai.pt")


@pytest.mark.slow
def test_eval_and_score_cli(checkpoint, folder, tmp_path):
    run, _ = checkpoint
    root, _ = folder
    out = tmp_path / "ev"
    proc = subprocess.run([sys.executable, "-m", "clipforge", "eval", "--checkpoint", str(run), "--imagefolder",
                           str(root), "--out", str(out), "--workers", "1"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "eval.json").read_text())["results"]["folder0"]
    assert result["samples"] == 30 and 0 <= result["top1"] <= 1 and (out / "confusion_folder0.png").stat().st_size > 5000
    assert "top-1" in proc.stdout and "chance 10.0%" in proc.stdout
    # Score: shards of the folder's images with captions; one similarity per pair, in [-1, 1].
    with wds.TarWriter(str(tmp_path / "000000.tar")) as w:
        for i, f in enumerate(sorted(root.rglob("*.png"))):
            w.write({"__key__": f"{i:06d}", "png": f.read_bytes(), "txt": f"a {f.parent.name} square"})
        w.write({"__key__": "broken", "png": b"nope", "txt": "x"})
    # --out is a directory for both commands: eval's gets eval.json, score's gets scores.parquet.
    score = [sys.executable, "-m", "clipforge", "score", "--checkpoint", str(run), "--pairs",
             str(tmp_path / "000000.tar")]
    proc = subprocess.run(score + ["--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    t = pq.read_table(out / "scores.parquet")
    assert t.num_rows == 30 and "image_undecodable 1" in proc.stdout
    assert all(-1.0001 <= s <= 1.0001 for s in t.column("similarity").to_pylist())
    assert (out / "eval.json").exists()  # beside eval's output, not in place of it
    # The older form, a .parquet path, still writes that file, and says how --out reads now.
    proc = subprocess.run(score + ["--out", str(tmp_path / "s.parquet")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(tmp_path / "s.parquet").equals(t)
    assert "--out is now a directory" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # Without --out, both write to the run's eval/ directory.
    proc = subprocess.run(score, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(Path(run) / "eval" / "scores.parquet").equals(t)
    # An --out that is an existing file (an older score output without the suffix) is refused in one line.
    (tmp_path / "old-scores").write_bytes((tmp_path / "s.parquet").read_bytes())
    evaluate = [sys.executable, "-m", "clipforge", "eval", "--checkpoint", str(run), "--imagefolder", str(root)]
    for cmd in (score, evaluate):
        proc = subprocess.run(cmd + ["--out", str(tmp_path / "old-scores")], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "is a file: --out is a directory" in proc.stderr
    # Bad input: one line, exit 1.
    proc = subprocess.run([sys.executable, "-m", "clipforge", "eval", "--checkpoint", str(tmp_path / "none.pt"),
                           "--imagefolder", str(root)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "no such checkpoint" in proc.stderr


def test_clean_split_leaves_out_the_images_with_a_copy(folder, tokenizer, tmp_path):
    """CLIP's clean split: accuracy over the images without a copy in the training data, exactly,
    across batch boundaries; and through `clipforge eval --overlap` from an overlap.json."""
    root, _ = folder
    model = KnownAnswerCLIP(tokenizer)
    copies = {"red/0.png", "green/2.png", "blue/1.png"}  # two wrong answers and one right one
    r = evaluate_imagefolder(model, tokenizer, root, workers=0, batch_size=7, overlapping=copies)
    assert r["top1"] == pytest.approx(27 / 30)  # the full set is unchanged
    assert r["clean"]["samples"] == 27 and r["clean"]["overlapping"] == 3
    assert r["clean"]["top1"] == pytest.approx(26 / 27)  # red/1 (shown blue) is the one wrong answer left
    assert "clean" not in evaluate_imagefolder(model, tokenizer, root, workers=0)

    from clipforge.trainer.evaluate import overlapping_images
    (tmp_path / "ov").mkdir()
    (tmp_path / "ov" / "overlap.json").write_text(json.dumps({"sets": {str(root): {"pairs": [
        {"eval": name, "key": f"{i:012d}", "distance": 1, "similarity": 0.99} for i, name in enumerate(sorted(copies))]}}}))
    assert overlapping_images(tmp_path / "ov") == {root.resolve(): copies}
    from clipforge.errors import InputError, MissingInput
    with pytest.raises(MissingInput):
        overlapping_images(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "overlap.json").write_text("[1, 2]")
    with pytest.raises(InputError):
        overlapping_images(tmp_path / "bad")
