"""CLIP's text tokenizer: byte-level BPE over cleaned, lower-cased text, context 77.

A vocabulary is a merges file in CLIP's format (`bpe_simple_vocab_16e6.txt.gz`: a `#version`
line, then one merge `a b` per line). Token ids follow CLIP's layout: the 256 byte characters,
the same with the end-of-word mark `</w>`, one id per merge in order, then `<|startoftext|>`
and `<|endoftext|>`, so end-of-text is the highest id (the text tower reads its feature there).

`train_bpe` learns merges from a dataset's own captions with the `tokenizers` library;
`Tokenizer.from_file` loads them, or CLIP's released file (of which CLIP uses the first 48,894
merges, giving 49,408 ids). Encoding runs in `tokenizers` (Rust).
"""

from __future__ import annotations

import gzip
import html
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CLIP_MERGES = 49152 - 256 - 2   # how many of its file's merges CLIP's tokenizer reads
HEADER = "#version: 0.2 clipforge"
# CLIP's pre-tokenisation: contractions, runs of letters, single digits, runs of other symbols.
SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_WS = re.compile(r"\s+")


@lru_cache()
def byte_alphabet() -> dict[int, str]:
    """Each byte to a printable character, so BPE never sees whitespace or control bytes.

    Printable Latin-1 bytes keep their own character; the rest are shifted above U+0100.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, shift = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def clean(text: str) -> str:
    """CLIP's text cleaning: repair mojibake, unescape HTML twice, collapse whitespace, lower-case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WS.sub(" ", text).strip().lower()


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a BPE merges file ({e})") from None
    header, body = (lines[0], lines[1:]) if lines and lines[0].startswith("#") else ("", lines)
    merges = [tuple(line.split()) for line in body if line.strip()]
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: not a BPE merges file (a line is not two space-separated symbols)")
    if not header.startswith(HEADER):
        merges = merges[:CLIP_MERGES]   # CLIP's released file: CLIP reads only its first merges
    if not merges:
        raise ValueError(f"{path}: no merges")
    return merges


def write_merges(path: str | Path, merges: list[tuple[str, str]]):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.write(HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tmp.replace(path)


def train_bpe(texts: Iterable[str], vocab_size: int = 49408, min_frequency: int = 2) -> list[tuple[str, str]]:
    """Learn merges from captions; the vocabulary is at most `vocab_size` ids (fewer if the text runs out)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    if vocab_size <= 514:
        raise ValueError("vocab_size must exceed 514 (512 byte symbols and two special tokens)")
    tok = HFTokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>")
    tok.train_from_iterator((clean(t) for t in texts), trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    return merges[:vocab_size - 514]


class Tokenizer:
    """Text to fixed-length id tensors the way CLIP does it; picklable into loader workers."""

    def __init__(self, merges: list[tuple[str, str]], context_length: int = 77):
        self.merges = [tuple(m) for m in merges]
        self.context_length = context_length
        symbols = list(byte_alphabet().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in self.merges] + [SOT, EOT]
        self.vocab = vocab
        self.sot_id, self.eot_id = len(vocab) - 2, len(vocab) - 1
        self._hf = None

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = 77) -> "Tokenizer":
        return cls(read_merges(path), context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _backend(self):
        if self._hf is None:
            from tokenizers import Tokenizer as HFTokenizer
            from tokenizers import models

            # Later duplicates (rare in odd merge lists) must not shadow the first id.
            ids = {}
            for i, t in enumerate(self.vocab):
                ids.setdefault(t, i)
            self._hf = HFTokenizer(models.BPE(vocab=ids, merges=self.merges, end_of_word_suffix="</w>"))
            self._hf.pre_tokenizer = _pre_tokenizer()
        return self._hf

    def __getstate__(self):
        return {"merges": self.merges, "context_length": self.context_length}

    def __setstate__(self, state):
        self.__init__(state["merges"], state["context_length"])

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens and without truncation."""
        return self._backend().encode(clean(text)).ids

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        """[n, context] int64 ids: start, tokens, end, zero padding; too-long texts keep the end token."""
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = np.zeros((len(texts), n), dtype=np.int64)
        for row, enc in enumerate(self._backend().encode_batch([clean(t) for t in texts])):
            ids = [self.sot_id] + enc.ids[:n - 2] + [self.eot_id]
            out[row, :len(ids)] = ids
        return torch.from_numpy(out)

    def decode(self, ids) -> str:
        """Text of ids (as from `__call__`): reads after the start token, stops at the end token."""
        decoder = {c: b for b, c in byte_alphabet().items()}
        ids = [int(i) for i in ids]
        if ids and ids[0] == self.sot_id:
            ids = ids[1:]
        if self.eot_id in ids:
            ids = ids[:ids.index(self.eot_id)]
        tokens = [self.vocab[i] for i in ids if 0 <= i < self.sot_id]
        text = "".join(tokens).replace("</w>", " ")
        return bytearray(decoder[c] if c in decoder else ord(" ") for c in text).decode("utf-8", "replace").strip()
