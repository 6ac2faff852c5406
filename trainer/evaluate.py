"""`clipforge eval` as a function: a checkpoint's zero-shot classification and retrieval on the
sets of an EvalConfig, written to eval.json (every metric) and confusion_*.png."""

from dataclasses import dataclass, field
from pathlib import Path

from clipforge.errors import UserError


@dataclass
class EvalConfig:
    checkpoint: str                                  # a clipforge checkpoint or run directory, or OpenAI-format weights
    imagefolder: list = field(default_factory=list)  # ImageFolder trees ROOT/CLASS/IMAGE
    wds: list = field(default_factory=list)          # labelled test shards
    retrieval: list = field(default_factory=list)    # image-text shards
    classnames: str = None                           # class names file, one per line in label order
    templates: str = None                            # prompt templates file (default: the built-in set)
    bpe: str = None                                  # BPE merges file for OpenAI-format weights
    out: str = None                                  # output directory (default: RUN_DIR/eval, or ./eval)
    batch_size: int = 256
    workers: int = 2
    overlap: str = None                              # a `clipforge overlap` directory: also each set's clean split


def device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def output_dir(out, ckpt, name):
    """The output directory of eval and score: ``out``, else RUN_DIR/eval for a run's checkpoint,
    else ./eval. A path that exists as a file is refused in one line."""
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    d = Path(out) if out else (run_dir / "eval" if run_dir else Path("eval"))
    if d.exists() and not d.is_dir():
        older = " (or a path ending in .parquet for one file, the older form)" if name == "scores.parquet" else ""
        raise UserError(f"--out {d} is a file: --out is a directory, which gets {name}; "
                        f"give another path{older}")
    return d


def overlapping_images(overlap_dir):
    """{evaluation set directory (resolved): {CLASS/FILE of its images with a copy in the shards}}
    from a `clipforge overlap` directory."""
    import json

    from clipforge.errors import InputError, MissingInput

    path = Path(overlap_dir) / "overlap.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        return {Path(name).resolve(): {p["eval"] for p in v["pairs"]} for name, v in report["sets"].items()}
    except FileNotFoundError:
        raise MissingInput(f"--overlap {overlap_dir}: no overlap.json (write one with `clipforge overlap`)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not an overlap report ({e})") from None


def evaluate(cfg: EvalConfig) -> dict:
    """Evaluate; returns {"checkpoint": Path, "out": Path, "results": {set name: metrics}}."""
    from clipforge.schemas.files import write_json_atomic
    from clipforge.trainer.checkpoint import resolve_checkpoint
    from clipforge.trainer.zeroshot import (TEMPLATES, evaluate_imagefolder, evaluate_retrieval, evaluate_wds,
                                            load_model, plot_confusion, read_templates)

    ckpt = resolve_checkpoint(cfg.checkpoint)
    templates = read_templates(cfg.templates) if cfg.templates else TEMPLATES
    dev = device()
    model, tokenizer = load_model(ckpt, cfg.bpe, dev)
    out = output_dir(cfg.out, ckpt, "eval.json")
    results, names = {}, set()

    def name_of(spec):
        base = Path(str(spec).split("::")[0].split("{")[0]).name or Path(str(spec)).parent.name
        base = base.removesuffix(".tar") or "set"
        n, i = base, 2
        while n in names:
            n, i = f"{base}-{i}", i + 1
        names.add(n)
        return n

    kw = dict(device=dev, batch_size=cfg.batch_size, workers=cfg.workers)
    copies = overlapping_images(cfg.overlap) if cfg.overlap else None
    for folder in cfg.imagefolder:
        found = None if copies is None else copies.get(Path(folder).resolve(), set())
        results[name_of(folder)] = evaluate_imagefolder(model, tokenizer, folder, cfg.classnames, templates, **kw,
                                                        overlapping=found)
    for shards in cfg.wds:
        results[name_of(shards)] = evaluate_wds(model, tokenizer, shards, cfg.classnames, templates, **kw)
    for shards in cfg.retrieval:
        results[name_of(shards)] = evaluate_retrieval(model, tokenizer, shards, **kw)
    for name, r in results.items():
        if "confusion_matrix" in r:
            plot_confusion(r["confusion_matrix"], r["classnames"],
                           out / f"confusion_{name}.png", f"{name}: top-1 {100 * r['top1']:.1f}% "
                           f"(chance {100 * r['chance_top1']:.1f}%), {ckpt.name}")
    write_json_atomic(out / "eval.json", {"checkpoint": str(ckpt), "templates": len(templates), "results": results})
    return {"checkpoint": ckpt, "out": out, "results": results}
