"""The training loop: contrastive pretraining on streamed shards, one process or torchrun/DDP.

``objective`` picks what is learned (Radford et al. 2021, section 2.3): ``contrastive`` (CLIP),
``bow`` (a linear bag-of-words predictor on the image embedding) or ``caption`` (an
image-conditioned Transformer language model); the three share the loader, the schedule, the
checkpoints and exact resume, and a checkpoint names its objective.

Read top to bottom: set up processes, tokenizer, model, optimizer and schedule; then for each
step take a batch, compute the loss (with gradient caching when the batch is accumulated over
micro-batches), step, clamp the temperature, log, and checkpoint. A run directory holds
`bpe.txt.gz`, `checkpoints/step_*.pt`, `metrics.jsonl`, `tensorboard/` and `train_stats.json`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from clipforge.errors import UserError
from clipforge.schemas.files import write_json_atomic
from clipforge.trainer.checkpoint import TOKEN_IDS, latest_checkpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from clipforge.trainer.data import (DataConfig, LoaderState, NoUsableSamples, count_samples, default_workers,
                                    expand_shards, keys_digest, make_loader, normalize_images, slot_lengths)
from clipforge.trainer.loss import clip_loss, loss_units
from clipforge.trainer.model import (CLIP, OBJECTIVES, clamp_logit_scale, config_from_openai_state_dict, make_model,
                                     model_config, openai_state_dict)
from clipforge.trainer.tokenizer import Tokenizer, read_merges, train_bpe, write_merges


class TrainingError(UserError, RuntimeError):
    """A run cannot go on (diverged, bad resume, no data); the message is one line for the user."""


@dataclass
class TrainConfig:
    train_data: str
    out: str
    model: str = "ViT-B-32"
    objective: str = "contrastive"   # contrastive (CLIP), bow (bag-of-words predictor) or caption (language model)
    batch_size: int = 256            # per process, per optimizer step
    accum_steps: int = 1             # micro-batches per step (features cached, full-batch negatives kept)
    epochs: int = 1
    steps: int | None = None         # overrides epochs
    lr: float = 5e-4
    weight_decay: float = 0.2
    warmup: int | None = None        # default: 5% of the steps, at most 2000
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float | None = None
    seed: int = 0
    workers: int | None = None       # loader processes per process; None: from the CPUs (data.default_workers)
    resampled: bool = False
    samples_per_epoch: int | None = None
    shuffle_buffer: int = 1000
    augment: bool = True
    precision: str = "auto"          # auto (bf16 on GPU, fp32 on CPU), fp32, bf16
    grad_checkpointing: bool = False
    compile: bool = False
    quick_gelu: bool = True
    resume: str | None = None        # a checkpoint, a run directory, or "latest" (this run's)
    init_from: str | None = None
    bpe: str | None = None
    vocab_size: int | None = None
    bpe_samples: int = 1_000_000
    save_every: int = 500
    keep: int = 3
    log_every: int = 10
    eval_every: int = 0
    eval_data: str | None = None
    tensorboard: bool = True
    loader_timeout: float = 600.0
    dist_timeout: float = 60.0       # minutes a collective may wait for the other ranks (NCCL's default: 10)
    exclude: str | None = None       # a file of shard sample keys not to train on (clipforge overlap's exclude.txt)


def excluded_keys(path):
    """The sample keys of an exclude file (one per line), or none without one."""
    if not path:
        return frozenset()
    from clipforge.trainer.overlap import read_exclude

    return frozenset(read_exclude(path))


# --- processes --------------------------------------------------------------------------------

def setup_distributed(timeout_minutes: float = 60.0) -> tuple[int, int, torch.device]:
    """(rank, world size, device); under torchrun, joins the process group (NCCL on GPUs, gloo on
    CPUs) with ``timeout_minutes`` for every collective: rank 0 alone learns a vocabulary or
    evaluates while the others wait, which can pass NCCL's default of 10 minutes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        timeout = timedelta(minutes=timeout_minutes)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        global _CONTROL
        _CONTROL = dist.new_group(backend="gloo", timeout=timeout) if cuda else None
    return (dist.get_rank() if world > 1 else 0), world, device


