#!/usr/bin/env bash
# The README's demo command: a whole Connect call transcribed locally, no AWS account.
# Installs what it needs (scripts/setup.sh), builds lca-kvs with the pocketsphinx recognizer
# and runs `lca-kvs demo` with the options given (see `--help`). Relative paths in the options
# are taken from where you run it.
#
# The build uses the `demo` profile (Cargo.toml: unoptimized but for the resampler, no debug
# info) and leaves out what the demo does not run (`try-stack --stack`'s CloudFormation,
# cargo feature `stack-lookup`):
# about 3 minutes on a fresh 2-core machine, seconds once built. While cargo builds, espeak-ng
# and moto server are installed. LCA_DEMO_PROFILE=release (or dev) builds with that profile
# instead; LCA_DEMO_BUILD_ONLY=1 stops after the build.
set -euo pipefail
here="$PWD"
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
setup_steps=none source scripts/setup.sh
profile="${LCA_DEMO_PROFILE:-demo}"
case "$profile" in dev) dir=debug ;; *) dir="$profile" ;; esac
binary="$repo/target/$dir/lca-kvs"

install_build_needs
first_time="about 3 minutes"
[ "$profile" = demo ] || first_time="up to 12 minutes (profile demo: 3)"
echo "scripts/demo.sh: building lca-kvs (cargo profile $profile, the offline recognizer; the first" \
  "time $first_time on 2 cores, then seconds), installing espeak-ng and moto server meanwhile" >&2
# On a terminal cargo draws its progress bar; elsewhere (logs, CI) it says nothing but errors.
quiet=(-q)
[ -t 2 ] && quiet=()
# The demo profile's binary has only what the demo runs; another profile's keeps the default
# features (target/release/lca-kvs also serves `try-stack --stack`).
features=(--features pocketsphinx)
[ "$profile" != demo ] || features=(--no-default-features --features pocketsphinx)
cargo build --locked "${quiet[@]}" --profile "$profile" -p lca-kvs --bin lca-kvs "${features[@]}" &
build=$!
# A failed install stops the build too, instead of leaving it running.
trap 'kill "$build" 2>/dev/null || true' EXIT
install_run_needs
if ! wait "$build"; then
  echo "scripts/demo.sh: the build of lca-kvs failed (above)" >&2
  exit 1
fi
trap - EXIT
# scripts/test.sh builds the demo in the background while it runs other steps.
[ -z "${LCA_DEMO_BUILD_ONLY:-}" ] || exit 0
cd "$here"
exec "$binary" demo "$@"
