"""The queries stage: CLIP's query list (Wikipedia unigrams, high-PMI bigrams, article titles
by page views, WordNet lemmas) built as an Apache Beam pipeline.

Output contract: ``schemas.records.QUERY`` (``queries.parquet``) and MetaCLIP's
``metadata.json``.

Modules: ``wikidump`` (streaming MediaWiki XML, wikitext to prose), ``tokens`` (words and
bigrams), ``lexicons`` (WordNet, pageviews, metadata.json), ``pipeline`` (the Beam pipeline),
``stage`` (input checks, run, queries_stats.json).
"""
