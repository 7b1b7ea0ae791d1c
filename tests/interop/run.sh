#!/usr/bin/env bash
# Interop checks: clients written by others against `lca-kvs local` — boto3 (kinesisvideo,
# kinesis-video-media) and the JavaScript SDK v3 clients LCA itself uses: Transcribe Streaming
# and Kinesis (HTTP/2 only), S3 and DynamoDB. Installs them under target/. Expects
# target/debug/lca-kvs built, and moto server ($MOTO_SERVER, scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/interop-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -c 'import boto3' 2>/dev/null || "$venv/bin/pip" install -q --disable-pip-version-check boto3
node_dir=target/interop-node
js_clients=(client-transcribe-streaming client-kinesis client-s3 client-dynamodb)
for client in "${js_clients[@]}"; do
  if [ ! -d "$node_dir/node_modules/@aws-sdk/$client" ]; then
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error \
      $(printf '@aws-sdk/%s@3.1141.0 ' "${js_clients[@]}")
    break
  fi
done
cp tests/interop/js_transcribe.mjs tests/interop/js_kinesis_s3_dynamodb.mjs "$node_dir/"

fixtures=../shared/fixtures/connect
pids=()
outs=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -f "${outs[@]}"' EXIT

# Starts `lca-kvs local ARGS...` and loads its exports into this shell.
start_local() {
  local out
  out=$(mktemp)
  outs+=("$out")
  target/debug/lca-kvs local "$@" > "$out" &
  pids+=($!)
  for _ in $(seq 1 300); do
    grep -q '^ready$' "$out" && break
    sleep 0.1
  done
  grep -q '^ready$' "$out" || { echo "lca-kvs local did not become ready"; cat "$out"; exit 1; }
  eval "$(grep '^export ' "$out")"
}

start_local --stream call="$fixtures/sample-call.mkv" --speed 0 --function echo=target/debug/test-lambda --no-moto
"$venv/bin/python" tests/interop/boto3_kvs.py call "$fixtures/sample-call.mkv"
"$venv/bin/python" tests/interop/boto3_lambda.py
# PutMedia: the call sent by our producer reads back through boto3's GetMedia as the same audio.
put_mkv=$(mktemp) put_wav=$(mktemp --suffix=.wav) source_wav=$(mktemp --suffix=.wav)
outs+=("$put_mkv" "$put_wav" "$source_wav")
target/debug/lca-kvs put-media "$fixtures/sample-call.mkv" --stream-name put --create --speed 0 > /dev/null
"$venv/bin/python" tests/interop/boto3_get_media.py put "$put_mkv"
target/debug/lca-kvs extract "$put_mkv" -o "$put_wav" 2> /dev/null
target/debug/lca-kvs extract "$fixtures/sample-call.mkv" -o "$source_wav" 2> /dev/null
cmp "$put_wav" "$source_wav" || { echo "boto3 interop: the PutMedia stream's audio differs from the sample call's"; exit 1; }
NODE_NO_WARNINGS=1 node "$node_dir/js_transcribe.mjs" "$fixtures/sample-call.caller.raw" "$fixtures/sample-call.agent.raw"

# The same over TLS with ALPN h2, as production runs (the client trusts the local certificate).
start_local --tls --no-moto
NODE_NO_WARNINGS=1 node "$node_dir/js_transcribe.mjs" "$fixtures/sample-call.caller.raw" "$fixtures/sample-call.agent.raw"

# With moto: the JavaScript SDK's Kinesis client (HTTP/2 only) through the exported Kinesis
# endpoint, S3 and DynamoDB with their default handlers.
start_local --stream call="$fixtures/sample-call.mkv" --speed 0
NODE_NO_WARNINGS=1 node "$node_dir/js_kinesis_s3_dynamodb.mjs"
