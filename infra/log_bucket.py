"""The bucket for full task logs: private, TLS only, encrypted, expiring."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

LOG_PREFIX = "logs"


class LogBucket(Construct):
    def __init__(self, scope: Construct, id: str, *, expiry_days: int, retain: bool, empty_on_destroy: bool) -> None:
        super().__init__(scope, id)
        self.prefix = LOG_PREFIX
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            encryption=s3.BucketEncryption.S3_MANAGED,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(expiry_days))] if expiry_days else None,
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
            auto_delete_objects=not retain and empty_on_destroy,
        )

    def objects_arn(self) -> str:
        return self.bucket.arn_for_objects(f"{self.prefix}/*")
