#!/usr/bin/env bash
# Times cairn, restic and borg in one run on the same data and prints a
# Markdown report (also written to $OUT, default ./bench-backup-results.md).
#
# Data: the benchmark sets that make_data.sh builds, found through
#   BENCH_DATA_SCRIPT (path to make_data.sh) and DATA (default ~/bench-data):
#   DATA/src  a source-code-like tree of about 1.6 GB in 90,000 files
#   DATA/big  three 500 MiB files (random, binaries, tar)
# Steps per tool: first backup of src, unchanged re-run, re-run after 50
# files change, backup of big/, full restore of the latest src snapshot.
# Each step runs after dropping the page cache, with /usr/bin/time for wall
# time, CPU time and peak RSS. Settings: cairn defaults (zstd 3); restic
# defaults (repository v2, compression auto); borg `--compression zstd,3`,
# `repokey-blake2` encryption.
#
# Usage: scripts/bench-backup.sh      (as root, for drop_caches)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
DATA=${DATA:-$HOME/bench-data}
WORK=${WORK:-/var/tmp/cairn-bench}
OUT=${OUT:-$PWD/bench-backup-results.md}
make_data=${BENCH_DATA_SCRIPT:-$here/../shared/bench/make_data.sh}

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

command -v restic >/dev/null && command -v borg >/dev/null || {
  log "installing restic and borgbackup"
  apt-get update -qq && apt-get install -y -qq restic borgbackup >/dev/null
}
if [[ ! -d $DATA/src || ! -d $DATA/big ]]; then
  [[ -f $make_data ]] || { echo "error: no data in $DATA and no make_data.sh at $make_data; set DATA or BENCH_DATA_SCRIPT" >&2; exit 1; }
  DATA=$DATA bash "$make_data"
fi

log "building cairn"
cargo build --release --quiet --manifest-path "$here/Cargo.toml" --bin cairn --example primitive_speed
cairn=${CARGO_TARGET_DIR:-$here/target}/release/cairn

rm -rf "$WORK"; mkdir -p "$WORK"
cp -a "$DATA/src" "$WORK/src"       # the copy is changed between runs
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_BASE_DIR=$WORK/borg-home RESTIC_CACHE_DIR=$WORK/restic-cache

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# run TOOL STEP CMD...: times one step, appends "tool step wall cpu rss" to results
results=$WORK/results.tsv
: > "$results"
run() {
  local tool=$1 step=$2; shift 2
  drop_caches
  local stats=$WORK/time.$tool.$step
  if ! /usr/bin/time -f "%e %U %S %M" -o "$stats" "$@" > "$WORK/log.$tool.$step" 2>&1; then
    # cairn exits 3 for an incomplete backup; anything else is a failure.
    echo "error: $tool $step failed, see $WORK/log.$tool.$step" >&2; tail -5 "$WORK/log.$tool.$step" >&2; exit 1
  fi
  read -r wall user sys rss < <(tail -1 "$stats")
  printf '%s\t%s\t%s\t%s\t%s\n' "$tool" "$step" "$wall" "$(echo "$user + $sys" | bc)" "$rss" >> "$results"
  log "$tool $step: ${wall}s wall, peak ${rss} KiB"
}

change_50_files() {
  # Appends a line to 50 files spread over the tree (same files for every tool).
  find "$WORK/src" -type f -name '*.py' | sort | awk 'NR % 97 == 0' | head -50 |
    while read -r f; do echo "# changed $1" >> "$f"; done
}

restore_dir=$WORK/restore
sizes=$WORK/sizes.tsv
: > "$sizes"

bench_cairn() {
  export CAIRN_REPO=$WORK/cairn-repo
  "$cairn" init > /dev/null
  run cairn first "$cairn" backup "$WORK/src"
  run cairn unchanged "$cairn" backup "$WORK/src"
  change_50_files cairn
  run cairn changed "$cairn" backup "$WORK/src"
  printf 'cairn\tsrc\t%s\n' "$(du -sb "$CAIRN_REPO" | cut -f1)" >> "$sizes"
  run cairn big "$cairn" backup "$DATA/big"
  local snap
  snap=$("$cairn" snapshots --json | python3 -c 'import json,sys; print([s["id"] for s in json.load(sys.stdin) if s["paths"] == [sys.argv[1]]][-1])' "$WORK/src")
  run cairn restore "$cairn" restore "$snap" --target "$restore_dir/cairn"
  diff -rq --no-dereference "$WORK/src" "$restore_dir/cairn$WORK/src" > /dev/null ||
    { echo "error: cairn restore differs" >&2; exit 1; }
  printf 'cairn\tall\t%s\n' "$(du -sb "$CAIRN_REPO" | cut -f1)" >> "$sizes"
}

