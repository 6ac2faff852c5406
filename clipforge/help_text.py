"""The prose of `clipforge --help` and of each command's --help (clipforge.cli builds the parsers)."""

EXAMPLES = """\
The stages, in order (each reads the one before it):
  queries   Wikipedia dump + pageviews + WordNet -> queries/ (query list)
  crawl     WAT/WARC/URL lists + query list      -> pairs/ (matched, balanced pairs)
  shard     pairs                                -> shards/ (WebDataset tars)
  stats     stage outputs                        -> reports/ (HTML and Markdown report)
  train     shards                               -> runs/NAME/ (CLIP checkpoints)
  eval      checkpoint + labelled images         -> zero-shot accuracy, retrieval recall
  score     checkpoint + pairs                   -> CLIP score of each pair (parquet)
  demo      all of the above on an offline demo web served on 127.0.0.1

Every stage run with no arguments works on the demo web (data/demo/).
Try:  clipforge demo generate && clipforge demo serve
"""

BEAM_HELP = ("Beam's own flags pass through: without --runner the stage runs on the local FnApiRunner\n"
             "with one process per core; e.g. --runner=FlinkRunner --flink_master=HOST:8081, or\n"
             "--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp.")

# Each command's description, as --help prints it (RawDescriptionHelpFormatter: the line breaks are kept).
HELP = {
    'queries': """\
Build the query list CLIP describes, one list per language: words occurring at least
--min-count times in the corpus, bigrams with PMI >= --min-pmi (PMI = log2(N*c(ab)/(c(a)*c(b))),
N = the language's word tokens), Wikipedia titles with at least --min-views page views,
WordNet lemmas, and entries of an existing metadata.json. Writes queries.parquet (with each
entry's lang), metadata/{lang}.json (MetaCLIP 2's layout), metadata.json (MetaCLIP's format;
when one language is built) and queries_stats.json to --out.

Languages: a dump's from its <dbname> (dewiki), pageview lines' from their project code
(de, de.m), WN-LMF lexicons' from their language attribute, LANG=PATH for --text and
--metadata (or a folder of {lang}.json); --langs chooses which are built (default en).
Chinese, Japanese, Thai, Khmer, Lao and Myanmar are segmented with ICU's word breaker and
their bigrams written joined; Tibetan and Dzongkha split at the tsheg.

Rule sets (--rules): clip (default) as above; note that bigrams first need --min-bigram-count
occurrences (default --min-count), and on a Wikipedia-sized corpus no bigram that frequent
reaches PMI 30, so lower --min-pmi or use metaclip1 (the same, no minimum bigram count) or
metaclip2 (per language: unigrams top 10% by count, at most 251,465; bigrams with PMI above
--min-pmi top by PMI, 40% of the kept unigrams, at most 100,646; titles top 76% by views,
at most 61,235; WordNet all; entries of punctuation only or over 256 characters dropped).
queries_stats.json names the rule set and, per language, the caps applied.

With no inputs it builds the demo web's list (generating the demo web if needed).""",
    'crawl': """\
Read image links with their alt text from Common Crawl WARC and WAT files and from URL
lists; clean the texts, identify their language (fastText lid.176), keep those that
contain a query (MetaCLIP's matching), drop duplicates, and balance so that no query
keeps more than about --max-per-query pairs. Writes pairs-*.parquet (also an img2dataset
URL list), query_counts.parquet and crawl_stats.json to --out.

With no --input it crawls the demo web's WAT file with the demo query list (building
both if needed).""",
    'shard': """\
Fetch every pair's image (many requests per worker, connection reuse, timeouts, an
overall deadline, a byte cap, bounded redirects, retries for transient errors, a
per-host limit, X-Robots-Tag noai respected, private addresses refused), check it
(pixel cap before decoding, minimum size, aspect ratio), resize it, and write
NNNNNN.tar (KEY.jpg, KEY.txt, KEY.json), NNNNNN.parquet (every pair with its status),
sizes.json and shard_stats.json. A rerun resumes: finished shards are kept.

With no --pairs it shards the demo web's pairs, serving the demo web meanwhile.""",
    'train': """\
Stream WebDataset shards (ours, img2dataset's, any with KEY.jpg + KEY.txt) and train CLIP:
symmetric InfoNCE, AdamW, cosine schedule with warm-up, features gathered across ranks.
The run directory gets bpe.txt.gz (the tokenizer, learned from the captions unless --bpe),
checkpoints/step_*.pt (atomic, last --keep kept), metrics.jsonl, tensorboard/ and
train_stats.json. --resume continues at the exact step and sample.

With no --train-data it trains the tiny model on the demo web's shards.
Several GPUs or nodes: torchrun --nproc-per-node N -m clipforge train ... (make train NPROC=N).""",
    'eval': """\
Zero-shot classification (top-1, top-5, mean per-class recall, confusion matrix plot) on
ImageFolder trees or labelled WebDataset shards (.cls, or label in .json), with class
embeddings from an ensemble of prompt templates; image<->text recall@1/5/10 on paired
shards. Writes eval.json (every metric) and confusion_*.png; prints a short table.

With no arguments: the demo run's latest checkpoint on the demo world's held-out sets.""",
    'score': """\
The cosine similarity of each pair's image and text embeddings, the CLIP-score
filter LAION and DataComp used; writes scores.parquet (key, caption, similarity)
to --out, a directory as for eval.""",
    'stats': """\
Read what the stages wrote (queries_stats.json, crawl_stats.json, pairs-*.parquet,
query_counts.parquet, shard index parquets, sizes.json, the tars) and write report.html
(self-contained), report.md, the plots as PNG and stats.json: funnels, per-query counts
before and after balancing, sources, languages, sizes, failures, shards, a contact sheet.

With no --data it reports on the demo run (data/demo/) into data/demo/reports/.""",
    'overlap': """\
CLIP's data-overlap analysis: which evaluation images a shard set also holds, resized,
re-encoded or lightly cropped by the site that published them. Every evaluation image
(ImageFolder trees or labelled shards) is hashed, uncropped and cropped by up to 5% per
side, and compared with the perceptual hashes of the shard index (multi-index search).
Writes overlap.json (per set: images, how many have a copy, every pair with its distance),
exclude.txt (shard sample keys to leave out of training) and overlap.png (the closest
pairs side by side); `clipforge stats` shows it when given the directory.

With no arguments: the demo's shards against the demo world's held-out sets.""",
    'demo': """\
The demo web: a generated, deterministic world of pages, images, WARC/WAT
files, a URL list, a Wikipedia-format dump, pageviews and a WordNet lexicon,
served on 127.0.0.1. With no action, run the whole chain on it: world, query
list, crawl, shard, overlap with the held-out sets, stats, train (tiny model,
without the held-out images the web republished), zero-shot eval; about 6 minutes on
two cores the first time, finished stages are reused afterwards.""",
    'demo generate': """\
Write a demo world. The same seed, size and port give the same bytes.""",
    'demo serve': """\
Serve a generated world's pages, images and messy cases on loopback.""",
}
