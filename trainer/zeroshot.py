"""Zero-shot evaluation as CLIP evaluated itself: classification from prompts, retrieval, scoring.

Classification: each class's embedding is the mean of the normalised text embeddings of its
prompts (one per template), normalised again; an image's prediction is the class of highest
cosine similarity. Metrics: top-1, top-5, mean per-class recall, and the confusion matrix.
Retrieval: image->text and text->image recall@1/5/10 over paired image–text samples.
Scoring: the cosine similarity of each pair (the CLIP-score filter of LAION and DataComp).

Models trained with the predictive objectives (bag-of-words, caption) classify as the paper
evaluated them: each class prompt is scored by the model's log-likelihood of the prompt's text
given the image, and a class's score is the mean of its prompts' scores (the ensemble). Bag of
words: sum over the prompt's tokens (start, end, padding left out) of count x log p(token |
image), the log-probability of the multiset under the predicted multinomial. Captioning: the sum
of log p(next token | image, tokens before) over the prompt's tokens and its end-of-text. Neither is
length-normalised: the sum is the likelihood of the text, so the argmax is the most probable
prompt, and the tokens the prompts of a template share add the same to every class; a per-token
mean would instead reward a long class name for the easy tokens of the template around it.
Retrieval and CLIP score need a contrastive model.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.trainer.checkpoint import load_checkpoint, resolve_checkpoint
from clipforge.trainer.data import normalize_images
from clipforge.trainer.loss import bag_of_words, caption_nll
from clipforge.trainer.model import (CLIP, CLIPConfig, config_from_openai_state_dict, make_model, objective_of,
                                     openai_state_dict, trim_padding)
from clipforge.trainer.tokenizer import Tokenizer, read_merges
from clipforge.errors import InputError

# Our default prompt set: the label in the phrasings web captions use for photos and pictures.
TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a painting of a {}.",
    "a sketch of a {}.",
    "a cartoon {}.",
    "a small {}.",
    "a large {}.",
    "a {} on a plain background.",
    "a blurry photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a low resolution photo of a {}.",
    "{}",
)


def read_templates(path: str | Path) -> list[str]:
    from clipforge.trainer.evalsets import read_lines

    templates = read_lines(path)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise InputError(f"{path}: each template needs exactly one {{}} for the class name"
                         f"{f' (not: {bad[0]!r})' if bad else ' (no templates)'}")
    return templates


# --- models -----------------------------------------------------------------------------------

def load_model(checkpoint: str | Path, bpe: str | Path | None = None, device="cpu") -> tuple[CLIP, Tokenizer]:
    """A clipforge checkpoint (tokenizer inside) or OpenAI-format weights with CLIP's BPE file."""
    path = resolve_checkpoint(checkpoint)
    ck = load_checkpoint(path)
    objective = ck.get("objective", "contrastive")
    if "model_config" in ck:
        cfg = CLIPConfig.from_dict(ck["model_config"])
        merges = read_merges(bpe) if bpe else ck.get("bpe_merges")
        sd = ck["model"]
    else:
        sd = openai_state_dict(ck["model"])
        cfg = config_from_openai_state_dict(sd)
        if not bpe:
            raise InputError(f"{path}: OpenAI-format weights carry no vocabulary; pass --bpe "
                             "(CLIP's bpe_simple_vocab_16e6.txt.gz)")
        merges = read_merges(bpe)
    tokenizer = Tokenizer(merges, cfg.text.context_length)
    if tokenizer.vocab_size != cfg.text.vocab_size:
        raise InputError(f"{path}: the model has {cfg.text.vocab_size} token ids, the vocabulary {tokenizer.vocab_size}")
    model = make_model(cfg, objective)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def class_embeddings(model, tokenizer, classnames: list[str], templates=TEMPLATES, device="cpu") -> torch.Tensor:
    """[classes, dim]: per class, the renormalised mean of its prompts' normalised embeddings."""
    out = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1).mean(dim=0)
        out.append(F.normalize(emb, dim=-1))
    return torch.stack(out)


@torch.no_grad()
def image_embeddings(model, images: torch.Tensor, device="cpu") -> torch.Tensor:
    x = normalize_images(images.to(device))
    return F.normalize(model.encode_image(x).float(), dim=-1)


