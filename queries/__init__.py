"""The queries stage: CLIP's query list (Wikipedia unigrams, high-PMI bigrams, article titles
by page views, WordNet lemmas) built as an Apache Beam pipeline.

One list per language (``--langs``), under CLIP's, MetaCLIP 1's or MetaCLIP 2's rules
(``--rules``). Output contract: ``schemas.records.QUERY`` (``queries.parquet``, with ``lang``),
MetaCLIP's ``metadata.json`` and MetaCLIP 2's ``metadata/{lang}.json``.

Modules: ``wikidump`` (streaming MediaWiki XML, wikitext to prose), ``tokens`` (words and
bigrams; ICU word segmentation for scripts without spaces), ``lexicons`` (WordNet, pageviews, metadata.json), ``pipeline`` (the Beam pipeline),
``stage`` (input checks, run, queries_stats.json).
"""
