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

# The run builds everything once: incremental state would only take disk, of which a CI machine
# may have little (the free space is printed at the start and at exit).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | sed 's/^/scripts\/test.sh: disk: /'
background=()
# A process and its descendants, parents first (pgrep, procps).
process_tree() {
  local child
  echo "$1"
  for child in $(pgrep -P "$1" 2>/dev/null); do process_tree "$child"; done
}
at_exit() {
  # Background builds (below) do not outlive the run, however it ends: each one's whole tree
  # (the script, cargo, rustc) is stopped, parents first so that none starts another child.
  local pid tree=()
  for pid in "${background[@]}"; do tree+=($(process_tree "$pid")); done
  [ ${#tree[@]} -eq 0 ] || kill "${tree[@]}" 2>/dev/null || true
  df -h . | sed "s/^/scripts\/test.sh: disk at exit: /"
  du -sh target | sed "s/^/scripts\/test.sh: /"
}
trap at_exit EXIT

# apt packages (espeak-ng, pocketsphinx) and moto server: see scripts/setup.sh.
source scripts/setup.sh
if ! "$venv/bin/pip" show cfn-lint 2>/dev/null | grep -qx "Version: 1.41.0"; then
  "$venv/bin/pip" install -q --disable-pip-version-check "cfn-lint==1.41.0"
fi

# Each step's start, with the minutes since the start of the run (CI time is watched).
started=$(date +%s)
step() { echo "scripts/test.sh: [$(( ($(date +%s) - started) / 60 )) min] $*" >&2; }

# Two builds that nothing needs until late run in the background from the start, at idle
# priority (SCHED_IDLE: they get only the CPU that clippy, the test build and the tests, which
# mostly wait on the stand-ins' clocks, leave): the functions as the arm64 zips the stack
# ships (infra/package.sh, the run's longest build), and the demo's own build
# (scripts/demo.sh, profile `demo`), so that the demo step runs what a newcomer builds.
# Each one's log is printed when it is waited for.
# Runs a command at idle priority. Not in a session of its own (setsid): with the kernel's
# autogroup scheduling each session gets an equal share of the CPU whatever its tasks' class,
# which made clippy 2.5 times slower.
idle() { if command -v chrt >/dev/null; then chrt --idle 0 "$@"; else nice -n 19 "$@"; fi; }
mkdir -p target
idle bash infra/package.sh > target/package.log 2>&1 &
background+=($!); package=$!
LCA_DEMO_BUILD_ONLY=1 idle bash scripts/demo.sh > target/demo-build.log 2>&1 &
background+=($!); demo_build=$!
# Waits for a background build; on failure prints its log and stops the run.
wait_for() {
  local pid="$1" what="$2" log="$3"
  if ! wait "$pid"; then
    cat "$log" >&2
    echo "scripts/test.sh: $what failed (log above, $log)" >&2
    exit 1
  fi
  cat "$log"
}

# The offline recognizer (feature pocketsphinx) is on for the tests; the clippy run without
# it shows that the rest needs none of its system libraries.
features=lca-tests/pocketsphinx
step clippy
cargo clippy --workspace --all-targets --locked --features "$features" -- -D warnings
cargo clippy -p local-aws -p lca-kvs --all-targets --locked -- -D warnings
# The CLI without the stand-ins (`--no-default-features`): its real-account commands link none.
cargo clippy -p lca-kvs --bins --locked --no-default-features -- -D warnings
# The fuzz targets (their own workspace, built for fuzzing by cargo-fuzz on nightly) still
# compile against the crates they fuzz; about 30 s, as they link only the pure crates.
# (libfuzzer-sys builds libFuzzer, C++, even for a check.)
ensure_apt_packages g++
cargo check --manifest-path tests/fuzz/Cargo.toml --bins --target-dir target/fuzz-check
step tests
# Most suites wait on the stand-ins' clocks (held requests, leases, paced calls): with six
# test threads on two cores the lambda suite takes 90 s instead of 240, the pipeline suite 65
# instead of 170.
RUST_TEST_THREADS="${RUST_TEST_THREADS:-6}" cargo test --workspace --locked --features "$features"

# From here on, the binaries that `cargo test` built (target/debug: lca-kvs, the functions,
# test-lambda, the benches) are run as they are. A `cargo build` of single packages would
# resolve features without the dev-dependencies (tempfile and proptest turn on getrandom's
# std, which reaches every AWS SDK crate through aws-runtime) and compile the SDKs again.

# The deployment: the template validated offline, the functions built as the arm64 zips it
# ships (sizes printed; no upload).
step deployment
"$venv/bin/cfn-lint" infra/template.yaml
wait_for "$package" "infra/package.sh (the arm64 zips)" target/package.log

# The zips the stack ships, run: each arm64 bootstrap under qemu-user as a function of the
# local Lambda, in the end-to-end tests the x86_64 build passed above (StartLCA → transcriber
# with hand-overs and the recording → events and WAV; the contact-event processor; the stack
# checked by `lca-kvs try-stack` in a stand-in account), then
# their cold start under emulation (information only: the emulator's own cost is in it).
step "shipped arm64 functions (qemu)"
ensure_apt_packages qemu-user-static libc6-arm64-cross unzip
arm64="$PWD/target/arm64-functions"
rm -rf "$arm64"
for f in start-lca call-transcriber contact-event-processor; do
  mkdir -p "$arm64/$f"
  unzip -q "infra/build/$f.zip" -d "$arm64/$f"
done
LCA_TEST_ARM64_FUNCTIONS="$arm64" cargo test --workspace --locked \
  --features "$features" --test lambda --test processor --test cli -- --exact \
  start_lca_then_hand_overs_transcribe_and_record_every_sample_once \
  the_real_binary_under_lambda_publishes_the_agent \
  try_stack_checks_a_stand_in_account_and_names_each_broken_step
LCA_TEST_ARM64_FUNCTIONS="$arm64" target/debug/lambda-init-bench --runs 3

# Clients written by others (boto3) against `lca-kvs local`.
step interop
bash tests/interop/run.sh

# Smoke runs: the README's main command and the benchmark's correctness check stay working.
# The demo in its fast mode (the whole call at once), as a newcomer runs it; it must show the
# transcript, a summary and the recording.
# With RUST_LOG=trace: no log line (the functions' and the demo's own) may carry the call's
# phone numbers or any of the transcript it printed.
step demo
wait_for "$demo_build" "the demo's build" target/demo-build.log
RUST_LOG=trace bash scripts/demo.sh --speed 0 \
  --recording-out target/demo-recording.wav > target/demo.out 2> target/demo.err \
  || { cat target/demo.out target/demo.err >&2; exit 1; }
cat target/demo.out
grep -v '^{' target/demo.err
grep -q "^\[ *[0-9.]* s\] Agent : ." target/demo.out
grep -q "^\[ *[0-9.]* s\] Caller: ." target/demo.out
grep -q "WER caller" target/demo.err
test "$(stat -c %s target/demo-recording.wav)" -gt 800000
python3 - target/demo.out target/demo.err <<'PY'
import re, sys
out, err = (open(path, encoding="utf-8").read() for path in sys.argv[1:3])
logs = re.search(r"^  logs: +(\S+)", err, re.M)
assert logs, "the demo's summary names no log file"
text = err + open(logs.group(1), encoding="utf-8").read()
lines = [l for l in text.splitlines() if l.startswith("{")]
assert len(lines) > 1000, f"only {len(lines)} log lines: is RUST_LOG=trace reaching the functions?"
for number in ("15550100001", "15550100002"):
    assert number not in text, "a phone number of the call is in a log line"
said = [m.group(1).strip() for m in re.finditer(r"^\[ *[0-9.]+ s\] (?:Agent |Caller): (.+)$", out, re.M)]
said = [s for s in said if len(s) >= 12]
assert said, "the demo printed no transcript"
leaked = [s for s in said if s in text]
assert not leaked, f"{len(leaked)} of {len(said)} transcript lines are in the logs"
print(f"demo at RUST_LOG=trace: {len(lines)} log lines, no phone number, none of {len(said)} transcript lines")
PY
step benches
target/debug/media-bench --minutes 2 --skip-node
target/debug/pipeline-bench --minutes 2 --latency-minutes 1
target/debug/lambda-call-bench --minutes 2 --invoke-timeout-ms 3000
# The worst catch-up's memory: the whole call a backlog to a Transcribe that works in real time.
target/debug/lambda-call-bench --minutes 2 --transcribe-speed 60
# Twice as many calls as the Transcribe quota allows: every call complete, nothing lost or
# repeated (the bench exits non-zero otherwise).
target/debug/capacity-bench --calls 4 --limit 2 --speed 20
# (catch-up-bench is not run here: tests/tests/catch_up.rs plays its case, a capacity stall
# against a Transcribe that processes in real time, and checks the bound besides.)
step done
