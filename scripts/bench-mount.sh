#!/usr/bin/env bash
# Compares listing and reading through cairn's mount with the native tree,
# `restic mount` and `borg mount`, in one run on the same data, and prints a
# Markdown report (also written to $OUT, default ./bench-mount-results.md).
#
# Data (built if missing): DATA/many, 300,000 small files at depth 4, made by
# make_many.py (BENCH_MANY_SCRIPT), and DATA/big/random.bin, 500 MiB made by
# make_data.sh (BENCH_DATA_SCRIPT). DATA defaults to ~/bench-data.
# For each tool: back up both, mount, then time the first `ls` of the snapshot
# list, `find | wc -l`, `ls -lR`, `du -s` (cold: right after mounting with the
# page cache dropped; warm: a second time), reading the 500 MiB file, and the
# mount process's resident memory after the listings (VmRSS) and at its peak
# (VmHWM). For cairn also: `cairn restore` of the 500 MiB file, and the first
# `ls snapshots/` of a repository holding 200 snapshots.
#
# Usage: scripts/bench-mount.sh      (as root: FUSE and drop_caches)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
DATA=${DATA:-$HOME/bench-data}
WORK=${WORK:-/var/tmp/cairn-bench-mount}
OUT=${OUT:-$PWD/bench-mount-results.md}
make_many=${BENCH_MANY_SCRIPT:-$here/../shared/bench/make_many.py}
make_data=${BENCH_DATA_SCRIPT:-$here/../shared/bench/make_data.sh}

