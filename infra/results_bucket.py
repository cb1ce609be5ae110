"""Where committed outputs live, and the read-only input buckets the user names.

The results bucket is the stack's own (retained on `cdk destroy` by default) unless
``output_bucket`` names an existing one. Workers stage every attempt's outputs tagged
``pyanamo-commit=pending`` and remove the tag once their fenced write succeeded
(``pyanamo.outputs``): the bucket's lifecycle rule expires what was never committed. An existing
bucket needs that rule added by its owner (the README says how)."""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from pyanamo.outputs import PENDING_TAG

from .log_bucket import PRIVATE_BUCKET
from .nag import suppress

RESULTS_PREFIX = "results"
# What a worker does under the results prefix: stage (PutObject with a tag), commit (remove the
# tag), discard a refused attempt (DeleteObject), fetch an earlier sub-task's outputs (GetObject).
WORKER_RESULT_ACTIONS = ["s3:PutObject", "s3:PutObjectTagging", "s3:DeleteObjectTagging", "s3:GetObject",
                         "s3:DeleteObject"]


def split_location(location: str) -> tuple[str, str]:
    """``bucket/prefix`` (an ``s3://`` in front is allowed) as (bucket, prefix without slashes)."""
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


class ResultsBucket(Construct):
    def __init__(self, scope: Construct, id: str, *, existing: str | None, retain: bool,
                 uncommitted_expiry_days: int) -> None:
        super().__init__(scope, id)
        if existing:
            name, self.prefix = split_location(existing)
            self.bucket: s3.IBucket = s3.Bucket.from_bucket_name(self, "Bucket", name)
            return
        self.prefix = RESULTS_PREFIX
        bucket = s3.Bucket(
            self,
            "Bucket",
            **PRIVATE_BUCKET,
            lifecycle_rules=[
                s3.LifecycleRule(id="ExpireUncommittedAttempts", tag_filters={PENDING_TAG[0]: PENDING_TAG[1]},
                                 expiration=Duration.days(uncommitted_expiry_days)),
                s3.LifecycleRule(id="AbortIncompleteUploads",
                                 abort_incomplete_multipart_upload_after=Duration.days(1)),
            ],
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
        )
        suppress(bucket, "AwsSolutions-S1",
                 "This bucket holds the run's results; access logging it would need another bucket for its logs.")
        self.bucket = bucket

    @property
    def location(self) -> str:
        """``s3://bucket/prefix``, as `pyanamo worker --outputs` takes it."""
        return f"s3://{self.bucket.bucket_name}/{self.prefix}" if self.prefix else f"s3://{self.bucket.bucket_name}"

    def grant_commit(self, role: iam.IRole) -> None:
        """Stage, commit, discard and fetch attempts' outputs under the results prefix."""
        objects = self.bucket.arn_for_objects(f"{self.prefix}/*" if self.prefix else "*")
        role.add_to_principal_policy(iam.PolicyStatement(actions=WORKER_RESULT_ACTIONS, resources=[objects]))
        suppress(role, "AwsSolutions-IAM5",
                 "Output keys are per item, sub-task and attempt, so the worker may write any key under the "
                 "results prefix of the results bucket.",
                 [{"regex": "/^Resource::.*(Results|arn:<AWS::Partition>:s3:::).*\\/\\*$/"}])


def grant_read_inputs(role: iam.IRole, locations: tuple[str, ...]) -> None:
    """Read-only access to each named ``bucket`` or ``bucket/prefix``: nothing else, no wildcard
    bucket."""
    for location in locations:
        bucket, prefix = split_location(location)
        arn = f"arn:{Aws.PARTITION}:s3:::{bucket}"
        objects = f"{arn}/{prefix}/*" if prefix else f"{arn}/*"
        role.add_to_principal_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[objects]))
        listing = iam.PolicyStatement(actions=["s3:ListBucket"], resources=[arn])
        if prefix:
            listing.add_condition("StringLike", {"s3:prefix": [f"{prefix}/*", prefix]})
        role.add_to_principal_policy(listing)
    if locations:
        suppress(role, "AwsSolutions-IAM5",
                 "Input buckets are named by the user (context input_buckets); the worker reads any object "
                 "under each named bucket or prefix.",
                 [{"regex": "/^Resource::arn:<AWS::Partition>:s3:::.*\\/\\*$/"}])
