"""Moved to ``clipforge.beam`` (the Beam launcher is shared by every stage); this name is kept
until the CLI's imports move too."""

from clipforge.beam import *  # noqa: F401,F403
from clipforge.beam import _EXIT_HOOK, _register_runner_options, _remove_stale_logs  # noqa: F401
