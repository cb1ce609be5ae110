"""A worker's placement and price per hour, looked up once at start.

On EC2 the instance metadata gives the instance type, its lifecycle (``spot`` or ``on-demand``)
and zone; the price then comes from ``ec2:DescribeSpotPriceHistory`` (Spot: the current price
for the type in the zone) or the AWS Price List API (``pricing:GetProducts``, served from
us-east-1: the Linux on-demand rate in the instance's region). These two calls are all the fleet
role is granted for it. A failed lookup is a warning and an unknown price, never a failed worker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .accounting import Placement, local_placement
from .identity import Imds

PRICE_LIST_REGION = "us-east-1"  # the Price List API's endpoint for every region's prices


def ec2_placement(imds: Imds, instance_id: str) -> Placement:
    """What the metadata service says about this instance (price still unknown)."""
    import socket

    lifecycle = imds.get("instance-life-cycle") or "on-demand"
    return Placement(
        instance_id=instance_id,
        host=socket.gethostname(),
        instance_type=imds.get("instance-type") or "unknown",
        lifecycle="spot" if lifecycle == "spot" else "on-demand",
        zone=imds.get("placement/availability-zone") or "unknown",
    )


def spot_price(ec2: Any, instance_type: str, zone: str) -> float:
    """The current Spot price (USD/hour) of Linux ``instance_type`` in ``zone``."""
    history = ec2.describe_spot_price_history(
        InstanceTypes=[instance_type], AvailabilityZone=zone, ProductDescriptions=["Linux/UNIX"],
        StartTime=datetime.now(UTC), MaxResults=10,
    )["SpotPriceHistory"]
    ours = [h for h in history if h.get("AvailabilityZone") == zone and h.get("InstanceType") == instance_type]
    if not ours:
        raise LookupError(f"no Spot price for {instance_type} in {zone}")
    return float(ours[0]["SpotPrice"])


def on_demand_price(pricing: Any, instance_type: str, region: str) -> float:
    """The on-demand Linux rate (USD/hour) of ``instance_type`` in ``region``, shared tenancy."""
    filters = {"instanceType": instance_type, "regionCode": region, "operatingSystem": "Linux",
               "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}
    response = pricing.get_products(
        ServiceCode="AmazonEC2", MaxResults=1,
        Filters=[{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in filters.items()],
    )
    for product in response.get("PriceList", []):
        data = json.loads(product) if isinstance(product, str) else product
        for term in data.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = dimension.get("pricePerUnit", {}).get("USD")
                if usd is not None:
                    return float(usd)
    raise LookupError(f"no on-demand price for {instance_type} in {region}")


def priced(placement: Placement, override: float | None, region: str,
           client: Callable[[str, str], Any], warn: Callable[[str], None]) -> Placement:
    """``placement`` with its price: ``override`` if given, else looked up (EC2 only)."""
    from dataclasses import replace

    if override is not None:
        return replace(placement, price_per_hour=override, price_source="--price-per-hour")
    if not placement.on_ec2:
        return placement
    try:
        if placement.lifecycle == "spot":
            price = spot_price(client("ec2", region), placement.instance_type, placement.zone)
            return replace(placement, price_per_hour=price, price_source="spot-price-history")
        price = on_demand_price(client("pricing", PRICE_LIST_REGION), placement.instance_type, region)
        return replace(placement, price_per_hour=price, price_source="pricing-api")
    except Exception as exc:  # noqa: BLE001 - any failure: a warning and an unknown price
        warn(f"price of {placement.instance_type} ({placement.lifecycle}) unknown: {exc}")
        return placement


def worker_placement(imds: Imds, instance_id: str | None, owner: str, override: float | None, region: str,
                     client: Callable[[str, str], Any], warn: Callable[[str], None]) -> Placement:
    """Where this worker runs and its price per hour (on EC2 looked up; locally 0 unless given)."""
    if instance_id is None:
        return local_placement(owner, override)
    return priced(ec2_placement(imds, instance_id), override, region, client, warn)
