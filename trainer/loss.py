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
