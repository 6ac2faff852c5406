"""CLIP's contrastive loss: symmetric InfoNCE, with features gathered across ranks.

Each rank computes the loss of its own images against every rank's texts and of its own texts
against every rank's images (the "local loss"): the memory of one [local, global] logit matrix
instead of a [global, global] one. Features are gathered with gradients
(an all_gather whose backward is a reduce-scatter), so each rank's features receive the gradient of
every rank's loss, and DistributedDataParallel's gradient averaging then yields exactly the
gradient of the full-batch loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's rows; backward sums the gradient over ranks and keeps this rank's rows."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        # A reduce-scatter moves half the data of an all_reduce and leaves only this rank's rows.
        out = torch.empty((ctx.rows,) + tuple(grad.shape[1:]), dtype=grad.dtype, device=grad.device)
        dist.reduce_scatter_tensor(out, grad.contiguous())
        return out


def gather_features(image_features: torch.Tensor, text_features: torch.Tensor):
    """Every rank's features, concatenated in rank order, keeping the autograd graph."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return image_features, text_features
    return _AllGather.apply(image_features), _AllGather.apply(text_features)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy; the matching pair is the target.

    Features are this rank's (normalised) rows; every rank must pass the same number of rows.
    """
    all_image, all_text = gather_features(image_features, text_features)
    n = image_features.shape[0]
    rank = dist.get_rank() if all_image.shape[0] != n else 0
    labels = torch.arange(n, device=image_features.device) + n * rank
    logits_per_image = logit_scale * image_features @ all_text.T
    logits_per_text = logit_scale * text_features @ all_image.T
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


# --- the paper's two predictive baselines (Radford et al. 2021, section 2.3, Figure 2) ----------
#
# Token rows are the tokenizer's: start-of-text at position 0, the caption's tokens, end-of-text
# (the row's highest id), then zero padding. Padding is found by position (after end-of-text),
# not by id: id 0 is also a real token (the byte "!").

def content_mask(texts: torch.Tensor) -> torch.Tensor:
    """[b, n] bool: the caption's own tokens, strictly between start-of-text and end-of-text."""
    pos = torch.arange(texts.shape[1], device=texts.device)
    end = texts.argmax(dim=1, keepdim=True)
    return (pos > 0) & (pos < end)


def target_mask(texts: torch.Tensor) -> torch.Tensor:
    """[b, n - 1] bool: which next tokens a language model predicts, texts[:, 1:] up to and with
    end-of-text (a caption's probability includes its ending there); padding is not a target."""
    pos = torch.arange(1, texts.shape[1], device=texts.device)
    return pos <= texts.argmax(dim=1, keepdim=True)


def bag_of_words(texts: torch.Tensor, vocab_size: int, normalize: bool = True) -> torch.Tensor:
    """[b, vocab] counts of each row's caption tokens (start, end and padding left out); with
    ``normalize``, divided by the row's total (the paper's normalised bag-of-words target; an
    empty caption gives a zero row)."""
    mask = content_mask(texts)
    counts = torch.zeros(texts.shape[0], vocab_size, device=texts.device)
    counts.scatter_add_(1, texts * mask, mask.float())
    if normalize:
        counts = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    return counts


def bow_loss(logits: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """[b] soft-target cross-entropy of each row: -sum_v target_v log softmax(logits)_v."""
    target = bag_of_words(texts, logits.shape[-1])
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def caption_nll(logits: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """[b] summed negative log-likelihood of each row's next tokens; ``logits`` [b, m, vocab]
    predict texts[:, 1:m + 1] (m may stop short of the context: nothing after it is a target)."""
    m = logits.shape[1]
    targets, mask = texts[:, 1:m + 1], target_mask(texts)[:, :m]
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    return (nll * mask).sum(dim=1)


def loss_units(objective: str, texts: torch.Tensor) -> torch.Tensor:
    """[b] what each row's loss is averaged over: one per caption for bag-of-words, its predicted
    tokens for the language model (the batch's loss is the mean per token)."""
    if objective == "caption":
        return target_mask(texts).sum(dim=1).float()
    return torch.ones(texts.shape[0], device=texts.device)
