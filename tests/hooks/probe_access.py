"""A sub-task of the IAM test: what do the credentials it was given let it do? Prints one word
pair per probe: whose credentials, reading its input, writing the task table."""

import sys

import boto3
import botocore.exceptions


def outcome(call) -> str:
    try:
        call()
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        return "AccessDenied" if code in ("403", "AccessDenied", "AccessDeniedException") else code
    return "ok"


table = sys.argv[1]
arn = boto3.client("sts").get_caller_identity()["Arn"]
print("identity", "assumed-role" if ":assumed-role/" in arn else arn)
print("read", outcome(lambda: boto3.client("s3").get_object(Bucket="iam-inputs", Key="cohort1/S1.fq")))
print("table", outcome(lambda: boto3.client("dynamodb").put_item(
    TableName=table, Item={"itemID": {"S": "injected"}, "lockID": {"S": "todo"}})))
