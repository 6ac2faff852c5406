"""CLIP's text tokenizer: byte-level BPE over cleaned, lower-cased text, context 77.

A vocabulary is a merges file in CLIP's format: a header line, then one merge `a b` per line.
CLIP's released `bpe_simple_vocab_16e6.txt.gz` (it ships with open_clip and OpenAI's CLIP) loads
as released; its header line is `"bpe_simple_vocab_16e6.txt#version: 0.2`. Token ids follow
CLIP's layout: the 256 byte characters in CLIP's order (the printable bytes `!`..`~`, `¡`..`¬`,
`®`..`ÿ` first, then the other 68), the same with the end-of-word mark `</w>`, one id per merge in
order, then `<|startoftext|>` and `<|endoftext|>`, so end-of-text is the highest id (the text tower
reads its feature there). With CLIP's file the ids are CLIP's: "a photo of a cat" is
49406 320 1125 539 320 2368 49407. The tests check this against open_clip's own tokenizer.

Text is cleaned as open_clip cleans it (ftfy, HTML unescaped twice, whitespace runs to one
space, lower case), with the same libraries. Text that spells a special token is ordinary text
here (open_clip turns `<start_of_text>` into the start token, OpenAI's code `<|startoftext|>`).

`train_bpe` learns merges from a dataset's own captions with the `tokenizers` library;
`Tokenizer.from_file` loads them, or CLIP's released file (of which CLIP uses the first 48,894
merges, giving 49,408 ids). Text is split into pre-tokens by the `regex` module (CLIP's engine,
so its Unicode tables decide); BPE within them runs in `tokenizers` (Rust).
"""

from __future__ import annotations

import gzip
import html
import json
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
import regex
import torch

from clipforge.errors import InputError

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CLIP_MERGES = 49152 - 256 - 2   # how many of its file's merges CLIP's tokenizer reads
HEADER = "#version: 0.2 clipforge"
# CLIP's pre-tokenisation: contractions, runs of letters, single digits, runs of other symbols;
# whitespace separates and is dropped. Case-insensitive, and run by the `regex` module as CLIP's
# is: its Unicode tables and case folding decide what a letter is (tokenizers' own regex engine
# is older and disagrees on ~17k recent letters and on U+0345).
SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_WORDS = regex.compile(SPLIT, regex.IGNORECASE)


@lru_cache()
def byte_alphabet() -> dict[int, str]:
    """Each byte to a printable character, so BPE never sees whitespace or control bytes.

    Printable Latin-1 bytes keep their own character; the other 68 are shifted above U+0100, in
    byte order. The dict's order is CLIP's order of the 256 base symbols (printable bytes first),
    which fixes the ids 0..511.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    rest = [b for b in range(256) if b not in mapping]
    mapping.update({b: chr(256 + i) for i, b in enumerate(rest)})
    return mapping


def clean(text: str) -> str:
    """CLIP's text cleaning: repair mojibake, unescape HTML twice, collapse whitespace, lower-case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def words(text: str) -> list[str]:
    """The pre-tokens of a cleaned text (BPE runs within each)."""
    return _WORDS.findall(text)


def _byte_level():
    from tokenizers import pre_tokenizers

    # The bytes of each pre-token as CLIP's printable characters (the same table as byte_alphabet).
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


def _is_header(line: str) -> bool:
    # Ours and Hugging Face's start with "#version:"; CLIP's released file has
    # `"bpe_simple_vocab_16e6.txt#version: 0.2` (the file name before it).
    return line.startswith("#") or "#version:" in line


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """The merges of a merges file; a file that is not one raises ValueError with one line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a BPE merges file ({type(e).__name__}: {e})") from None
    header, body = (lines[0], lines[1:]) if lines and _is_header(lines[0]) else ("", lines)
    merges = [tuple(line.split()) for line in body if line.strip()]
    bad = next((i for i, m in enumerate(merges) if len(m) != 2), None)
    if bad is not None:
        raise InputError(f"{path}: not a BPE merges file (a line is not two space-separated symbols: "
                         f"{' '.join(merges[bad])[:60]!r})")
    if not header.startswith(HEADER):
        merges = merges[:CLIP_MERGES]   # CLIP's released file: CLIP reads only its first merges
    if not merges:
        raise InputError(f"{path}: no merges")
    try:
        check_merges(merges)
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None
    return merges


def check_merges(merges: list[tuple[str, str]]):
    """ValueError (one line) unless each merge joins two symbols that bytes or earlier merges make."""
    symbols = set(byte_alphabet().values())
    known = symbols | {s + "</w>" for s in symbols}
    for i, m in enumerate(merges):
        if len(m) != 2:
            raise InputError(f"not a BPE vocabulary: merge {i + 1} is not a pair of symbols ({repr(m)[:60]})")
        a, b = m
        if a not in known or b not in known:
            raise InputError(f"not a BPE vocabulary: merge {i + 1} ({a} {b!s:.40}) joins a symbol that neither a "
                             "byte nor an earlier merge makes")
        known.add(a + b)


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
        raise InputError("vocab_size must exceed 514 (512 byte symbols and two special tokens)")
    tok = HFTokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = _byte_level()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>")
    # One pre-token per item, split exactly as encoding splits (the trainer counts each as a word).
    tok.train_from_iterator((w for t in texts for w in words(clean(t))), trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    return merges[:vocab_size - 514]


class Tokenizer:
    """Text to fixed-length id tensors the way CLIP does it; picklable into loader workers."""

    def __init__(self, merges: list[tuple[str, str]], context_length: int = 77):
        self.merges = [tuple(m) for m in merges]
        check_merges(self.merges)
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

            # A string made twice (two merges can give the same symbol) takes its last id, as in CLIP.
            ids = {t: i for i, t in enumerate(self.vocab)}
            try:
                hf = HFTokenizer(models.BPE(vocab=ids, merges=self.merges, end_of_word_suffix="</w>"))
            except Exception as e:   # check_merges should have caught it; still one line, no traceback
                raise InputError(f"not a BPE vocabulary ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
            hf.pre_tokenizer = _byte_level()
            self._hf = hf
        return self._hf

    def __getstate__(self):
        return {"merges": self.merges, "context_length": self.context_length}

    def __setstate__(self, state):
        self.__init__(state["merges"], state["context_length"])

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens and without truncation."""
        return self._backend().encode(words(clean(text)), is_pretokenized=True).ids

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        """[n, context] int64 ids: start, tokens, end, zero padding; too-long texts keep the end token."""
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = np.zeros((len(texts), n), dtype=np.int64)
        batch = self._backend().encode_batch([words(clean(t)) for t in texts], is_pretokenized=True)
        for row, enc in enumerate(batch):
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