log() { printf '[bench-mount %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

command -v restic >/dev/null && command -v borg >/dev/null && command -v fusermount3 >/dev/null || {
  apt-get update -qq && apt-get install -y -qq restic borgbackup fuse3 python3-llfuse >/dev/null
}
[[ -d $DATA/many ]] || python3 "$make_many" --out "$DATA/many"
[[ -f $DATA/big/random.bin ]] || DATA=$DATA bash "$make_data"

cargo build --release --quiet --manifest-path "$here/Cargo.toml" --bin cairn
cairn=${CARGO_TARGET_DIR:-$here/target}/release/cairn

mountpoint_dir=$WORK/mnt
cleanup() {
  mountpoint -q "$mountpoint_dir" 2>/dev/null && { fusermount3 -u "$mountpoint_dir" || umount -l "$mountpoint_dir"; }
  true
}
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK/src" "$mountpoint_dir"
# One source directory holding both data sets, so every tool backs up one path.
cp -a "$DATA/many" "$WORK/src/many"
cp "$DATA/big/random.bin" "$WORK/src/random.bin"
src=$WORK/src

export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export BORG_BASE_DIR=$WORK/borg-home RESTIC_CACHE_DIR=$WORK/restic-cache

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
seconds() { local start end; start=$(date +%s.%N); "$@" > /dev/null 2>&1; end=$(date +%s.%N); echo "$end - $start" | bc; }

results=$WORK/results.tsv
: > "$results"
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$results"; log "$1 $2: $3"; }

# measure TOOL DIR [PID]: the listing and reading steps on DIR; with the PID of
# a mount process, also its resident memory after the listings
measure() {
  local tool=$1 dir=$2 pid=${3:-}
  drop_caches
  record "$tool" find-cold "$(seconds sh -c "find '$dir' | wc -l")"
  record "$tool" find-warm "$(seconds sh -c "find '$dir' | wc -l")"
  drop_caches
  record "$tool" ls-lR-cold "$(seconds ls -lR "$dir")"
  record "$tool" ls-lR-warm "$(seconds ls -lR "$dir")"
  record "$tool" du-warm "$(seconds du -s "$dir")"
  [[ -z $pid ]] || record "$tool" rss-after-listing-MiB "$(( $(awk '/VmRSS/ {print $2}' /proc/"$pid"/status) / 1024 ))"
  drop_caches
  record "$tool" read-500MiB "$(seconds cat "$dir/random.bin")"
}

# mounted TOOL PID SNAPSHOT_LIST_DIR TREE_DIR: waits for the mount, then measures
mounted() {
  local tool=$1 pid=$2 list=$3 tree=$4 start end
  start=$(date +%s.%N)
  # The mount point is an empty directory until the file system appears, so
  # wait for the mount itself and then for the listing.
  for _ in $(seq 6000); do mountpoint -q "$mountpoint_dir" && ls "$list" > /dev/null 2>&1 && break; sleep 0.05; done
  end=$(date +%s.%N)
  record "$tool" first-ls "$(echo "$end - $start" | bc)"
  measure "$tool" "$tree" "$pid"
  record "$tool" peak-rss-MiB "$(( $(awk '/VmHWM/ {print $2}' /proc/"$pid"/status) / 1024 ))"
  fusermount3 -u "$mountpoint_dir"
  wait "$pid" || true
}

log "native tree"
measure native "$src"

log "cairn"
export CAIRN_REPO=$WORK/cairn-repo
"$cairn" init > /dev/null
"$cairn" backup -q "$src"
drop_caches
"$cairn" mount "$mountpoint_dir" 2> "$WORK/cairn-mount.log" &
mounted cairn $! "$mountpoint_dir/snapshots" "$mountpoint_dir/snapshots/latest$src"

log "cairn restore of the 500 MiB file, for the read speed through the mount"
drop_caches
record cairn restore-500MiB "$(seconds "$cairn" restore -q latest --target "$WORK/restored" --include "$src/random.bin")"
rm -rf "$WORK/restored"

log "cairn: first ls of snapshots/ in a repository of 200 snapshots"
export CAIRN_REPO=$WORK/cairn-200
"$cairn" init > /dev/null
mkdir -p "$WORK/small"
for i in $(seq 200); do
  echo "$i" > "$WORK/small/counter"
  "$cairn" backup -q "$WORK/small"
done
drop_caches
"$cairn" mount "$mountpoint_dir" 2> "$WORK/cairn-200-mount.log" &
pid=$!
start=$(date +%s.%N)
for _ in $(seq 6000); do mountpoint -q "$mountpoint_dir" && ls "$mountpoint_dir/snapshots" > /dev/null 2>&1 && break; sleep 0.01; done
end=$(date +%s.%N)
record cairn first-ls-200-snapshots "$(echo "$end - $start" | bc)"
listed=$(ls "$mountpoint_dir/snapshots" | wc -l)
[[ $listed -eq 201 ]] || { log "expected 200 snapshots and latest, found $listed entries"; exit 1; }
fusermount3 -u "$mountpoint_dir"
wait "$pid" || true
export CAIRN_REPO=$WORK/cairn-repo

log "restic"
export RESTIC_REPOSITORY=$WORK/restic-repo
restic init -q
restic backup -q "$src"
drop_caches
restic mount "$mountpoint_dir" > "$WORK/restic-mount.log" 2>&1 &
mounted restic $! "$mountpoint_dir/snapshots" "$mountpoint_dir/snapshots/latest$src"

log "borg"
borg init -e repokey-blake2 "$WORK/borg-repo"
borg create --compression zstd,3 "$WORK/borg-repo::one" "$src"
drop_caches
borg mount -f "$WORK/borg-repo::one" "$mountpoint_dir" > "$WORK/borg-mount.log" 2>&1 &
mounted borg $! "$mountpoint_dir" "$mountpoint_dir${src}"

python3 - "$results" "$OUT" <<'PY'
import sys, platform
results, out = sys.argv[1:]
value = {}
for line in open(results):
    tool, step, v = line.split("\t")
    value[(tool, step)] = float(v)
steps = ["first-ls", "find-cold", "find-warm", "ls-lR-cold", "ls-lR-warm", "du-warm",
         "rss-after-listing-MiB", "read-500MiB", "restore-500MiB", "peak-rss-MiB",
         "first-ls-200-snapshots"]
tools = ["native", "cairn", "restic", "borg"]
cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
lines = [f"Machine: {len(cpu)} x {cpu[0]}, kernel {platform.release()}", "",
         "| step | " + " | ".join(tools) + " | cairn / native | cairn / restic | cairn / borg |",
         "|---|" + "---:|" * (len(tools) + 3)]
for step in steps:
    row = [value.get((t, step)) for t in tools]
    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else ""
    cells = [f"{v:.2f}" if v is not None else "" for v in row]
    lines.append(f"| {step} | " + " | ".join(cells) + f" | {ratio(row[1], row[0])} | {ratio(row[1], row[2])} | {ratio(row[1], row[3])} |")
text = "\n".join(lines) + "\n\nTimes in seconds, memory in MiB.\n"
open(out, "w").write(text)
print(text)
PY
