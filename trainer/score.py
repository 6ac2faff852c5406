"""`clipforge score` as a function: the CLIP score (cosine similarity of the image and text
embeddings) of every pair in shards or parquet, written to scores.parquet (key, caption, similarity)."""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clipforge.trainer.evaluate import device, output_dir


@dataclass
class ScoreConfig:
    checkpoint: str        # a clipforge checkpoint or run directory, or OpenAI-format weights (with bpe)
    pairs: str             # shards (directory, brace pattern, pipe:) or parquet with image bytes
    out: str = None        # a directory that gets scores.parquet (default: RUN_DIR/eval, or ./eval);
    #                        a path ending in .parquet is that file (the older form)
    bpe: str = None
    batch_size: int = 256
    workers: int = 2


def _note(message):
    print(message, file=sys.stderr)


def score(cfg: ScoreConfig, note=_note) -> dict:
    """Score every pair; returns {"out", "pairs", "seconds", "quantiles" (p10, median, p90), "skipped"}.
    ``note`` gets the one-line note on the older --out form."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipforge.trainer.checkpoint import resolve_checkpoint
    from clipforge.trainer.evalsets import parquet_pairs, shard_samples
    from clipforge.trainer.zeroshot import load_model, score_pairs

    ckpt = resolve_checkpoint(cfg.checkpoint)
    if cfg.out and cfg.out.endswith(".parquet"):
        out = Path(cfg.out)
        note(f"score: note: --out {cfg.out} ends in .parquet, so it is written as that file; --out is now a "
             "directory, as for eval (it gets scores.parquet)")
    else:
        out = output_dir(cfg.out, ckpt, "scores.parquet") / "scores.parquet"
    dev = device()
    model, tokenizer = load_model(ckpt, cfg.bpe, dev)
    src = Path(cfg.pairs)
    t0 = time.time()
    if src.suffix == ".parquet" or (src.is_dir() and not list(src.glob("*.tar")) and list(src.glob("*.parquet"))):
        batches, skipped = parquet_pairs(src, model.image_size, cfg.batch_size)
    else:
        batches, skipped = shard_samples(cfg.pairs, model.image_size, "text", cfg.batch_size, cfg.workers)
    keys, captions, sims = score_pairs(model, tokenizer, batches, dev)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"key": pa.array(keys, pa.string()), "caption": pa.array(captions, pa.string()),
                      "similarity": pa.array(sims, pa.float32())})
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    q = np.quantile(sims, [0.1, 0.5, 0.9]) if len(sims) else [float("nan")] * 3
    return {"out": out, "pairs": len(sims), "seconds": time.time() - t0, "quantiles": [float(x) for x in q],
            "skipped": dict(skipped)}
