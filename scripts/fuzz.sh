#!/usr/bin/env bash
# Runs every fuzz target under fuzz/ for a set time with libFuzzer.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET defaults to 600; targets default to all of them.
#   JOBS (default 2) targets run at once.
# Installs cargo-fuzz if it is missing. libFuzzer needs nightly compiler
# flags, so the stable toolchain is told to accept them (RUSTC_BOOTSTRAP=1).
# Crashing inputs are written to fuzz/artifacts/TARGET/; copy each into
# fuzz/regressions/TARGET/ so that `cargo test --test fuzz_regressions` keeps
# checking it.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-600}
shift || true
cd "$here/fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
export RUSTC_BOOTSTRAP=1
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build -O

jobs=${JOBS:-2}
status=0
run_one() {
  local target=$1
  mkdir -p "corpus/$target"
  # Seed each corpus with the regression inputs, if any.
  [[ -d regressions/$target ]] && cp -n regressions/"$target"/* "corpus/$target/" 2>/dev/null || true
  if cargo fuzz run -O "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      > "fuzz-$target.log" 2>&1; then
    echo "$target: no crash in $seconds s ($(grep -o 'stat::number_of_executed_units: [0-9]*' "fuzz-$target.log" | awk '{print $2}') runs)"
  else
    echo "$target: FAILED, see fuzz/fuzz-$target.log and fuzz/artifacts/$target/"
    return 1
  fi
}
running=0
for target in "${targets[@]}"; do
  run_one "$target" &
  running=$((running + 1))
  if [[ $running -ge $jobs ]]; then wait -n || status=1; running=$((running - 1)); fi
done
while [[ $running -gt 0 ]]; do wait -n || status=1; running=$((running - 1)); done
exit $status
