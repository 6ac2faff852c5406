"""The tokenizer against an implementation we did not write: open_clip's own `tokenizer.py`.

The oracle is the file as the `open_clip_torch` wheel ships it, installed without dependencies
by `make setup` and loaded by path (the package's `__init__` imports torchvision, which does not
load beside this CPU torch). The released vocabulary, `bpe_simple_vocab_16e6.txt.gz`, comes from
the same wheel. Real texts come from tests/data (LAION-style captions, alt texts of two real
crawls, sentences and paragraphs of a Wikipedia dump); the texts written here are the hard cases.
"""

import bz2
import gzip
import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from clipforge.trainer.tokenizer import (CLIP_MERGES, HEADER, SOT, Tokenizer, byte_alphabet, check_merges, clean,
                                         read_merges, train_bpe, words, write_merges)
from conftest import shared_file

# Published ids for CLIP's released vocabulary (start, tokens, end).
PUBLISHED = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
}

# Hard cases, written here: emoji sequences, scripts, combining marks, whitespace and control
# characters, mojibake, HTML entities, digits of many scripts, contractions, letters new in
# recent Unicode versions, and texts longer than the context.
HARD = [
    "🐶🐱 dog & cat 😂😂😂", "👨‍👩‍👧‍👦 family portrait", "flags 🇩🇪🇫🇷🇯🇵", "thumbs up 👍🏽👍🏿", "❤️ love ☕",
    "东京タワーの夜景 서울 야경", "مرحبا بالعالم صورة", "שלום עולם", "हिन्दी में फ़ोटो", "Ελληνικά κείμενα", "ไทย ภาษา",
    "e\u0301te\u0301 cafe\u0301", "\u0345x \u0345", "Z\u0351\u0352a\u0353l\u0354g\u0355o", "İstanbul ǅ ǈ ﬁ ß ẞ",
    "a\u00a0b\u2009c\u3000d\te\nf\r\ng\u2028h\u2029i", "\u200bzero\u200bwidth\ufeff", "\x1c\x1d\x1e\x1f separators",
    "a\x85b next line", "nul\x00byte and bell\x07", "x\u180ey mongolian", "\t\n  ", "",
    "CafÃ© au lait", "â€œquotedâ€\x9d text", "98a8e084.jpg (781Ã\x97451)",
    "Tom &amp;amp; Jerry &lt;3 &#x1F600; &eacute;", "<b>bold</b>&nbsp;text <br/>", "5 &gt; 3 &unknown; &#0;",
    "1234567890 ½ ² ٣٤ ௮ Ⅻ ① ١٢٣", "I'M SURE IT'S, THEY'RE, WE'VE, YOU'LL, HE'D, DON'T", "it'ſ ok, it’s curly",
    "<|startoftext|> spelled out <|endoftext|>", "𝐀𝐁𝐂 𝕏 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ＡＢＣ１２３ full width", "x_y__z snake_case",
    "\u0c5c\ua7ce\U00010940 recent letters", "\U0001E4D0\U0001E4D1 nag mundari", "www.example.com/a?b=c&d=e#f",
    "email@example.org #hashtag @user", "C++ / C# / .NET --- ... !!! ???", "$100.00 €50 ¥1000 £5",
    "word " * 100, "a" * 500, "😀" * 100, "x" + "\u0301" * 200, "one two three " * 40 + "end",
    "Übergrößenträger " * 30,
]
SPECIAL_SPELLINGS = ("<start_of_text>", "<end_of_text>")   # open_clip's special-token strings


