"""A small evaluator of identity policies, for the IAM test: does a policy allow an action on a
resource, given the request's condition keys? moto's server enforces IAM for actions only (it
authorizes DynamoDB against the resource '*' and denies an Allow whose condition keys it cannot
fill), so resource scoping and conditions are judged here, against the policies as deployed.

Semantics (AWS's, for what PyAnamo's roles use): an explicit Deny wins; else any matching Allow;
Action and Resource patterns match with `*` (any run of characters) and `?` (one character),
actions case-insensitively; conditions StringEquals / StringLike / ArnLike and their
ForAllValues: / ForAnyValue: forms (ForAllValues is true when the request has no such key)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=512)
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(f"^{body}$", re.IGNORECASE if ignore_case else 0)


def glob_match(glob: str, value: str, ignore_case: bool = False) -> bool:
    return bool(_pattern(glob, ignore_case).match(value))


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _condition_holds(operator: str, key_values: Mapping[str, Any], context: Mapping[str, Sequence[str]]) -> bool:
    qualifier, _, base = operator.rpartition(":")
    like = base in ("StringLike", "ArnLike")
    if base not in ("StringEquals", "StringLike", "ArnLike", "ArnEquals"):
        raise ValueError(f"condition operator {operator} is not evaluated here")
    for key, expected in key_values.items():
        patterns = _as_list(expected)
        actual = list(context.get(key, ()))
        hits = [any(glob_match(p, value) if like else p == value for p in patterns) for value in actual]
        if qualifier == "ForAllValues":
            ok = all(hits)  # true when the key is absent
        elif qualifier == "ForAnyValue":
            ok = any(hits)
        else:
            ok = bool(hits) and all(hits)
        if not ok:
            return False
    return True


def _statement_matches(statement: Mapping[str, Any], action: str, resource: str,
                       context: Mapping[str, Sequence[str]]) -> bool:
    if not any(glob_match(a, action, ignore_case=True) for a in _as_list(statement.get("Action", []))):
        return False
    if not any(glob_match(r, resource) for r in _as_list(statement.get("Resource", []))):
        return False
    return all(_condition_holds(op, values, context) for op, values in (statement.get("Condition") or {}).items())


def allowed(statements: Sequence[Mapping[str, Any]], action: str, resource: str,
            context: Mapping[str, Sequence[str]] | None = None) -> bool:
    context = context or {}
    matching = [s for s in statements if _statement_matches(s, action, resource, context)]
    if any(s.get("Effect") == "Deny" for s in matching):
        return False
    return any(s.get("Effect") == "Allow" for s in matching)


# -- recorded calls as IAM requests ------------------------------------------------------

S3_ACTIONS = {  # operation -> the IAM action it needs (multipart parts are PutObject)
    "PutObject": "s3:PutObject", "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject", "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "GetObject": "s3:GetObject", "HeadObject": "s3:GetObject", "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject", "DeleteObjectTagging": "s3:DeleteObjectTagging",
    "PutObjectTagging": "s3:PutObjectTagging", "GetObjectTagging": "s3:GetObjectTagging",
    "ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket",
}


def requests_of(call: Mapping[str, Any], *, account: str, region: str,
                group_arn_of: Mapping[str, str]) -> list[tuple[str, str, dict[str, list[str]]]]:
    """The (action, resource ARN, condition keys) an AWS call is authorized as."""
    service, operation, params = call["service"], call["operation"], call["params"]
    if service == "dynamodb":
        tables = params.get("RequestItems") or [params.get("TableName")]
        found = []
        for table in tables:
            arn = f"arn:aws:dynamodb:{region}:{account}:table/{table}"
            if params.get("IndexName"):
                arn += f"/index/{params['IndexName']}"
            context: dict[str, list[str]] = {}
            key = params.get("Item") or params.get("Key")
            if isinstance(key, Mapping) and isinstance(key.get("itemID"), Mapping):
                context["dynamodb:LeadingKeys"] = [str(key["itemID"].get("S"))]
            found.append((f"dynamodb:{operation}", arn, context))
        return found
    if service == "s3":
        bucket = params["Bucket"]
        action = S3_ACTIONS[operation]
        if action == "s3:ListBucket":
            return [(action, f"arn:aws:s3:::{bucket}", {"s3:prefix": [params.get("Prefix", "")]})]
        found = [(action, f"arn:aws:s3:::{bucket}/{params.get('Key', '*')}", {})]
        if operation == "PutObject" and params.get("Tagging") or operation == "CreateMultipartUpload" and params.get(
                "Tagging"):
            found.append(("s3:PutObjectTagging", found[0][1], {}))
        return found
    if service == "autoscaling":
        names = _as_list(params.get("AutoScalingGroupName") or params.get("AutoScalingGroupNames") or [])
        if operation == "DescribeAutoScalingGroups":
            return [(f"autoscaling:{operation}", "*", {})]
        if not names and params.get("InstanceId"):
            names = [group_arn_of[params["InstanceId"]]]
            return [(f"autoscaling:{operation}", names[0], {})]
        return [(f"autoscaling:{operation}", group_arn_of[n], {}) for n in names]
    if service == "sts" and params.get("RoleArn"):
        return [(f"sts:{operation}", params["RoleArn"], {})]
    return [(f"{service}:{operation}", "*", {})]
