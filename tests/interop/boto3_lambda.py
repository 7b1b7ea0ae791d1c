"""boto3's Lambda client against `lca-kvs local --function echo=test-lambda`: synchronous
invoke returns the function's answer, a failing function reports FunctionError, Event answers
202 and DryRun 204. Usage: boto3_lambda.py (with lca-kvs local's exports in the environment)."""
import json
import os
import sys

import boto3
import botocore.config


def main() -> int:
    client = boto3.client(
        "lambda",
        endpoint_url=os.environ["AWS_ENDPOINT_URL_LAMBDA"],
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )
    ok = client.invoke(FunctionName="echo", Payload=json.dumps({"echo": "hello"}))
    answer = json.loads(ok["Payload"].read())
    assert ok["StatusCode"] == 200 and answer["echo"] == "hello" and "FunctionError" not in ok, ok
    failed = client.invoke(FunctionName="echo", Payload=json.dumps({"fail": "bad contact"}))
    error = json.loads(failed["Payload"].read())
    assert failed.get("FunctionError") == "Unhandled" and error["errorMessage"] == "bad contact", failed
    event = client.invoke(FunctionName="echo", InvocationType="Event", Payload=b"{}")
    assert event["StatusCode"] == 202, event
    dry = client.invoke(FunctionName="echo", InvocationType="DryRun")
    assert dry["StatusCode"] == 204, dry
    print("boto3 interop: Lambda Invoke (RequestResponse, function error, Event, DryRun) against a real lambda_runtime binary")
    return 0


if __name__ == "__main__":
    sys.exit(main())