@pytest.fixture(scope="module")
def openclip():
    """open_clip's tokenizer module, from the installed wheel's file (installed by `make setup`)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.fail("open_clip_torch is not installed: `make setup` installs it (--no-deps) as the oracle")
    folder = Path(list(spec.submodule_search_locations)[0])
    file_spec = importlib.util.spec_from_file_location("openclip_tokenizer_oracle", folder / "tokenizer.py")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    module.BPE_FILE = folder / "bpe_simple_vocab_16e6.txt.gz"
    return module


@pytest.fixture(scope="module")
def oracle(openclip):
    return openclip.SimpleTokenizer(str(openclip.BPE_FILE))


@pytest.fixture(scope="module")
def clip(openclip):
    return Tokenizer.from_file(openclip.BPE_FILE)


def _real_texts() -> list[str]:
    """At least 5,000 real texts: captions, alt texts, Wikipedia sentences, paragraphs, wikitext."""
    import mwparserfromhell
    import pyarrow.parquet as pq
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding
    from selectolax.lexbor import LexborHTMLParser

    captions = pq.read_table(shared_file("pairs/laion-style-1000.parquet")).column("TEXT").to_pylist()
    alts = []
    for name in ("web/cc-main-2020-34-slice.warc.gz", "web/dolma-sample-0000.warc.gz"):
        with open(shared_file(name), "rb") as f:
            for record in ArchiveIterator(f, record_types=WarcRecordType.response):
                body = record.reader.read()
                for img in LexborHTMLParser(bytes_to_str(body, detect_encoding(body))).css("img"):
                    alt = img.attributes.get("alt")
                    if alt and alt.strip() and alt not in alts:
                        alts.append(alt)
    sentences, paragraphs, wikitext = [], [], []
    with bz2.open(shared_file("wiki/enwiki-pages-articles-excerpt.xml.bz2")) as f:
        for _, el in ET.iterparse(f):
            if el.tag.endswith("}text") and el.text and not el.text.lower().startswith("#redirect"):
                wikitext += [line for line in el.text.split("\n") if len(line) > 30][:10]
                for para in mwparserfromhell.parse(el.text).strip_code().split("\n"):
                    para = para.strip()
                    if len(para) > 400:
                        paragraphs.append(para)
                    sentences += [s for s in re.split(r"(?<=[.!?])\s+", para) if len(s) >= 20]
            el.clear()
            if len(sentences) >= 3500 and len(paragraphs) >= 200 and len(wikitext) >= 300:
                break
    return captions + alts + sentences[:3500] + paragraphs[:200] + wikitext[:300]


def _assert_same_ids(ours: torch.Tensor, theirs: torch.Tensor, texts: list[str]):
    differ = (ours != theirs).any(dim=1).nonzero().flatten().tolist()
    assert not differ, (f"{len(differ)} of {len(texts)} texts get other ids than open_clip's, e.g. "
                        f"{texts[differ[0]][:80]!r}: {ours[differ[0]].tolist()[:12]} vs {theirs[differ[0]].tolist()[:12]}")


# --- CLIP's released vocabulary ----------------------------------------------------------------

def test_released_bpe_file_loads_as_released(openclip, oracle, clip):
    with gzip.open(openclip.BPE_FILE, "rt", encoding="utf-8") as f:
        assert f.readline().startswith('"bpe_simple_vocab_16e6.txt#version:')   # not a '#' line
    merges = read_merges(openclip.BPE_FILE)
    assert len(merges) == CLIP_MERGES and merges[0] == ("i", "n")
    assert clip.vocab_size == 49408 == oracle.vocab_size and (clip.sot_id, clip.eot_id) == (49406, 49407)
    # Every id means the same string (the special tokens' names aside).
    assert clip.vocab[:49406] == [oracle.decoder[i] for i in range(49406)]
    assert list(byte_alphabet().items()) == list(openclip.bytes_to_unicode().items())


@pytest.mark.parametrize("text", sorted(PUBLISHED))
def test_published_ids(clip, text):
    row = clip(text)[0].tolist()
    assert row[:len(PUBLISHED[text])] == PUBLISHED[text] and not any(row[len(PUBLISHED[text]):])
    assert clip.encode(text) == PUBLISHED[text][1:-1]


@pytest.mark.slow
def test_ids_equal_open_clip_on_5000_real_texts(clip, oracle):
    texts = _real_texts()
    assert len(texts) >= 5000
    assert not any(s in t.lower() for t in texts for s in SPECIAL_SPELLINGS)
    theirs = oracle(texts)
    _assert_same_ids(clip(texts), theirs, texts)
    # The sample is what it should be: non-ASCII texts, and texts cut at the context (end kept).
    assert sum(any(ord(c) > 127 for c in t) for t in texts) > 500
    assert int((theirs[:, -1] == 49407).sum()) > 300


def test_ids_equal_open_clip_on_hard_texts(clip, oracle):
    _assert_same_ids(clip(HARD), oracle(HARD), HARD)
    _assert_same_ids(clip(HARD, context_length=16), oracle(HARD, context_length=16), HARD)
    for text in HARD:
        assert clip.encode(text) == oracle.encode(text), text
        ids = oracle.encode(text)
        if ids:
            # Decoding: the cleaned text, each pre-token followed by a space (open_clip's decode).
            assert clip.decode(clip(text)[0]) == oracle.decode(ids[:75]).strip()


def test_truncation_keeps_the_end_token_as_open_clip(clip, oracle):
    text = " ".join(f"word{i}" for i in range(100))
    ids = clip.encode(text)
    assert len(ids) > 200
    row = clip(text)[0].tolist()
    assert len(row) == 77 and row == [49406] + ids[:75] + [49407] == oracle(text)[0].tolist()
    exact = clip.encode("a " * 75)   # 75 tokens: start + 75 + end fills the context exactly
    assert len(exact) == 75 and clip("a " * 75)[0].tolist() == [49406] + exact + [49407]
    assert clip("a " * 76)[0].tolist() == [49406] + exact + [49407]


def test_text_spelling_a_special_token_stays_text(clip, oracle):
    # open_clip turns its special-token strings inside a text into the start/end ids (OpenAI's code
    # does the same for `<|startoftext|>`); here a caption cannot inject control tokens.
    for spelling in SPECIAL_SPELLINGS + (SOT,):
        ids = clip.encode(f"a {spelling} b")
        assert 49406 not in ids and 49407 not in ids
    assert 49406 in oracle.encode("a <start_of_text> b")


def test_cleaning_is_open_clips(openclip):
    for text in HARD + ["A&amp;amp;B  \n C", "cafÃ©"]:
        assert clean(text) == openclip._clean_lower(text)
    assert clean("A&amp;amp;B  \n C") == "a&b c" and clean("cafÃ©") == "café"


# --- vocabularies learned from captions --------------------------------------------------------

CAPTIONS = ["a red circle on a white background", "Ein roter Kreis auf weißem Grund", "three blue squares!! 42",
            "it's the dog's toy &amp; more", "  Photo   of a   GREEN star  ", "naïve café — déjà vu",
            "东京タワーの夜景 🐶🐱", "Привет, мир! Фото кота"] * 30


def _released_layout(path: Path, merges):
    """A merges file laid out as CLIP's released one: a quoted header line, no trailing newline."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(f'"{path.name}#version: 0.2\n' + "\n".join(f"{a} {b}" for a, b in merges))


