#!/usr/bin/env bash
# The project's test command (README.md). Installs what it needs, then runs every test.
# Needs ../shared/fixtures beside the repository (as CI provides it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d ../shared/fixtures ]; then
  echo "scripts/test.sh: ../shared/fixtures is missing; the tests read the shared captures" >&2
  exit 2
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# moto server (Kinesis, S3, DynamoDB emulator) for the end-to-end tests, in a venv under target/.
# Pinned to 5.1.22: moto 5.2.x answers CompleteMultipartUpload with a
# <CompleteMultipartUploadResponse> root, which the AWS SDK for Rust rejects.
moto_version=5.1.22
venv=target/interop-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/pip" show moto 2>/dev/null | grep -qx "Version: $moto_version"; then
  "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$moto_version"
fi
if ! "$venv/bin/pip" show cfn-lint 2>/dev/null | grep -qx "Version: 1.41.0"; then
  "$venv/bin/pip" install -q --disable-pip-version-check "cfn-lint==1.41.0"
fi
export MOTO_SERVER="$PWD/$venv/bin/moto_server"

cargo test --workspace --locked

# The deployment: the template validated offline, the functions built as the arm64 zips it
# ships (sizes printed; no upload).
"$venv/bin/cfn-lint" infra/template.yaml
bash infra/package.sh

# Clients written by others (boto3) against `lca-kvs local`.
cargo build --locked -q -p lca-kvs -p local-aws --bins
bash tests/interop/run.sh

# Smoke runs: the README's main command and the benchmark's correctness check stay working.
cargo run --locked -q -p lca-kvs -- demo --recording-out target/demo-recording.wav > /dev/null
cargo run --locked -q -p lca-tests --bin media-bench -- --minutes 2 --skip-node
cargo build --locked -q -p lca-kvs -p lca-tests --bins
target/debug/pipeline-bench --minutes 2 --latency-minutes 1
target/debug/lambda-call-bench --minutes 2 --invoke-timeout-ms 3000
