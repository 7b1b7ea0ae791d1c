#!/usr/bin/env bash
# Interop checks: clients written by others (boto3) against `lca-kvs local`.
# Installs boto3 into target/interop-venv. Expects target/debug/lca-kvs built.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/interop-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -c 'import boto3' 2>/dev/null || "$venv/bin/pip" install -q --disable-pip-version-check boto3
capture=../shared/fixtures/connect/sample-call.mkv
out=$(mktemp)
target/debug/lca-kvs local --stream call="$capture" --speed 0 > "$out" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 1 100); do
  grep -q '^ready$' "$out" && break
  sleep 0.1
done
grep -q '^ready$' "$out" || { echo "lca-kvs local did not become ready"; cat "$out"; exit 1; }
eval "$(grep '^export ' "$out")"
"$venv/bin/python" tests/interop/boto3_kvs.py call "$capture"
