"""The data pipeline's Beam stages.

- crawl: web archives (WAT/WARC) and URL lists -> cleaned, language-identified,
  query-matched, deduplicated and balanced pairs (``schemas.records.CURATED_PAIR``).
- shard: pairs -> fetched, resized images packed as WebDataset tars
  (``schemas.records.SHARD_SAMPLE``, ``SHARD_INDEX``, ``sizes.json``).

Not built yet (issues 4 and 5).
"""
