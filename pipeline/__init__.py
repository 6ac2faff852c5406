"""The data pipeline's Beam stages (launched by ``clipforge.beam``; the pair identity is
``clipforge.schemas.pairs``).

- crawl: web archives (WAT/WARC) and URL lists -> cleaned, language-identified,
  query-matched, deduplicated and balanced pairs (``--worldwide``: a list and a t per language) (``schemas.records.CURATED_PAIR``).
- shard: pairs -> fetched, resized images packed as WebDataset tars
  (``schemas.records.SHARD_SAMPLE``, ``SHARD_INDEX``, ``sizes.json``).

Modules: ``spill`` (hash-partitioned files between passes), ``progress`` (progress lines from
workers' notes), ``readers``, ``captions``, ``langid``, ``matching``, ``textfilter`` (the
crawl's text stage on batches), ``balance``, ``crawl`` + ``crawl_stage`` (the crawl),
``fetch`` (libcurl transfers behind the SSRF guard), ``images``, ``shard`` + ``shard_stage``
(the shard stage),
``img2dataset_downloader``.
"""