@torch.no_grad()
def text_embeddings(model, tokenizer, texts: list[str], device="cpu", batch_size: int = 512) -> torch.Tensor:
    out = [F.normalize(model.encode_text(tokenizer(texts[i:i + batch_size]).to(device)).float(), dim=-1)
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def prompts(tokenizer, classnames: list[str], templates=TEMPLATES, device="cpu") -> torch.Tensor:
    """[classes x templates, context] token ids, class-major: row c * len(templates) + t is
    template t filled with class c."""
    return tokenizer([t.format(name) for name in classnames for t in templates]).to(device)


@torch.no_grad()
def bow_prompt_scores(model, images: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
    """[n, prompts]: sum over each prompt's tokens of count x log p(token | image) under a
    bag-of-words model (``images`` normalised); start, end and padding are not counted."""
    log_p = model.word_log_probs(images).float()
    counts = bag_of_words(prompt_tokens, log_p.shape[-1], normalize=False).to(log_p.dtype)
    return log_p @ counts.T


@torch.no_grad()
def caption_prompt_scores(model, images: torch.Tensor, prompt_tokens: torch.Tensor,
                          logits_per_pass: int = 2 ** 26) -> torch.Tensor:
    """[n, prompts]: log p(prompt | image) of a captioning model, the sum of its next-token
    log-probabilities over the prompt's tokens and its end-of-text (``images`` normalised). Runs
    the language model over (image, prompt) rows, at most ``logits_per_pass`` logits at a time."""
    prompt_tokens = trim_padding(prompt_tokens)
    prefix = model.prefix(images)
    n, p = prefix.shape[0], prompt_tokens.shape[0]
    rows_per_pass = logits_per_pass // (prompt_tokens.shape[1] * model.config.text.vocab_size)
    out = torch.empty(n, p, device=prefix.device)
    per = max(1, rows_per_pass // p)      # images a pass: every prompt for each
    for i in range(0, n, per):
        chunk = prefix[i:i + per]
        m = chunk.shape[0]
        text = prompt_tokens.repeat(m, 1)
        logits = model.next_token_logits(chunk.repeat_interleave(p, dim=0), text)
        out[i:i + m] = -caption_nll(logits, text).view(m, p)
    return out


class ClassScorer:
    """Zero-shot class scores of images for a model of any objective: ``scorer(uint8 images)``
    gives [n, classes] logits. Contrastive: cosine similarity to each class's prompt-ensemble
    embedding. Bag-of-words and caption: each class's mean over its prompts of log p(prompt | image)."""

    def __init__(self, model, tokenizer, classnames, templates=TEMPLATES, device="cpu"):
        self.model, self.device = model, device
        self.objective = objective_of(model)
        self.n_classes, self.n_templates = len(classnames), len(templates)
        if self.objective == "contrastive":
            self.classes = class_embeddings(model, tokenizer, classnames, templates, device).float()
        else:
            self.tokens = prompts(tokenizer, classnames, templates, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.objective == "contrastive":
            return image_embeddings(self.model, images, self.device) @ self.classes.T
        x = normalize_images(images.to(self.device))
        score = bow_prompt_scores if self.objective == "bow" else caption_prompt_scores
        s = score(self.model, x, self.tokens).float()
        return s.view(s.shape[0], self.n_classes, self.n_templates).mean(dim=2)


def _contrastive_only(model, task):
    if objective_of(model) != "contrastive":
        raise InputError(f"{task} needs a contrastive model (image and text embeddings); this checkpoint was trained "
                         f"with --objective {objective_of(model)}")


# --- metrics ----------------------------------------------------------------------------------

def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classnames: list[str]) -> dict:
    n_classes = len(classnames)
    k = min(5, n_classes)
    topk = logits.topk(k, dim=1).indices
    correct = topk == labels[:, None]
    pred = topk[:, 0]
    cm = torch.zeros(n_classes, n_classes, dtype=torch.long)
    cm.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    support = cm.sum(dim=1)
    recall = cm.diag().double() / support.clamp(min=1).double()
    present = support > 0
    return {
        "top1": float(correct[:, 0].float().mean()),
        "top5": float(correct.any(dim=1).float().mean()),
        "mean_per_class_recall": float(recall[present].mean()),
        "per_class_recall": {classnames[i]: float(recall[i]) for i in range(n_classes) if present[i]},
        "samples": int(len(labels)),
        "classes": n_classes,
        "classnames": list(classnames),
        "chance_top1": 1 / n_classes,
        "confusion_matrix": cm.tolist(),
    }


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Pair i is (image i, text i). The rank of the true match is 1 + the number scoring strictly higher."""
    sim = image_emb @ text_emb.T
    true = sim.diag()
    i2t_rank = 1 + (sim > true[:, None]).sum(dim=1)     # per image, among all texts
    t2i_rank = 1 + (sim > true[None, :]).sum(dim=0)     # per text, among all images
    out = {"pairs": int(len(true))}
    for k in ks:
        out[f"image_to_text_R@{k}"] = float((i2t_rank <= k).float().mean())
        out[f"text_to_image_R@{k}"] = float((t2i_rank <= k).float().mean())
    out["mean_R@1"] = (out["image_to_text_R@1"] + out["text_to_image_R@1"]) / 2
    return out


# --- tasks --------------------------------------------------------------------------------------

def zero_shot_classify(model, tokenizer, batches, classnames, templates=TEMPLATES, device="cpu",
                       overlapping=None) -> dict:
    """`batches` yields (uint8 images, int labels), or (images, labels, overlap flags) when
    ``overlapping`` is true; returns the metrics of classification_metrics, and then also, under
    "clean", the metrics of the images without a copy in the training data (CLIP's clean split)."""
    scorer = ClassScorer(model, tokenizer, classnames, templates, device)
    logits, labels, flags = [], [], []
    for batch in batches:
        images, y = batch[0], batch[1]
        if overlapping:
            flags.append(torch.as_tensor(batch[2], dtype=torch.bool))
        logits.append(scorer(images))
        labels.append(torch.as_tensor(y))
    if not logits:
        raise InputError("the evaluation set has no usable image")
    top = int(torch.cat(labels).max())
    if top >= len(classnames) or int(torch.cat(labels).min()) < 0:
        raise InputError(f"the evaluation set has label {top}, but there are {len(classnames)} class names")
    all_logits, all_labels = torch.cat(logits).cpu(), torch.cat(labels).long()
    result = classification_metrics(all_logits, all_labels, classnames)
    result["templates"] = len(templates)
    if overlapping:
        dirty = torch.cat(flags)
        clean = {k: v for k, v in classification_metrics(all_logits[~dirty], all_labels[~dirty], classnames).items()
                 if k in ("top1", "top5", "mean_per_class_recall", "samples")} if (~dirty).any() else {"samples": 0}
        result["clean"] = {**clean, "overlapping": int(dirty.sum())}
    return result


def evaluate_imagefolder(model, tokenizer, root, classnames_file=None, templates=TEMPLATES, device="cpu",
                         batch_size=256, workers=2, overlapping=None) -> dict:
    """Zero-shot classification of an ImageFolder tree; with ``overlapping`` (the set's images,
    as CLASS/FILE, that have a copy in the training data), also the clean split."""
    from clipforge.trainer.evalsets import folder_batches, image_folder

    files, labels, names = image_folder(root, classnames_file)
    unreadable = Counter()
    flags = torch.tensor([str(Path(f).relative_to(root)) in overlapping for f in files]) if overlapping is not None \
        else None

    def batches():
        start = 0
        for images, y, ok in folder_batches(files, labels, model.image_size, batch_size, workers):
            unreadable["image_undecodable"] += int((~ok).sum())
            if ok.any():
                yield (images[ok], y[ok]) if flags is None else (images[ok], y[ok], flags[start:start + len(ok)][ok])
            start += len(ok)

    result = zero_shot_classify(model, tokenizer, batches(), names, templates, device, overlapping=flags is not None)
    result["skipped"] = {k: v for k, v in unreadable.items() if v}
    return result


def evaluate_wds(model, tokenizer, shards, classnames_file, templates=TEMPLATES, device="cpu",
                 batch_size=256, workers=2) -> dict:
    from clipforge.trainer.evalsets import read_lines, shard_samples

    if not classnames_file:
        raise InputError("--wds needs --classnames (one class name per line, in label order)")
    names = read_lines(classnames_file)
    batches, skipped = shard_samples(shards, model.image_size, "label", batch_size, workers)
    pairs = ((b["images"], torch.tensor(b["values"])) for b in batches)
    result = zero_shot_classify(model, tokenizer, pairs, names, templates, device)
    result["skipped"] = dict(skipped)
    return result


def evaluate_retrieval(model, tokenizer, shards, device="cpu", batch_size=256, workers=2) -> dict:
    from clipforge.trainer.evalsets import shard_samples

    _contrastive_only(model, "retrieval")
    batches, skipped = shard_samples(shards, model.image_size, "text", batch_size, workers)
    images, texts = [], []
    for b in batches:
        images.append(image_embeddings(model, b["images"], device))
        texts.append(text_embeddings(model, tokenizer, b["values"], device))
    if not images:
        raise InputError(f"{shards}: no usable image-text pair")
    result = retrieval_metrics(torch.cat(images).cpu(), torch.cat(texts).cpu())
    result["skipped"] = dict(skipped)
    return result


def evaluate_during_training(model, tokenizer, eval_data, device, rank: int = 0, world: int = 1, workers: int = 0,
                             autocast=contextlib.nullcontext) -> dict | None:
    """Zero-shot top-1/top-5 on an ImageFolder tree, from inside the training loop (model restored
    to train). With several ranks each embeds every world-th image (with loader workers, under the
    run's autocast) and the counts are summed over ranks: every rank gets the whole set's result,
    and none waits while one rank works alone."""
    import torch.distributed as dist

    from clipforge.trainer.evalsets import folder_batches, image_folder

    files, labels, names = image_folder(eval_data)
    files, labels = files[rank::world], labels[rank::world]
    was_training = model.training
    model.eval()
    n = len(names)
    counts = torch.zeros(3 + n * n, dtype=torch.float64)   # top-1 right, top-5 right, images, confusion matrix
    try:
        with torch.no_grad(), autocast():
            scorer = ClassScorer(model, tokenizer, names, TEMPLATES, device)
            for images, y, ok in (folder_batches(files, labels, model.image_size, 256, workers) if files else ()):
                if not ok.any():
                    continue
                logits = scorer(images[ok]).float().cpu()
                y = y[ok].long()
                top = logits.topk(min(5, n), dim=1).indices
                counts[0] += float((top[:, 0] == y).sum())
                counts[1] += float((top == y[:, None]).any(dim=1).sum())
                counts[2] += len(y)
                cm = torch.zeros(n, n, dtype=torch.float64)
                cm.index_put_((y, top[:, 0]), torch.ones(len(y), dtype=torch.float64), accumulate=True)
                counts[3:] += cm.flatten()
    finally:
        model.train(was_training)
    if world > 1:
        counts = counts.to(device)
        dist.all_reduce(counts)
        counts = counts.cpu()
    if counts[2] == 0:
        raise InputError(f"{eval_data}: the evaluation set has no usable image")
    cm = counts[3:].view(n, n)
    support = cm.sum(dim=1)
    present = support > 0
    recall = cm.diag() / support.clamp(min=1)
    return {"top1": float(counts[0] / counts[2]), "top5": float(counts[1] / counts[2]),
            "mean_per_class_recall": float(recall[present].mean()), "chance_top1": 1 / n}


@torch.no_grad()
def score_pairs(model, tokenizer, batches, device="cpu"):
    """(keys, captions, cosine similarities) of every pair the batches yield."""
    _contrastive_only(model, "the CLIP score")
    keys, captions, scores = [], [], []
    for b in batches:
        img = image_embeddings(model, b["images"], device)
        txt = text_embeddings(model, tokenizer, b["values"], device)
        scores.append((img * txt).sum(dim=-1).cpu())
        keys += b["keys"]
        captions += b["values"]
    return keys, captions, (torch.cat(scores).numpy() if scores else np.zeros(0, np.float32))


# --- output -------------------------------------------------------------------------------------

def plot_confusion(cm, classnames, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=float)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classnames)
    size = min(4 + 0.35 * n, 30)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(rows, cmap="viridis", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), classnames, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classnames, fontsize=8)
        if n <= 25:
            for i in range(n):
                for j in range(n):
                    if cm[i, j]:
                        ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                                color="black" if rows[i, j] > 0.5 else "white")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    """A short console table: one row per evaluation set."""
    rows = []
    for name, r in results.items():
        if "top1" in r:
            rows.append((name, f"top-1 {100 * r['top1']:.1f}%", f"top-5 {100 * r['top5']:.1f}%",
                         f"mean recall {100 * r['mean_per_class_recall']:.1f}%",
                         f"chance {100 * r['chance_top1']:.1f}%", f"{r['samples']} images"))
            if "clean" in r and r["clean"]["samples"]:
                c = r["clean"]
                rows.append((f"{name} (clean)", f"top-1 {100 * c['top1']:.1f}%", f"top-5 {100 * c['top5']:.1f}%",
                             f"mean recall {100 * c['mean_per_class_recall']:.1f}%",
                             f"{c['overlapping']} with a copy left out", f"{c['samples']} images"))
        else:
            rows.append((name, f"image->text R@1/5/10 {_r(r, 'image_to_text')}",
                         f"text->image R@1/5/10 {_r(r, 'text_to_image')}", f"{r['pairs']} pairs"))
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows)


def _r(r, prefix):
    return "/".join(f"{100 * r[f'{prefix}_R@{k}']:.1f}" for k in (1, 5, 10))

