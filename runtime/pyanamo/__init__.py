"""PyAnamo: batch workloads from a DynamoDB work queue, run by a self-draining worker fleet."""

__version__ = "0.1.0"
