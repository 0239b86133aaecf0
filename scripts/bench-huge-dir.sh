#!/usr/bin/env bash
# Times backup, mount listing and restore of one directory holding N entries,
# for N = 10,000, 100,000 and 1,000,000 (override with SIZES="..."), to show
# that the cost grows linearly and memory stays bounded. Prints a Markdown
# table (also written to $OUT, default ./bench-huge-dir-results.md).
#
# Usage: scripts/bench-huge-dir.sh      (as root, for FUSE)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/var/tmp/cairn-bench-huge}
OUT=${OUT:-$PWD/bench-huge-dir-results.md}
SIZES=${SIZES:-10000 100000 1000000}

cargo build --release --quiet --manifest-path "$here/Cargo.toml" --bin cairn
cairn=${CARGO_TARGET_DIR:-$here/target}/release/cairn
export CAIRN_PASSWORD=bench

mnt=$WORK/mnt
cleanup() { mountpoint -q "$mnt" 2>/dev/null && fusermount3 -u "$mnt"; true; }
trap cleanup EXIT

# timed LABEL CMD...: prints "wall_seconds peak_rss_kib" of CMD
timed() { /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > /dev/null 2>&1; cat "$WORK/time"; }

rows=()
for n in $SIZES; do
  rm -rf "$WORK"; mkdir -p "$WORK/src/dir" "$mnt"
  python3 - "$WORK/src/dir" "$n" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"entry-{i:07d}"), "wb") as f:
        f.write(i.to_bytes(4, "little"))
PY
  export CAIRN_REPO=$WORK/repo
  "$cairn" init > /dev/null
  read -r backup_s backup_kib < <(timed "$cairn" backup "$WORK/src")
  read -r rebackup_s _ < <(timed "$cairn" backup "$WORK/src")
  "$cairn" mount "$mnt" 2> "$WORK/mount.log" &
  pid=$!
  for _ in $(seq 600); do [[ -e $mnt/snapshots/latest ]] && break; sleep 0.05; done
  dir=$mnt/snapshots/latest$WORK/src/dir
  start=$(date +%s.%N); count=$(ls -f "$dir" | wc -l); end=$(date +%s.%N)
  ls_s=$(echo "$end - $start" | bc)
  start=$(date +%s.%N); ls -l "$dir" > /dev/null; end=$(date +%s.%N)
  ls_l_s=$(echo "$end - $start" | bc)
  mount_kib=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
  fusermount3 -u "$mnt"; wait "$pid"
  [[ $count -eq $((n + 2)) ]] || { echo "error: listed $count entries, expected $((n + 2))" >&2; exit 1; }
  read -r restore_s _ < <(timed "$cairn" restore latest --target "$WORK/restore")
  rows+=("| $n | $backup_s | $((backup_kib / 1024)) | $rebackup_s | $ls_s | $ls_l_s | $((mount_kib / 1024)) | $restore_s |")
  echo "${rows[-1]}" >&2
done

{
  echo "| entries | backup s | backup peak MiB | unchanged re-run s | mount \`ls -f\` s | mount \`ls -l\` s | mount peak MiB | restore s |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
} | tee "$OUT"