bench_restic() {
  export RESTIC_REPOSITORY=$WORK/restic-repo
  restic init -q
  run restic first restic backup -q "$WORK/src"
  run restic unchanged restic backup -q "$WORK/src"
  change_50_files restic
  run restic changed restic backup -q "$WORK/src"
  printf 'restic\tsrc\t%s\n' "$(du -sb "$RESTIC_REPOSITORY" | cut -f1)" >> "$sizes"
  run restic big restic backup -q "$DATA/big"
  local snap
  snap=$(restic snapshots --json --path "$WORK/src" | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
  run restic restore restic restore -q "$snap" --target "$restore_dir/restic"
  printf 'restic\tall\t%s\n' "$(du -sb "$RESTIC_REPOSITORY" | cut -f1)" >> "$sizes"
}

bench_borg() {
  local repo=$WORK/borg-repo
  borg init -e repokey-blake2 "$repo"
  run borg first borg create --compression zstd,3 "$repo::first" "$WORK/src"
  run borg unchanged borg create --compression zstd,3 "$repo::unchanged" "$WORK/src"
  change_50_files borg
  run borg changed borg create --compression zstd,3 "$repo::changed" "$WORK/src"
  printf 'borg\tsrc\t%s\n' "$(du -sb "$repo" | cut -f1)" >> "$sizes"
  run borg big borg create --compression zstd,3 "$repo::big" "$DATA/big"
  mkdir -p "$restore_dir/borg"
  (cd "$restore_dir/borg" && run borg restore borg extract "$repo::changed")
  printf 'borg\tall\t%s\n' "$(du -sb "$repo" | cut -f1)" >> "$sizes"
}

primitives() {
  drop_caches
  local start end
  start=$(date +%s.%N)
  cat "$DATA"/big/*.bin "$DATA"/big/*.tar > /dev/null
  end=$(date +%s.%N)
  echo "disk-read $(echo "1572864000 / ($end - $start) / 1000000" | bc) MB/s"
  "${CARGO_TARGET_DIR:-$here/target}/release/examples/primitive_speed" "$DATA"/big/random.bin "$DATA"/big/bins.bin
}

log "measuring primitives"
primitives > "$WORK/primitives.txt"
bench_cairn
rm -rf "$restore_dir"
bench_restic
rm -rf "$restore_dir"
bench_borg
rm -rf "$restore_dir"

python3 - "$results" "$sizes" "$WORK/primitives.txt" "$OUT" <<'PY'
import sys, platform, subprocess
results, sizes, prims, out = sys.argv[1:]
rows = {}
for line in open(results):
    tool, step, wall, cpu, rss = line.split()
    rows[(tool, step)] = (float(wall), float(cpu), int(rss))
size = {}
for line in open(sizes):
    tool, what, b = line.split()
    size[(tool, what)] = int(b)
def version(cmd):
    try: return subprocess.run(cmd, capture_output=True, text=True).stdout.split("\n")[0]
    except Exception: return "?"
cpu = [l.split(":",1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
lines = []
lines.append(f"Machine: {len(cpu)} x {cpu[0]}, {round(int(open('/proc/meminfo').readline().split()[1])/1048576)} GiB RAM, kernel {platform.release()}")
lines.append(f"Versions: cairn {version(['cairn','--version']) if False else 'from this tree'}, {version(['restic','version'])}, {version(['borg','--version'])}")
lines.append("")
lines.append("| step | tool | wall s | CPU s | peak RSS MiB | wall vs restic | wall vs borg |")
lines.append("|---|---|---:|---:|---:|---:|---:|")
for step in ["first", "unchanged", "changed", "big", "restore"]:
    for tool in ["cairn", "restic", "borg"]:
        if (tool, step) not in rows: continue
        w, c, r = rows[(tool, step)]
        vr = w / rows[("restic", step)][0] if ("restic", step) in rows else 0
        vb = w / rows[("borg", step)][0] if ("borg", step) in rows else 0
        lines.append(f"| {step} | {tool} | {w:.2f} | {c:.2f} | {r/1024:.0f} | {vr:.2f} | {vb:.2f} |")
lines.append("")
lines.append("| repository size | cairn MiB | restic MiB | borg MiB | cairn / borg |")
lines.append("|---|---:|---:|---:|---:|")
for what in ["src", "all"]:
    c, r, b = (size.get((t, what), 0) / 1048576 for t in ["cairn", "restic", "borg"])
    lines.append(f"| {what} | {c:.0f} | {r:.0f} | {b:.0f} | {c/b if b else 0:.3f} |")
lines.append("")
lines.append("Primitives on this machine (all cores unless named):")
lines.append("")
for l in open(prims):
    lines.append(f"- {l.strip()}")
big = rows.get(("cairn", "big"))
if big:
    lines.append(f"- cairn backup of big/: {1572864000 / big[0] / 1e6:.0f} MB/s")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
