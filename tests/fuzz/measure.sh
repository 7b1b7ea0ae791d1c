#!/usr/bin/env bash
# Executions per second of each fuzz target (README, "Fuzzing"): every target runs SECONDS
# (default 60) from its committed seeds into a fresh corpus, one job; then the corpus it found is
# replayed once, which compares two builds on the same inputs (pass the corpus of another build
# with CORPUS_FROM=DIR to replay its inputs instead). Needs nightly and cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
out="${TMPDIR:-/tmp}/lca-fuzz-measure"
cargo +nightly fuzz build -O
for target in flow_event hook_answer transcribe_results read_and_assemble; do
  corpus="$out/$target"
  rm -rf "$corpus" && mkdir -p "$corpus"
  cargo +nightly fuzz run -O "$target" "$corpus" "seeds/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$out/$target.log" 2>&1
  runs=$(grep -o 'number_of_executed_units: *[0-9]*' "$out/$target.log" | grep -o '[0-9]*$')
  replay="${CORPUS_FROM:-$out}/$target"
  binary=target/x86_64-unknown-linux-gnu/release/$target
  start=$(date +%s%N)
  "$binary" -runs=0 "$replay" >/dev/null 2>&1
  took_ms=$(( ($(date +%s%N) - start) / 1000000 ))
  echo "$target: $(( runs / seconds )) exec/s over ${seconds} s; replay of $(ls "$replay" | wc -l) inputs: ${took_ms} ms"
done
