"""cdk-nag suppressions: one helper, and the patterns more than one construct needs."""

from __future__ import annotations

from typing import Any

from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import IConstruct

# The group's ARN has a UUID in the middle that AWS assigns at creation: the one wildcard.
GROUP_ARN = {"regex": "/^Resource::arn:<AWS::Partition>:autoscaling:<AWS::Region>:<AWS::AccountId>:"
                      "autoScalingGroup:\\*:autoScalingGroupName/<WorkersGroup[A-Za-z0-9]+>$/"}
GROUP_ARN_REASON = "The group is named; the '*' stands for the UUID AWS puts in its ARN at creation."


def suppress(construct: IConstruct, rule: str, reason: str, applies_to: list[Any] | None = None) -> None:
    """Suppress one AwsSolutions finding on ``construct`` and its children, saying why."""
    NagSuppressions.add_resource_suppressions(
        construct, [NagPackSuppression(id=rule, reason=reason, applies_to=applies_to)], apply_to_children=True)
