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
# Bytes of one WAT metadata record (JSON). Real ones are a few hundred KB at most; a longer one is
# skipped and counted as unreadable (wat_record_too_large).
MAX_WAT_RECORD_BYTES = 16 * MiB
# Nesting depth of a WAT record's JSON; deeper is unreadable (json_too_deep).
MAX_JSON_DEPTH = 200
# HTML elements parsed per page (parsing time grows with nesting; a page past the cap is cut there
# and counted under pages.truncated).
MAX_HTML_ELEMENTS = 200_000

# --- URL lists (pipeline/readers.py) ------------------------------------------------------------
# Characters in one CSV/TSV field; a row with a longer field is counted (field_too_large).
MAX_CSV_FIELD_CHARS = 1 * MiB

# --- text and URLs (pipeline/captions.py, pipeline/textfilter.py, pipeline/balance.py) ----------
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
# is skipped and counted (page_too_large).  (queries --max-page-chars)
MAX_WIKI_PAGE_CHARS = 4 * MiB


def decompressed_budget(compressed_bytes: int) -> int:
    """Most bytes a compressed input of this size may decompress to."""
    return max(DECOMPRESSION_FLOOR_BYTES, MAX_DECOMPRESSION_RATIO * max(0, int(compressed_bytes)))
