"""The `runtime/` folder (the pyanamo package) as shipped to the instances and the scaler."""

from __future__ import annotations

from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"
ASSET_EXCLUDE = ["**/__pycache__", "*.egg-info", "build", "dist", ".mypy_cache"]
