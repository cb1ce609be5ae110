"""Where a worker runs, what its time costs, and the arithmetic of a run's cost.

A worker knows its placement once, at start (instance type, Spot or on-demand, zone; off EC2 the
host and ``local``) and its price per hour (looked up by ``pricing``, or ``--price-per-hour``).
Every sub-task run it records carries its share of that price; the worker's own record carries
the hours it was paid for, busy or not.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class Placement:
    """Where a worker runs: on EC2 from the instance metadata, elsewhere the host."""

    instance_id: str
    host: str
    instance_type: str = "local"
    lifecycle: str = "local"  # spot, on-demand, or local off EC2
    zone: str = "local"
    price_per_hour: float | None = None  # USD; None: unknown (the lookup failed)
    price_source: str = "none"  # pricing-api, spot-price-history, --price-per-hour, local

    @property
    def on_ec2(self) -> bool:
        return self.lifecycle != "local"


def local_placement(owner: str, price_per_hour: float | None = None) -> Placement:
    """Off EC2: the price is 0 unless given."""
    given = price_per_hour is not None
    return Placement(instance_id=owner, host=socket.gethostname(),
                     price_per_hour=price_per_hour if given else 0.0,
                     price_source="--price-per-hour" if given else "local")


def subtask_cost(price_per_hour: float | None, wall_seconds: float, slots: int) -> float | None:
    """A sub-task's share of its instance's price: price × wall time ÷ the worker's concurrent
    slots (items × nests), since that many sub-tasks share the instance at most."""
    if price_per_hour is None:
        return None
    return price_per_hour * wall_seconds / SECONDS_PER_HOUR / max(1, slots)


def parse_time(text: object) -> float | None:
    """Epoch seconds of an ISO 8601 UTC text (``…Z``), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class WorkerSpan:
    """One worker's paid time, from its record."""

    worker_id: str
    instance_type: str
    price_per_hour: float | None
    slots: int
    started: float
    ended: float  # its end, or last heartbeat while it runs (or when it died)
    busy_seconds: float  # sum of its sub-tasks' wall time

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> WorkerSpan | None:
        """The span of a worker record (``worker_record``); None without its times."""
        started = parse_time(record.get("Started"))
        ended = parse_time(record.get("Ended")) or parse_time(record.get("Last_Seen"))
        if started is None or ended is None:
            return None
        price = record.get("Price_Per_Hour")
        return cls(
            worker_id=str(record.get("Worker_ID", "?")), instance_type=str(record.get("Instance_Type", "?")),
            price_per_hour=None if price is None else float(price), slots=int(record.get("Slots", 1) or 1),
            started=started, ended=ended, busy_seconds=float(record.get("Busy_Seconds", 0) or 0),
        )

    @property
    def hours(self) -> float:
        return max(0.0, self.ended - self.started) / SECONDS_PER_HOUR

    @property
    def cost(self) -> float | None:
        return None if self.price_per_hour is None else self.price_per_hour * self.hours


@dataclass(frozen=True)
class RunCost:
    instance_hours: float
    cost_usd: float | None  # None when no worker's price is known
    unknown_price_hours: float  # instance-hours whose price is unknown (not in cost_usd)
    utilization: float | None  # share of paid slot-time that ran sub-tasks

    def to_json(self) -> dict[str, float | None]:
        return {"instance_hours": round(self.instance_hours, 4),
                "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
                "unknown_price_hours": round(self.unknown_price_hours, 4),
                "utilization": None if self.utilization is None else round(self.utilization, 4)}


def worker_spans(records: Iterable[Mapping[str, Any]]) -> list[WorkerSpan]:
    return [s for s in (WorkerSpan.from_record(r) for r in records) if s is not None]


def run_cost(spans: Iterable[WorkerSpan]) -> RunCost:
    """Σ instance-hours × price over the workers (idle time included), and utilization: the
    sub-tasks' wall time over the workers' slot-time."""
    spans = list(spans)
    hours = sum(s.hours for s in spans)
    known = [s.cost for s in spans if s.cost is not None]
    slot_seconds = sum(s.hours * SECONDS_PER_HOUR * max(1, s.slots) for s in spans)
    busy = sum(s.busy_seconds for s in spans)
    return RunCost(
        instance_hours=hours,
        cost_usd=sum(known) if known else None,
        unknown_price_hours=sum(s.hours for s in spans if s.cost is None),
        utilization=min(1.0, busy / slot_seconds) if slot_seconds > 0 else None,
    )


def cost_to_finish(cost_so_far: float | None, ended: int, remaining: int) -> float | None:
    """What the remaining items would cost at the cost per ended item so far."""
    if cost_so_far is None or ended <= 0:
        return None
    return cost_so_far / ended * remaining


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in 0..1) of ``values``; 0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


# On-demand memory (GiB) of common instance types, for the right-sizing hint: the smallest types
# of the general, compute and memory families that fit a peak.
INSTANCE_MEMORY_GIB: dict[str, float] = {
    "c7i.large": 4, "c7i.xlarge": 8, "c7i.2xlarge": 16, "c7i.4xlarge": 32, "c7i.8xlarge": 64,
    "m7i.large": 8, "m7i.xlarge": 16, "m7i.2xlarge": 32, "m7i.4xlarge": 64, "m7i.8xlarge": 128,
    "r7i.large": 16, "r7i.xlarge": 32, "r7i.2xlarge": 64, "r7i.4xlarge": 128, "r7i.8xlarge": 256,
}


def right_size(peaks_mb: Sequence[float], slots: int = 1, headroom: float = 1.2) -> dict[str, object]:
    """The p95 and max peak memory of a group of sub-tasks, what ``slots`` of them at once need
    (max × slots × headroom), and the smallest listed instance types that hold that."""
    p95, peak = percentile(peaks_mb, 0.95), max(peaks_mb, default=0.0)
    need_gib = peak * max(1, slots) * headroom / 1024
    fits = sorted((gib, name) for name, gib in INSTANCE_MEMORY_GIB.items() if gib >= need_gib)
    smallest = [name for gib, name in fits if gib == fits[0][0]] if fits else []
    return {"p95_mb": round(p95, 1), "max_mb": round(peak, 1), "slots": max(1, slots),
            "needed_gib": round(need_gib, 2), "smallest_types": smallest}
