"""Loaded at start-up by every Python process the benchmarks launch (they put this folder on
PYTHONPATH): with PYANAMO_STATS_FILE set, every DynamoDB client the process creates counts its
requests (``pyanamo.stats``), and the totals are written to that file at exit. It registers with
botocore's built-in handlers, so PyAnamo's own client factory knows nothing of benchmarks."""

import os

if os.environ.get("PYANAMO_STATS_FILE"):
    import botocore.handlers

    from pyanamo.stats import from_environment

    _stats = from_environment()
    if _stats is not None:
        botocore.handlers.BUILTIN_HANDLERS.extend(_stats.handlers())
