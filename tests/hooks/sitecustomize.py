"""Loaded at start-up by the Python processes of the IAM test (it puts this folder on PYTHONPATH):
with PYANAMO_CALLS_FILE set, every AWS request any client of the process makes is written to that
file as a JSON line (service, operation and the parameters that name what it touches), so the
test can ask whether the deployed policies allow each one. Registered with botocore's built-in
handlers: PyAnamo's code knows nothing of it."""

import os

if os.environ.get("PYANAMO_CALLS_FILE"):
    import json
    import threading

    import botocore.handlers

    _NAMING = ("TableName", "IndexName", "Key", "Item", "RequestItems", "Bucket", "Prefix", "Tagging",
               "AutoScalingGroupName", "AutoScalingGroupNames", "InstanceId", "InstanceIds", "ServiceCode", "RoleArn")
    _lock = threading.Lock()
    _path = os.environ["PYANAMO_CALLS_FILE"]

    def _record(params, model, **_):
        named = {k: params[k] for k in _NAMING if k in params}
        if "RequestItems" in named:  # BatchGetItem: the tables, not the keys
            named["RequestItems"] = sorted(named["RequestItems"])
        if "Item" in named:  # PutItem: the partition key's value only
            named["Item"] = {"itemID": params["Item"].get("itemID")}
        line = json.dumps({"service": model.service_model.signing_name, "operation": model.name,
                           "params": named}, default=str)
        with _lock, open(_path, "a") as handle:
            handle.write(line + "\n")

    botocore.handlers.BUILTIN_HANDLERS.append(("provide-client-params.*.*", _record))