def test_learned_vocabulary_gives_open_clips_ids(openclip, tmp_path):
    merges = train_bpe(CAPTIONS, vocab_size=900)
    assert 100 < len(merges) <= 900 - 514
    _released_layout(tmp_path / "learned.txt.gz", merges)
    oracle = openclip.SimpleTokenizer(str(tmp_path / "learned.txt.gz"))
    ours = Tokenizer.from_file(tmp_path / "learned.txt.gz")
    assert ours.merges == merges and ours.vocab_size == oracle.vocab_size == 514 + len(merges)
    assert (ours.sot_id, ours.eot_id) == (oracle.sot_token_id, oracle.eot_token_id) == (ours.vocab_size - 2, ours.vocab_size - 1)
    texts = CAPTIONS[:8] + ["unseen wörds: zebra 2024!"] + HARD
    _assert_same_ids(ours(texts), oracle(texts), texts)
    # Pre-tokens are CLIP's: BPE never merges across them.
    assert all(" " not in "".join(m) for m in merges)
    assert words(clean("It's 42 cats!!")) == ["it", "'s", "4", "2", "cats", "!!"]


def test_merges_files_roundtrip_and_clip_file_convention(tmp_path):
    merges = train_bpe(CAPTIONS, vocab_size=700)
    write_merges(tmp_path / "bpe.txt.gz", merges)
    assert read_merges(tmp_path / "bpe.txt.gz") == merges
    with gzip.open(tmp_path / "bpe.txt.gz", "rt") as f:
        assert f.readline().rstrip("\n") == HEADER
    # A file in CLIP's layout is read as CLIP reads it: only its first 48,894 merges (49,408 ids).
    alphabet = list(byte_alphabet().values())
    long = [(alphabet[i % 188], alphabet[(i // 188) % 188]) for i in range(CLIP_MERGES + 1000)]
    _released_layout(tmp_path / "clip.txt.gz", long)
    assert Tokenizer.from_file(tmp_path / "clip.txt.gz").vocab_size == 49408
    # Hugging Face's layout ("#version: 0.2" header) reads all its merges.
    (tmp_path / "hf.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    assert read_merges(tmp_path / "hf.txt") == merges


# --- bad vocabularies: one line, no traceback --------------------------------------------------

def _bad_files(tmp_path):
    good = gzip.compress(b'"x.txt#version: 0.2\ni n\nt h\n')
    files = {
        "not-gzip.txt.gz": (b"i n\n", "not a BPE merges file"),
        "truncated.txt.gz": (good[:len(good) // 2], "not a BPE merges file"),
        "binary.txt": (bytes(range(256)) * 4, "not a BPE merges file"),
        "three.txt": ("#version: 0.2\ni n\na b c\n".encode(), "two space-separated symbols"),
        "empty.txt.gz": (gzip.compress(b'"empty#version: 0.2\n'), "no merges"),
        "unknown.txt.gz": (gzip.compress('"x#version: 0.2\ni n\nin<|x|> t\n'.encode()), "not a BPE vocabulary"),
        "order.txt": ("#version: 0.2\nin g\ni n\n".encode(), "not a BPE vocabulary"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    return {tmp_path / name: message for name, (_, message) in files.items()}


def test_bad_bpe_files_raise_one_line_value_errors(tmp_path):
    for path, message in _bad_files(tmp_path).items():
        with pytest.raises(ValueError, match=message) as e:
            Tokenizer.from_file(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value), path
    with pytest.raises(ValueError, match="not a BPE vocabulary"):
        Tokenizer([("i", "n"), ("q", "in<")])   # merges from a checkpoint are checked too
    check_merges([("i", "n"), ("in", "g</w>")])


def test_cli_score_and_eval_load_clips_released_file_and_reject_bad_ones(openclip, tmp_path, capsys):
    import io

    import webdataset as wds
    from PIL import Image

    from clipforge.cli import main
    from clipforge.trainer.model import CLIP, CLIPConfig, TextConfig, VisionConfig

    torch.manual_seed(0)
    # OpenAI-format weights (a bare state dict) with CLIP's 49,408 token ids: only --bpe gives a vocabulary.
    model = CLIP(CLIPConfig(64, VisionConfig(32, 1, 64, 16), TextConfig(77, 49408, 64, 1, 1)))
    torch.save(model.state_dict(), tmp_path / "openai.pt")
    (tmp_path / "cls" / "cat").mkdir(parents=True)
    with wds.TarWriter(str(tmp_path / "000000.tar")) as w:
        for i in range(3):
            buf = io.BytesIO()
            Image.new("RGB", (40, 40), (80 * i, 40, 200)).save(buf, "PNG")
            w.write({"__key__": f"{i:06d}", "png": buf.getvalue(), "txt": f"a photo of a cat, {i}"})
            (tmp_path / "cls" / "cat" / f"{i}.png").write_bytes(buf.getvalue())
    score = ["score", "--checkpoint", str(tmp_path / "openai.pt"), "--pairs", str(tmp_path / "000000.tar"),
             "--out", str(tmp_path / "s.parquet"), "--workers", "0"]
    assert main(score + ["--bpe", str(openclip.BPE_FILE)]) == 0, capsys.readouterr().err
    assert "score: 3 pairs" in capsys.readouterr().out
    for bad in _bad_files(tmp_path):
        for argv in (score, ["eval", "--checkpoint", str(tmp_path / "openai.pt"), "--imagefolder",
                             str(tmp_path / "cls"), "--out", str(tmp_path / "ev"), "--workers", "0"]):
            assert main(argv + ["--bpe", str(bad)]) == 1
            err = [line for line in capsys.readouterr().err.strip().splitlines() if ": note: " not in line]
            assert len(err) == 1 and err[0].startswith("clipforge: error:") and str(bad) in err[0], err
