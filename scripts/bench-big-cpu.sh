#!/usr/bin/env bash
# Measures the CPU time of `cairn backup` of the three 500 MiB files that
# make_data.sh builds in DATA/big, into a fresh repository each run, with the
# page cache dropped before each run. CPU time (user + system) changes less
# than wall time when other work shares the machine.
#
# Usage: scripts/bench-big-cpu.sh [CAIRN_BINARY] [RUNS]   (as root, for drop_caches)
# Prints one line per run: wall s, user s, system s, CPU s, peak RSS KiB,
# repository size in bytes.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cairn=${1:-${CARGO_TARGET_DIR:-$here/target}/release/cairn}
runs=${2:-3}
DATA=${DATA:-$HOME/bench-data}
WORK=${WORK:-/var/tmp/cairn-bench-big-cpu}
SOURCE=${SOURCE:-$DATA/big}

[[ -d $SOURCE ]] || { echo "error: no data in $SOURCE; run make_data.sh or set DATA" >&2; exit 1; }
mkdir -p "$WORK"
export CAIRN_PASSWORD=bench CAIRN_REPO=$WORK/repo

for _ in $(seq "$runs"); do
  rm -rf "$CAIRN_REPO"
  "$cairn" init > /dev/null
  sync; echo 3 > /proc/sys/vm/drop_caches
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" "$cairn" backup "$SOURCE" > "$WORK/log" 2>&1 ||
    { echo "error: backup failed, see $WORK/log" >&2; tail -5 "$WORK/log" >&2; exit 1; }
  read -r wall user sys rss < "$WORK/time"
  printf 'wall %s user %s sys %s cpu %s rss %s repo %s\n' "$wall" "$user" "$sys" \
    "$(echo "$user + $sys" | bc)" "$rss" "$(du -sb "$CAIRN_REPO" | cut -f1)"
done
