"""PyAnamo: batch workloads from a DynamoDB work queue, run by a self-draining worker fleet."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pyanamo")  # one version: runtime/pyproject.toml
except PackageNotFoundError:  # run from a source tree that was not installed (the fleet's asset)
    __version__ = "unknown"
