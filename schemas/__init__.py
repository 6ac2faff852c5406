"""Data contracts: every record shape that crosses a stage boundary, defined once.

- ``records``  pyarrow schemas: QUERY, CANDIDATE_PAIR, CURATED_PAIR, SHARD_SAMPLE, SHARD_INDEX
- ``files``    the JSON files: MetaCLIP's ``metadata.json``, ``sizes.json``, ``*_stats.json``
- ``languages`` one language code between stages (lid.176, dump names, pageview projects,
  WN-LMF) and the scripts written without spaces
- ``pairs``    what identifies a pair: ``uid`` (normalised URL + text), shared by crawl and shard
- ``phash``    the shard index's perceptual hash and the multi-index Hamming search over it
- ``tars``     the WebDataset tar writer (standard library; no torch import)
- ``validate`` checks that every stage and test use; they raise ``SchemaError`` with a
  one-line message that names the file, the row and the field

See ``schemas/README.md`` for the written description of each contract.
"""

from clipforge.schemas.records import (
    CANDIDATE_PAIR,
    CURATED_PAIR,
    QUERY,
    QUERY_SOURCES,
    SHARD_INDEX,
    SHARD_SAMPLE,
    SCHEMAS,
)
from clipforge.schemas.validate import SchemaError

__all__ = [
    "CANDIDATE_PAIR",
    "CURATED_PAIR",
    "QUERY",
    "QUERY_SOURCES",
    "SHARD_INDEX",
    "SHARD_SAMPLE",
    "SCHEMAS",
    "SchemaError",
]
