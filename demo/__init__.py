"""The demo web: an offline, deterministic world to run every stage against.

- ``world``    the generator (``generate(WorldConfig(...))``): pages, images, WARC/WAT,
               URL list, a MediaWiki dump, pageviews, a WordNet lexicon, held-out sets
- ``server``   a loopback HTTP server for a generated world (``DemoServer``)
- ``concepts`` the visual concepts and how they are drawn
- ``captions`` alt-text phrasing: English, other languages, junk
- ``messy``    the failures real crawls meet (404s, endless bodies, bombs, loops, ...)
- ``chain``    ``make demo``: every stage in order on the demo web, and the demo's defaults;
               ``clipforge demo worldwide``: the curation stages run worldwide
- ``corpora``  the wiki dump, pageviews and lexicon, and their de/fr/es/ja versions (``worldwide/``)
- ``archives`` WARC and WAT writing
"""
