"""The queries stage: CLIP's query list (Wikipedia unigrams, high-PMI bigrams, article titles
by page views, WordNet lemmas) built as an Apache Beam pipeline.

Output contract: ``schemas.records.QUERY`` (``queries.parquet``) and MetaCLIP's
``metadata.json``. Not built yet (issue 3).
"""
