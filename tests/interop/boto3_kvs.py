"""Clients written by others against `lca-kvs local`: boto3's kinesisvideo and
kinesis-video-media read a stream exactly as they would from AWS.

Usage: boto3_kvs.py STREAM CAPTURE.mkv   (with lca-kvs local's exports in the environment)
"""
import os
import re
import sys

import boto3
import botocore.config


def main() -> int:
    stream, capture_path = sys.argv[1], sys.argv[2]
    endpoint = os.environ["AWS_ENDPOINT_URL_KINESIS_VIDEO"]
    session = boto3.session.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1"
    )
    config = botocore.config.Config(retries={"max_attempts": 1})
    control = session.client("kinesisvideo", endpoint_url=endpoint, config=config)
    info = control.describe_stream(StreamName=stream)["StreamInfo"]
    assert info["StreamName"] == stream and info["Status"] == "ACTIVE", info
    data_endpoint = control.get_data_endpoint(StreamName=stream, APIName="GET_MEDIA")["DataEndpoint"]
    media = session.client("kinesis-video-media", endpoint_url=data_endpoint, config=config)
    response = media.get_media(StreamARN=info["StreamARN"], StartSelector={"StartSelectorType": "EARLIEST"})
    received = response["Payload"].read()
    expected = open(capture_path, "rb").read()
    # The same fragments in the same order; MILLIS_BEHIND_NOW re-stamped by the server.
    tag = lambda name: re.compile(name + rb"\x44\x87[\x80-\xff](\d+)")
    numbers = tag(rb"AWS_KINESISVIDEO_FRAGMENT_NUMBER")
    behind = [int(m) for m in tag(rb"AWS_KINESISVIDEO_MILLIS_BEHIND_NOW").findall(received)]
    if numbers.findall(received) != numbers.findall(expected) or not numbers.findall(received):
        print(f"boto3: received {len(received)} bytes without the capture's fragments in order")
        return 1
    if behind[-1] != 0 or sorted(behind, reverse=True) != behind:
        print(f"boto3: MILLIS_BEHIND_NOW values {behind[:3]}...{behind[-3:]} are not counting down to 0")
        return 1
    try:
        control.describe_stream(StreamName="no-such-stream")
        print("boto3: describe_stream of a missing stream succeeded")
        return 1
    except control.exceptions.ResourceNotFoundException:
        pass
    print(f"boto3 interop: GetDataEndpoint + GetMedia returned the capture's {len(behind)} fragments in order; errors map to ResourceNotFoundException")
    return 0


if __name__ == "__main__":
    sys.exit(main())
