"""The peer for the queries benchmark: the query list built the way MetaCLIP's scripts do it,
in one process with in-memory Counters of every word and bigram, from the same extracted
prose (same dump reader, same wikitext-to-prose, same tokenizer) so that only the engine
differs. Usage: python -m bench.peer_counter_queries OUT DUMP... (writes OUT as JSON)."""

import bz2
import json
import math
import sys
from collections import Counter

from clipforge.queries import tokens
from clipforge.queries.wikidump import iter_pages, wikitext_to_prose


def build(paths, min_count=100, min_bigram_count=100, min_pmi=30.0):
    uni, bi = Counter(), Counter()
    for path in paths:
        with bz2.open(path) as f:
            for page in iter_pages(f):
                if page.ns != 0 or page.redirect:
                    continue
                prose = wikitext_to_prose(page.text)
                uni.update(tokens.unigrams(prose))
                bi.update(tokens.bigrams(prose))
    n = sum(uni.values())
    out = [w for w, c in uni.items() if c >= min_count]
    for b, c in bi.items():
        a, w = b.split(" ", 1)
        if c >= min_bigram_count and math.log2(n * c / (uni[a] * uni[w])) >= min_pmi:
            out.append(b)
    return sorted(set(out))


if __name__ == "__main__":
    out, *dumps = sys.argv[1:]
    with open(out, "w") as f:
        json.dump(build(dumps, min_count=40, min_bigram_count=20, min_pmi=5.0), f)
