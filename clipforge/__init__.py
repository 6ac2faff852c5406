"""clipforge: CLIP's data recipe, runnable end to end.

The repository keeps one folder per stage; installed, each is a sub-package:

- ``clipforge.schemas``  (``schemas/``)  record shapes that cross stage boundaries, validators
- ``clipforge.queries``  (``queries/``)  the query list from Wikipedia, pageviews and WordNet
- ``clipforge.pipeline`` (``pipeline/``) crawl (web archives -> pairs) and shard (pairs -> tars)
- ``clipforge.trainer``  (``trainer/``)  CLIP model, contrastive training, zero-shot eval
- ``clipforge.stats``    (``stats/``)    the dataset report (HTML, Markdown, plots, stats.json)
- ``clipforge.demo``     (``demo/``)     the offline demo web: generator and loopback server

This package itself holds the command line (``clipforge.cli`` parses and dispatches,
``clipforge.help_text`` its long help, ``clipforge.stages`` runs each stage from its config),
and what the stages share: the Beam launcher (``clipforge.beam``), the errors a user can fix
(``clipforge.errors``) and the caps on hostile input (``clipforge.limits``). No stage package
imports another.
"""

__version__ = "0.1.0"
