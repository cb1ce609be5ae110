"""The bucket for full task logs: private, TLS only, encrypted, expiring."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from .nag import suppress

LOG_PREFIX = "logs"
# What every bucket of the stack is: private, TLS only, encrypted, owned by the bucket's account.
PRIVATE_BUCKET = {
    "block_public_access": s3.BlockPublicAccess.BLOCK_ALL,
    "enforce_ssl": True,
    "encryption": s3.BucketEncryption.S3_MANAGED,
    "object_ownership": s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
}


class LogBucket(Construct):
    def __init__(self, scope: Construct, id: str, *, expiry_days: int, retain: bool, empty_on_destroy: bool) -> None:
        super().__init__(scope, id)
        self.prefix = LOG_PREFIX
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            **PRIVATE_BUCKET,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(expiry_days))] if expiry_days else None,
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
            auto_delete_objects=not retain and empty_on_destroy,
        )
        suppress(self.bucket, "AwsSolutions-S1",
                 "This bucket holds task logs; access logging it would need another bucket for logs of logs.")

    def grant_write_logs(self, role: iam.IRole) -> None:
        """Write any object under the log prefix (keys are per item and sub-task)."""
        role.add_to_principal_policy(iam.PolicyStatement(actions=["s3:PutObject"], resources=[self.objects_arn()]))
        suppress(role, "AwsSolutions-IAM5",
                 "Log object keys are per item and sub-task, so the worker may write any key under the log prefix.",
                 [{"regex": "/^Resource::<LogsBucket.*\\.Arn>/logs/\\*$/"}])

    @property
    def location(self) -> str:
        """``bucket/prefix``, as `pyanamo worker --log-bucket` takes it."""
        return f"{self.bucket.bucket_name}/{self.prefix}"

    def objects_arn(self) -> str:
        return self.bucket.arn_for_objects(f"{self.prefix}/*")
