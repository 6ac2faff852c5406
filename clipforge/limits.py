"""Per-record caps for hostile input: every limit clipforge puts on bytes from the web or a stranger's file.

Each cap is a named default here, in one place. Stages that can meet a legitimate record near a cap
take a flag to change it (named next to each), and report the caps they ran with in their stats
(``extra.limits``), so a reader of the stats knows what was cut and why. A record over a cap is
counted under a reason and the run goes on; no cap stops a run.
"""

MiB = 1 << 20

# --- web archives (pipeline/readers.py) ---------------------------------------------------------
# Bytes of one WARC response body read. Common Crawl itself truncates payloads at 1 MiB; a longer
# page is read up to the cap, parsed, and counted under pages.truncated.  (crawl --max-page-bytes)
MAX_PAGE_BYTES = 4 * MiB
# Inflated bytes of one gzip member of a .warc.gz holding a single record: past it the rest of the
# record is skipped (found again at the next member), not inflated, and counted unreadable.
MAX_WARC_MEMBER_BYTES = 64 * MiB
# Bytes of one WAT metadata record (JSON). Real ones are a few hundred KB at most; a longer one is
# skipped and counted as unreadable (wat_record_too_large).
MAX_WAT_RECORD_BYTES = 16 * MiB
# Nesting depth of a WAT record's JSON: Python's recursion limit (1,000 by default); json raises
# RecursionError past it, in bounded time, and the record is counted unreadable.
# HTML elements parsed per page, and their nesting depth (tree building costs time in proportion to
# depth for every element: 40,000 nested <div> take 8 s, 500,000 hours). A page past either cap is
# cut there, parsed, and counted under pages.truncated. Real pages nest a few dozen deep.
MAX_HTML_ELEMENTS = 200_000
MAX_HTML_DEPTH = 1024

# --- URL lists (pipeline/readers.py) ------------------------------------------------------------
# Characters in one CSV/TSV field; a row with a longer field is counted (field_too_large).
MAX_CSV_FIELD_CHARS = 1 * MiB

# --- text and URLs (pipeline/captions.py, pipeline/textfilter.py, pipeline/balance.py) ----------
# Characters of an image text kept from a record: a longer one is cut to this plus one, which is
# still text_too_long (--max-text-chars is at most MAX_RAW_TEXT_CHARS / captions.RAW_FACTOR).
MAX_RAW_TEXT_CHARS = 65_536
# Characters of candidate text in one batch of the text stage (a batch is also at most 8,192 links).
MAX_BATCH_TEXT_CHARS = 32 * MiB
# Characters of a URL; longer is invalid_url.
MAX_URL_CHARS = 4096
# Characters of a host name (DNS allows 253).
MAX_HOST_CHARS = 253

# --- compressed inputs (queries dumps, WordNet, archives) ---------------------------------------
# Decompressed bytes allowed per compressed byte, on top of a floor that any real file fits under.
# Real text compresses 3-10x (bzip2 of Wikipedia ~5x); bombs reach 1000x and more.
MAX_DECOMPRESSION_RATIO = 200
DECOMPRESSION_FLOOR_BYTES = 256 * MiB

# --- Wikipedia dumps (queries/wikidump.py) ------------------------------------------------------
# Characters of one page's wikitext. The longest real articles are ~1.5 M characters; a longer page
# is skipped and counted (page_too_large). Also caps one document (line) of a --text corpus
# (text_lines_too_large).  (queries --max-page-chars)
MAX_WIKI_PAGE_CHARS = 4 * MiB
# Markup characters of one page ([ ] { } < > | ' = & and line breaks, plus "://"), counted before
# the wikitext parser (mwparserfromhell) sees the page: its memory and time follow them, at up to
# ~1.1 KB per markup character (measured: list items, rules, free links), while prose costs ~50 B a
# character. Real articles hold 7.5 % markup on average, up to 25 % for list pages; a page
# over the cap is skipped and counted (page_markup_too_heavy).  (queries --max-page-markup)
MAX_WIKI_PAGE_MARKUP = 200_000
# Characters of a page's title or namespace number (MediaWiki titles are at most 255 bytes); a
# longer one makes the page page_malformed.
MAX_WIKI_FIELD_CHARS = 4096
# CPU time the wikitext parser may spend on one page: a floor plus a share per million characters.
# Real wikitext parses at 2-7 s per million characters; mwparserfromhell takes quadratic time on
# flat runs of unclosed markup (20 KB of "<ref " took 18 s, and twice the text four times as long;
# earwig/mwparserfromhell#364 for templates), which no count of characters predicts. The parser
# runs in a child process held to this by RLIMIT_CPU; a page past it is stopped and counted
# (page_parse_too_costly).
WIKI_PARSE_CPU_SECONDS = 2
WIKI_PARSE_CPU_SECONDS_PER_MCHAR = 20
# Address space of that child process (RLIMIT_AS): a hard bound on the parser's memory under the
# markup cap's ~220 MB; a page that needs more is page_parse_too_costly.
MAX_WIKI_PARSE_BYTES = 1024 * MiB

# --- XML and the other query-list inputs (queries/wikidump.py, queries/lexicons.py, queries/pipeline.py)
# Element nesting depth of a dump or WN-LMF file (real ones nest 5 deep); deeper refuses the file.
MAX_XML_DEPTH = 64
# Bytes of one XML token (a tag with its attributes, a comment): expat holds a whole token in
# memory while text comes in pieces (and is capped per field). A longer token refuses the file.
MAX_XML_TOKEN_BYTES = 16 * MiB
# Bytes of one Open English WordNet YAML file, which is parsed whole at ~40x its size in memory
# (the largest real one, noun.artifact.yaml, is ~2.5 MB); a larger file is refused.
MAX_WORDNET_YAML_BYTES = 8 * MiB
# Bytes of one pageview line (real ones are under 1 KB); longer is counted as malformed.
MAX_PAGEVIEW_LINE_BYTES = 64 * 1024
# Bytes of one metadata.json to import (parsed whole; MetaCLIP's 500,000 entries are ~10 MB); a
# larger file is refused.
MAX_METADATA_JSON_BYTES = 64 * MiB


def decompressed_budget(compressed_bytes: int) -> int:
    """Most bytes a compressed input of this size may decompress to."""
    return max(DECOMPRESSION_FLOOR_BYTES, MAX_DECOMPRESSION_RATIO * max(0, int(compressed_bytes)))
