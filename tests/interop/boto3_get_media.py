"""boto3's kinesis-video-media reads a stream that `lca-kvs put-media` wrote: GetMedia from
the EARLIEST fragment, its payload saved to a file (to compare with the source's audio).

Usage: boto3_get_media.py STREAM OUT.mkv   (with lca-kvs local's exports in the environment)
"""
import os
import sys

import boto3
import botocore.config


def main() -> int:
    stream, out_path = sys.argv[1], sys.argv[2]
    endpoint = os.environ["AWS_ENDPOINT_URL_KINESIS_VIDEO"]
    session = boto3.session.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1"
    )
    config = botocore.config.Config(retries={"max_attempts": 1})
    control = session.client("kinesisvideo", endpoint_url=endpoint, config=config)
    data_endpoint = control.get_data_endpoint(StreamName=stream, APIName="GET_MEDIA")["DataEndpoint"]
    media = session.client("kinesis-video-media", endpoint_url=data_endpoint, config=config)
    response = media.get_media(StreamName=stream, StartSelector={"StartSelectorType": "EARLIEST"})
    payload = response["Payload"].read()
    with open(out_path, "wb") as out:
        out.write(payload)
    print(f"boto3 interop: GetMedia of the PutMedia stream {stream} returned {len(payload)} bytes")
    return 0 if payload else 1


if __name__ == "__main__":
    sys.exit(main())