# Under NCCL, a gloo group (every rank joins it right after the default group) for the flag the
# ranks agree on every step: its CPU tensor needs no device synchronisation, where an NCCL
# all_reduce and `.item()` would wait for the GPU to finish the queued step before the next
# batch is even copied. None: the default group (gloo already).
_CONTROL = None


def _all_min(flag: bool, device=None) -> bool:
    """Whether ``flag`` holds on every rank; on the host only (no device work, no GPU sync)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_CONTROL)
    return bool(t.item())


def _mean_values(x: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of each element (one collective, no host synchronisation)."""
    if dist.is_initialized():
        x = x.detach().clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def _broadcast(obj):
    """Rank 0's ``obj`` on every rank (every rank must call it)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _agree(fn):
    """``fn()`` on every rank; when it raises a TrainingError on any rank, every rank raises one
    (the lowest failing rank's message), so no rank goes on into a collective the others left."""
    try:
        value, error = fn(), None
    except TrainingError as e:
        value, error = None, str(e)
    errors = _gather(error)
    failed = [(rank, e) for rank, e in enumerate(errors) if e]
    if failed:
        rank, message = failed[0]
        raise TrainingError(message if rank == 0 or len(errors) == 1 else f"rank {rank}: {message}")
    return value


def _gather(obj):
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --- pieces -----------------------------------------------------------------------------------

def param_groups(model: torch.nn.Module, weight_decay: float):
    """Weight decay on matrices only: not on gains, biases, the temperature or 1-d embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up to `base_lr`, then half a cosine down to zero at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * base_lr


def _autocast(device: torch.device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def backward_batch(model, images: torch.Tensor, texts: torch.Tensor, accum_steps: int = 1,
                   autocast=contextlib.nullcontext, objective: str = "contrastive") -> torch.Tensor:
    """Loss of the whole batch and its gradients in `.grad`; with accum_steps > 1, GradCache.

    GradCache (Gao et al., 2021): embed every micro-batch without a graph, take the loss and its
    gradient with respect to the cached features once over the whole batch (so every sample
    still sees all the batch's negatives), then re-embed each micro-batch with a graph and
    backpropagate those feature gradients. Gradients equal the large batch's; activation memory
    is one micro-batch's. (With batch norm, the ResNets, statistics are per micro-batch.)

    The predictive objectives (bow, caption) have no cross-sample term: each micro-batch's summed
    per-row losses, divided by the whole batch's units (captions, or predicted tokens), are
    backpropagated in turn, which sums to the large batch's mean and its gradient.
    """
    if objective != "contrastive":
        return _backward_predictive(model, images, texts, accum_steps, autocast, objective)
    if accum_steps == 1:
        with autocast():
            image_f, text_f, scale = model(images, texts)
        loss = clip_loss(image_f.float(), text_f.float(), scale.float())
        loss.backward()
        return loss.detach()
    if images.shape[0] % accum_steps:
        raise ValueError(f"batch of {images.shape[0]} does not split into {accum_steps} equal micro-batches")
    image_chunks, text_chunks = images.chunk(accum_steps), texts.chunk(accum_steps)
    with torch.no_grad(), autocast():
        cached = [model(i, t) for i, t in zip(image_chunks, text_chunks)]
    image_all = torch.cat([c[0] for c in cached]).float().requires_grad_()
    text_all = torch.cat([c[1] for c in cached]).float().requires_grad_()
    scale = cached[0][2].float().detach().requires_grad_()
    loss = clip_loss(image_all, text_all, scale)
    loss.backward()
    image_grads, text_grads = image_all.grad.chunk(accum_steps), text_all.grad.chunk(accum_steps)
    no_sync = getattr(model, "no_sync", None)
    for j in range(accum_steps):
        last = j == accum_steps - 1
        sync = contextlib.nullcontext() if (last or no_sync is None) else no_sync()
        with sync:
            with autocast():
                image_f, text_f, s = model(image_chunks[j], text_chunks[j])
            # The temperature's gradient goes in once, with the last micro-batch.
            torch.autograd.backward([image_f.float(), text_f.float(), s.float()],
                                    [image_grads[j], text_grads[j], scale.grad if last else torch.zeros_like(scale)])
    return loss.detach()


def _backward_predictive(model, images, texts, accum_steps, autocast, objective) -> torch.Tensor:
    if images.shape[0] % accum_steps:
        raise ValueError(f"batch of {images.shape[0]} does not split into {accum_steps} equal micro-batches")
    total = loss_units(objective, texts).sum().clamp(min=1)
    no_sync = getattr(model, "no_sync", None)
    loss = torch.zeros((), device=images.device)
    for j, (i, t) in enumerate(zip(images.chunk(accum_steps), texts.chunk(accum_steps))):
        last = j == accum_steps - 1
        sync = contextlib.nullcontext() if (last or no_sync is None) else no_sync()
        with sync:
            with autocast():
                per_row = model(i, t)
            part = per_row.float().sum() / total
            part.backward()
        loss += part.detach()
    return loss


def read_captions(urls: list[str], limit: int):
    from webdataset.tariterators import tarfile_samples

    from clipforge.trainer.data import sample_text

    n = 0
    keep = lambda name: name.endswith((".txt", ".json"))   # noqa: E731
    for sample in tarfile_samples(({"url": u} for u in urls), handler=lambda e: True, select_files=keep):
        text = sample_text(sample)
        if text:
            yield text
            n += 1
            if n >= limit:
                return


# --- the run ----------------------------------------------------------------------------------

class Run:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.rank, self.world, self.device = setup_distributed(cfg.dist_timeout)
        self.main = self.rank == 0

    def log(self, msg: str):
        if self.main:
            print(msg, flush=True)

    # tokenizer: CLIP's file, the resumed run's, or learned from the captions of the shards.
    def tokenizer(self, urls, context_length: int, resumed: dict | None) -> Tokenizer:
        """Rank 0 decides where the vocabulary comes from and every rank takes rank 0's, whatever
        the others see on their disks (a rank that finds bpe.txt.gz early must still join)."""
        path = self.out / "bpe.txt.gz"
        merges = _agree(lambda: self._merges(urls, resumed, path) if self.main else None)
        merges = _broadcast(merges)
        if self.main and not path.exists():
            write_merges(path, merges)
        return Tokenizer(merges, context_length)

    def _merges(self, urls, resumed, path):
        cfg = self.cfg
        if resumed is not None and "bpe_merges" in resumed:
            return resumed["bpe_merges"]
        if cfg.bpe:
            return read_merges(cfg.bpe)
        if path.exists():
            return read_merges(path)
        vocab = cfg.vocab_size or model_config(cfg.model).text.vocab_size
        t0 = time.time()
        merges = train_bpe(read_captions(urls, cfg.bpe_samples), vocab_size=vocab)
        write_merges(path, merges)
        self.log(f"tokenizer: {len(merges) + 514:,} ids learned from the shards' captions in "
                 f"{time.time() - t0:.1f} s -> {path}")
        return merges

    def build_model(self, tokenizer: Tokenizer, init: dict | None) -> CLIP:
        cfg = self.cfg
        mcfg = model_config(cfg.model)
        if init is not None and "model_config" not in init:
            mcfg = config_from_openai_state_dict(init["model"])
        mcfg = mcfg.with_vocab(tokenizer.vocab_size)
        from dataclasses import replace

        mcfg = replace(mcfg, quick_gelu=cfg.quick_gelu, grad_checkpointing=cfg.grad_checkpointing)
        torch.manual_seed(cfg.seed)
        model = make_model(mcfg, cfg.objective)
        if init is not None and cfg.objective != "contrastive":
            # The towers the objectives share (the image tower; the caption model's text Transformer,
            # token and position embeddings, named as CLIP's) start from the weights; the rest as new.
            sd = openai_state_dict(init["model"])
            own = model.state_dict()
            shared = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()
                      if k in own and own[k].shape == v.shape}
            if not any(k.startswith("visual.") for k in shared):
                raise TrainingError(f"--init-from has no image tower that fits model {cfg.model}")
            model.load_state_dict(shared, strict=False)
            self.log(f"init: {len(shared)} of the {objective_label(cfg.objective)} model's {len(own)} tensors from "
                     f"{cfg.init_from}")
        elif init is not None:
            sd = openai_state_dict(init["model"])
            have = sd.get("token_embedding.weight")
            if have is not None and have.shape[0] != tokenizer.vocab_size:
                raise TrainingError(f"--init-from's text tower has {have.shape[0]} token ids but the tokenizer has "
                                    f"{tokenizer.vocab_size}; pass --bpe with the checkpoint's vocabulary")
            try:
                model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
            except RuntimeError as e:
                raise TrainingError(f"--init-from does not fit model {cfg.model}: {str(e).splitlines()[0]}") from None
        return model.to(self.device)

    def run(self) -> dict:
        cfg = self.cfg
        urls = expand_shards(cfg.train_data)
        # Decisions every rank must share: one rank stopping alone leaves the others in a collective.
        resumed = _agree(self._resume_payload)
        steps = _gather(None if resumed is None else resumed.get("step"))
        if len(set(steps)) > 1:
            raise TrainingError(f"the ranks resume from different checkpoints (steps {steps}): every rank must "
                                f"see the same run directory")
        init = _agree(lambda: self._init_payload(resumed))
        if _broadcast(resumed is None and self.main and latest_checkpoint(self.out) is not None):
            raise TrainingError(f"{self.out} already has checkpoints; pass --resume to continue it, or choose another --out")
        if cfg.objective not in OBJECTIVES:
            raise TrainingError(f"unknown objective {cfg.objective!r}; known: {', '.join(OBJECTIVES)}")
        ctx = model_config(cfg.model).text.context_length
        if init is not None and "model_config" not in init:
            ctx = config_from_openai_state_dict(init["model"]).text.context_length
        tokenizer = self.tokenizer(urls, ctx, resumed)
        model = self.build_model(tokenizer, init)
        raw = model
        if resumed is not None:
            raw.load_state_dict(resumed["model"])
        resnet = isinstance(raw.config.vision.layers, (tuple, list))
        # The faster layout for convolutions on cuDNN and on oneDNN alike (the demo's ResNet trains
        # 1.5x faster on two CPU cores with it).
        channels_last = resnet
        if channels_last:
            raw.to(memory_format=torch.channels_last)
        if cfg.compile:
            model = torch.compile(model)
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        cuda = self.device.type == "cuda"
        if cuda:  # TF32 for the fp32 matmuls and convolutions left under autocast (as open_clip does)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        optimizer = torch.optim.AdamW(param_groups(raw, cfg.weight_decay), lr=cfg.lr,
                                      betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True if cuda else None)
        if resumed is not None:
            optimizer.load_state_dict(resumed["optimizer"])

        # How long: steps from --steps, or epochs x (samples per epoch / global batch).
        global_batch = cfg.batch_size * self.world
        samples = cfg.samples_per_epoch or count_samples(urls)
        if samples is None and cfg.steps is None:
            raise TrainingError("no sizes.json beside the shards: pass --steps or --samples-per-epoch")
        steps_per_epoch = (samples // global_batch) if samples else None
        if steps_per_epoch == 0:
            raise TrainingError(f"the global batch ({global_batch}) is larger than the {samples} samples per epoch")
        total = cfg.steps or cfg.epochs * steps_per_epoch
        warmup = cfg.warmup if cfg.warmup is not None else min(2000, max(1, total // 20))
        if cfg.resampled and steps_per_epoch is None:
            steps_per_epoch = max(1, total // max(1, cfg.epochs))

        workers = cfg.workers
        if workers is None:     # rank 0's count on every rank: the slots of the epoch depend on it
            workers = _broadcast(resumed["data"]["ranks"][0]["workers"] if resumed is not None else default_workers())
        data_cfg = DataConfig(urls, cfg.batch_size, raw.image_size, cfg.seed, workers, cfg.resampled,
                              cfg.shuffle_buffer, cfg.augment, exclude=excluded_keys(cfg.exclude))
        step, epoch, in_epoch, state = 0, 0, 0, None
        skipped: Counter = Counter()
        counts, epochs = _EpochCounts(), []
        if resumed is not None:
            d = resumed["data"]
            step, epoch, in_epoch = resumed["step"], d["epoch"], d["steps_in_epoch"]
            if len(d["ranks"]) != self.world:
                raise TrainingError(f"the checkpoint was written by {len(d['ranks'])} process(es); resume with as many "
                                    f"(now {self.world})")
            mine = d["ranks"][self.rank]
            if mine["workers"] != max(1, workers):
                raise TrainingError(f"the checkpoint's loader had {mine['workers']} worker(s); resume with --workers "
                                    f"{mine['workers']}")
            state = LoaderState(**mine)
            skipped.update(d.get("skipped", {}))
            epochs = d.get("epochs", [])
            counts = _EpochCounts(**(d.get("epoch_counts") or [{}] * self.world)[self.rank])
            self._truncate_metrics(step)
        autocast = lambda: _autocast(self.device, cfg.precision)   # noqa: E731
        writer = self._tensorboard(step)
        metrics = open(self.out / "metrics.jsonl", "a") if self.main else None

        n_params = sum(p.numel() for p in raw.parameters())
        contrastive = cfg.objective == "contrastive"
        self.log(f"train: {cfg.model}{'' if contrastive else ' ' + objective_label(cfg.objective)} "
                 f"({n_params / 1e6:.1f}M parameters) on {self.device.type} x{self.world}, "
                 f"{len(urls)} shard(s), {workers} loader worker(s) a process, global batch {global_batch}"
                 f"{f' in {cfg.accum_steps} micro-batches' if cfg.accum_steps > 1 else ''}, {total} steps"
                 f"{f' from step {step}' if step else ''}, out {self.out}")
        t_start, step_times, last_loss = time.time(), [], float("nan")
        pending, values = [], []     # steps not yet logged: host-side fields, and loss and scale on the device
        eval_result = None
        loader = None
        while step < total:
            if loader is None:
                loader = make_loader(data_cfg, tokenizer, epoch, self.rank, self.world, state,
                                     timeout=cfg.loader_timeout, pin_memory=self.device.type == "cuda")
            else:
                loader.dataset.set_epoch(epoch)     # the same (persistent) workers read the next epoch
            if state is None:
                state = LoaderState(max(1, workers))
            batches, ran_out = iter(loader), False
            while step < total and not (cfg.resampled and in_epoch >= steps_per_epoch):
                t0 = time.time()
                batch = self._next_batch(batches, state, skipped, counts.skipped)
                if not _all_min(batch is not None, self.device):
                    ran_out = True   # some rank has no full batch left: the epoch ends for all
                    if batch is not None:
                        counts.left_out["epoch_ended"] += len(batch["keys"])
                    break
                t_data = time.time() - t0
                lr = cosine_lr(step, cfg.lr, warmup, total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = normalize_images(batch["images"].to(self.device, non_blocking=True))
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                texts = batch["texts"].to(self.device, non_blocking=True)
                loss = backward_batch(model, images, texts, cfg.accum_steps, autocast, cfg.objective)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if contrastive:
                    clamp_logit_scale(raw)
                step, in_epoch = step + 1, in_epoch + 1
                counts.add(batch)
                dt = time.time() - t0
                step_times = (step_times + [dt])[-50:]
                pending.append({"step": step, "epoch": epoch, "lr": lr, "samples_per_s": global_batch / dt,
                                "data_s": t_data, "step_s": dt, "keys": keys_digest(batch["keys"])})
                values.append(torch.stack([loss.float(), raw.logit_scale.detach().float().exp() if contrastive
                                           else torch.zeros((), device=loss.device)]))
                evaluate = bool(cfg.eval_every and cfg.eval_data and (step % cfg.eval_every == 0 or step == total))
                save = step % cfg.save_every == 0 or step == total
                logging = step % cfg.log_every == 0 or step == total or step == 1
                if evaluate or save or logging:
                    # The only host synchronisation and the only collectives for the logged values:
                    # losses averaged over ranks, checked, and written with every rank's batch digests.
                    last_loss, scale = self._flush(pending, values, metrics, writer)
                    pending, values = [], []
                if evaluate:
                    eval_result = self._evaluate(raw, tokenizer, step, metrics, writer, workers, autocast)
                if logging:
                    mean_dt = sum(step_times) / len(step_times)
                    eta = (total - step) * mean_dt
                    self.log(f"step {step}/{total} epoch {epoch} loss {last_loss:.4f} lr {lr:.2e} "
                             f"{f'scale {scale:.1f}' if contrastive else cfg.objective} | "
                             f"{global_batch / mean_dt:,.0f} samples/s "
                             f"(data {100 * t_data / max(dt, 1e-9):.0f}%) | ETA {_duration(eta)}")
                if save:
                    self._save(raw, optimizer, tokenizer, step, epoch, in_epoch, state, skipped, counts, epochs)
            del batches
            epochs.append(self._epoch_record(epoch, urls, data_cfg, state, counts, "epoch_ended" if ran_out
                                             else "run_ended"))
            if ran_out and in_epoch == 0:
                totals = Counter()
                for c in _gather(dict(skipped)):
                    totals.update(c)
                raise NoUsableSamples(f"epoch {epoch} gave no full batch of {cfg.batch_size} usable samples "
                                      f"({_reasons(totals)})")
            if step < total:
                epoch, in_epoch, state, counts = epoch + 1, 0, None, _EpochCounts()

        totals: Counter = Counter()
        for c in _gather(dict(skipped)):
            totals.update(c)
        summary = {"steps": step, "epochs_started": epoch + 1, "final_loss": last_loss,
                   "samples_seen": step * global_batch, "loader_skipped": dict(totals), "epochs": epochs,
                   "seconds": round(time.time() - t_start, 1), "checkpoint": str(latest_checkpoint(self.out)),
                   "eval": eval_result}
        if self.main:
            metrics.close()
            if writer is not None:
                writer.close()
            write_json_atomic(self.out / "train_stats.json", summary)
            self.log(f"train: done, {step} steps, final loss {last_loss:.4f}, {_duration(summary['seconds'])}; "
                     f"skipped samples: {_reasons(totals)}; checkpoint {summary['checkpoint']}")
        return summary

    def _flush(self, pending: list[dict], values: list[torch.Tensor], metrics, writer) -> tuple[float, float]:
        """Write the metrics lines of the steps since the last flush: one all_reduce of their
        losses, one copy to the host, one gather of the ranks' batch digests. A non-finite loss
        stops the run here, before any checkpoint after it is written."""
        both = _mean_values(torch.stack(values)).tolist()
        digests = _gather([p["keys"] for p in pending])
        for i, (record, (loss, scale)) in enumerate(zip(pending, both)):
            if not math.isfinite(loss):
                raise TrainingError(
                    f"loss is {loss} at step {record['step']} (lr {record['lr']:.3g}); stopped without writing a "
                    f"checkpoint{'; last good one: ' + str(latest_checkpoint(self.out)) if latest_checkpoint(self.out) else ''}"
                    " — try a lower --lr, a longer --warmup or --grad-clip 1.0")
            if self.main:
                record = {"step": record["step"], "epoch": record["epoch"], "loss": loss, "lr": record["lr"],
                          "logit_scale": scale, "samples_per_s": record["samples_per_s"], "data_s": record["data_s"],
                          "step_s": record["step_s"], "keys": [d[i] for d in digests]}
                if self.cfg.objective != "contrastive":   # no temperature: the objective in its place
                    record = {k: v for k, v in record.items() if k != "logit_scale"}
                    record["objective"] = self.cfg.objective
                metrics.write(json.dumps(record) + "\n")
                if writer is not None:
                    for k in ("loss", "lr", "logit_scale", "samples_per_s"):
                        if k in record:
                            writer.add_scalar(f"train/{k}", record[k], record["step"])
        if self.main:
            metrics.flush()
        return both[-1][0], both[-1][1]

    def _epoch_record(self, epoch, urls, data_cfg, state, counts, reason) -> dict:
        """This epoch's counts over all ranks (every rank calls it): samples trained on, distinct
        among them, skipped by reason, and left out when the epoch or the run ended with samples
        still unread (what each worker had not reached, from the shards' sizes). With sizes known,
        the parts sum to the shards' total; `unaccounted` says by how much they do not."""
        lengths = slot_lengths(data_cfg, epoch, self.rank, self.world)
        if lengths is not None and state is not None:
            for w, n in enumerate(lengths):
                if not state.done[w] and n > state.cursors[w]:
                    counts.left_out[reason] += n - state.cursors[w]
        parts = _gather(counts.to_dict())
        total = count_samples(urls) if not data_cfg.resampled else None
        record = {"epoch": epoch, "samples": total, "seen": sum(p["seen"] for p in parts),
                  # ranks read disjoint pieces of the shards: distinct counts add up across ranks
                  "distinct": sum(p["distinct"] for p in parts), "skipped": {}, "left_out": {}}
        for key in ("skipped", "left_out"):
            c = Counter()
            for p in parts:
                c.update(p[key])
            record[key] = dict(sorted(c.items()))
        if total is not None and lengths is not None:
            record["unaccounted"] = total - record["seen"] - sum(record["skipped"].values()) - \
                sum(record["left_out"].values())
        return record

    def _next_batch(self, batches, state: LoaderState, skipped: Counter, epoch_skipped: Counter):
        """The next item with images; items that only carry counts are taken into the totals."""
        for item in batches:
            state.consume(item)
            skipped.update(item.get("skipped", {}))
            epoch_skipped.update(item.get("skipped", {}))
            if item.get("images") is not None:
                return item
        return None

    def _init_payload(self, resumed):
        if not self.cfg.init_from or resumed is not None:
            return None
        try:
            return load_checkpoint(self.cfg.init_from)
        except (UserError, FileNotFoundError, ValueError) as e:  # refused or missing: one line, on every rank
            raise TrainingError(str(e)) from None

    def _resume_payload(self) -> dict | None:
        if not self.cfg.resume:
            return None
        spec = self.out if self.cfg.resume == "latest" else Path(self.cfg.resume)
        try:
            payload = load_checkpoint(resolve_checkpoint(spec))
        except (FileNotFoundError, ValueError) as e:
            raise TrainingError(f"--resume: {e}") from None
        if "optimizer" not in payload or "data" not in payload:
            raise TrainingError("--resume needs a clipforge training checkpoint; for weights alone use --init-from")
        theirs = payload.get("train_config", {})
        theirs = {"objective": payload.get("objective", "contrastive"), **theirs}
        for key in ("objective", "model", "batch_size", "seed", "accum_steps", "resampled", "shuffle_buffer"):
            if key in theirs and theirs[key] != getattr(self.cfg, key):
                raise TrainingError(f"--resume: the checkpoint was trained with {key}={theirs[key]!r}, "
                                    f"not {getattr(self.cfg, key)!r}")
        return payload

    def _save(self, raw, optimizer, tokenizer, step, epoch, in_epoch, state, skipped, counts, epochs):
        ranks = _gather(state.to_dict())
        all_skipped = _gather(dict(skipped))
        epoch_counts = _gather(counts.to_dict())
        if not self.main:
            return
        totals = Counter()
        for c in all_skipped:
            totals.update(c)
        payload = {"model": raw.state_dict(), "model_config": raw.config.to_dict(), "bpe_merges": tokenizer.merges, "token_ids": TOKEN_IDS,
                   "context_length": tokenizer.context_length, "step": step, "optimizer": optimizer.state_dict(),
                   "train_config": asdict(self.cfg),
                   "data": {"epoch": epoch, "steps_in_epoch": in_epoch, "ranks": ranks, "skipped": dict(totals),
                            "epoch_counts": epoch_counts, "epochs": epochs}}
        if self.cfg.objective != "contrastive":   # a contrastive checkpoint stays as it was (no key: contrastive)
            payload["objective"] = self.cfg.objective
        save_checkpoint(self.out, step, payload, keep=self.cfg.keep)

    def _truncate_metrics(self, step: int):
        """A resumed run rewrites what came after its checkpoint. A line cut short by the crash (the
        process killed while writing it) is dropped with the rest after the checkpoint."""
        path = self.out / "metrics.jsonl"
        if not self.main or not path.exists():
            return
        kept = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

    def _tensorboard(self, step: int):
        if not (self.main and self.cfg.tensorboard):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("train: tensorboard is not installed; metrics go to metrics.jsonl only", file=sys.stderr)
            return None
        return SummaryWriter(str(self.out / "tensorboard"), purge_step=step + 1 if step else None)

    def _evaluate(self, raw, tokenizer, step, metrics, writer, workers, autocast):
        """Every rank evaluates a slice of the set (loader workers, the run's autocast); the counts
        are summed over ranks, so no rank waits in a collective while rank 0 works alone."""
        from clipforge.trainer.zeroshot import evaluate_during_training

        result = evaluate_during_training(raw, tokenizer, self.cfg.eval_data, self.device, self.rank, self.world,
                                          workers, autocast)
        if self.main and result is not None:
            record = {"step": step, "eval": result}
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            if writer is not None:
                for k, v in result.items():
                    if isinstance(v, (int, float)):
                        writer.add_scalar(f"eval/{k}", v, step)
            self.log(f"eval at step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()
                                                          if isinstance(v, float)))
        return result


def objective_label(objective: str) -> str:
    return {"contrastive": "contrastive", "bow": "bag-of-words", "caption": "captioning"}[objective]


class _EpochCounts:
    """One rank's counts for the epoch under way. Distinct samples are counted from 64-bit sample
    ids kept for the epoch (8 bytes a sample); across a resume, the part before it is a count."""

    def __init__(self, seen: int = 0, distinct: int = 0, skipped=None, left_out=None):
        self.seen, self.distinct_before = seen, distinct
        self.skipped, self.left_out = Counter(skipped or {}), Counter(left_out or {})
        self.ids: list[np.ndarray] = []

    def add(self, batch: dict):
        self.seen += len(batch["keys"])
        if "ids" in batch:
            self.ids.append(np.asarray(batch["ids"]))

    def to_dict(self) -> dict:
        self.ids = [np.unique(np.concatenate(self.ids))] if self.ids else []
        return {"seen": self.seen, "distinct": self.distinct_before + (self.ids[0].size if self.ids else 0),
                "skipped": dict(self.skipped), "left_out": dict(self.left_out)}


def _reasons(counts) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def learn_bpe(cfg: TrainConfig) -> Path:
    """Learn the vocabulary from the shards' captions, write OUT/bpe.txt.gz and stop: its own step
    (one process), so a multi-node run starts from the file instead of rank 0 learning it while
    the others wait in a collective."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainingError("--learn-bpe-only runs as one process: run it before torchrun, not under it")
    if cfg.bpe:
        raise TrainingError("--learn-bpe-only learns a vocabulary; --bpe gives one: pass one or the other")
    path = Path(cfg.out) / "bpe.txt.gz"
    if path.exists():
        raise TrainingError(f"{path} already exists; the run will use it (delete it to learn a new one)")
    urls = expand_shards(cfg.train_data)
    vocab = cfg.vocab_size or model_config(cfg.model).text.vocab_size
    t0 = time.time()
    merges = train_bpe(read_captions(urls, cfg.bpe_samples), vocab_size=vocab)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_merges(path, merges)
    print(f"tokenizer: {len(merges) + 514:,} ids learned from the shards' captions in {time.time() - t0:.1f} s "
          f"-> {path}; `clipforge train` with --out {cfg.out} uses it", flush=True)
    return path


def train(cfg: TrainConfig) -> dict:
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    try:
        return Run(cfg).run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        global _CONTROL
        _CONTROL = None
