#!/usr/bin/env bash
# The README's demo command: a whole Connect call transcribed locally, no AWS account.
# Installs what it needs (scripts/setup.sh), builds lca-kvs with the pocketsphinx recognizer
# and runs `lca-kvs demo` with the options given (see `--help`). Relative paths in the options
# are taken from where you run it. LCA_DEMO_PROFILE=dev builds a debug binary (faster build).
set -euo pipefail
here="$PWD"
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
source scripts/setup.sh
profile="${LCA_DEMO_PROFILE:-release}"
cargo build --locked -q --profile "$profile" -p lca-kvs --features pocketsphinx
case "$profile" in dev) dir=debug ;; *) dir="$profile" ;; esac
cd "$here"
exec "$repo/target/$dir/lca-kvs" demo "$@"
