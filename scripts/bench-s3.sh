#!/usr/bin/env bash
# Backs up and restores the same tree with a local repository and with an S3
# repository, copies the S3 repository to a local one, and prints the wall
# time of each step.
#
# Unless S3_URL is set, the S3 server is a moto_server (pip install
# 'moto[server]') that this script starts on a free port of 127.0.0.1 and stops
# at exit. moto keeps every object in memory in one Python process, so its
# speed bounds the S3 figures: they show cairn's request pattern (parallel
# 16 MiB PUTs, ranged GETs) rather than the speed of a production object store.
# With S3_URL=s3:http://127.0.0.1:PORT/BUCKET[/PREFIX] and AWS_ACCESS_KEY_ID
# and AWS_SECRET_ACCESS_KEY set, an existing server is used instead. Its bucket
# must exist and the prefix must be empty. The script accepts only servers on
# loopback, because it is a load test.
#
# Usage: scripts/bench-s3.sh [SOURCE_DIR]   (default: $HOME/bench-data/src)
# Environment: WORK (default /var/tmp/cairn-bench-s3), removed and recreated;
# CAIRN, a cairn binary to use instead of a release build of this checkout.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
SRC=${1:-$HOME/bench-data/src}
WORK=${WORK:-/var/tmp/cairn-bench-s3}

log() { printf '[bench-s3 %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[[ -d $SRC ]] || { echo "error: source directory $SRC does not exist; pass one as the first argument" >&2; exit 1; }
SRC=$(cd "$SRC" && pwd -P)

if [[ -n ${CAIRN:-} ]]; then
  cairn=$CAIRN
else
  log "building cairn"
  cargo build --release --quiet --manifest-path "$here/Cargo.toml" --bin cairn
  cairn=${CARGO_TARGET_DIR:-$here/target}/release/cairn
fi

rm -rf "$WORK"
mkdir -p "$WORK"
export CAIRN_PASSWORD=bench

server_pid=
stop_server() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
trap stop_server EXIT

if [[ -z ${S3_URL:-} ]]; then
  command -v moto_server >/dev/null || { echo "error: moto_server is missing; install it with: pip install 'moto[server]'" >&2; exit 1; }
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  log "starting moto_server on 127.0.0.1:$port"
  moto_server -H 127.0.0.1 -p "$port" > "$WORK/moto.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 600); do
    python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { echo "error: moto_server exited, see $WORK/moto.log" >&2; exit 1; }
    sleep 0.1
  done
  # moto checks no signature, so an unsigned PUT creates the bucket.
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="PUT"))' \
    "http://127.0.0.1:$port/bench"
  S3_URL=s3:http://127.0.0.1:$port/bench/repo
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
fi
case $S3_URL in
  s3:http://127.0.0.1[:/]*|s3:http://localhost[:/]*|s3:http://\[::1\][:/]*) ;;
  *) echo "error: S3_URL must point to a server on loopback (127.0.0.1, localhost or [::1]), not $S3_URL" >&2; exit 1 ;;
esac

# step NAME CMD...: runs one step, and logs and records its wall time in seconds.
results=$WORK/results.tsv
: > "$results"
step() {
  local name=$1; shift
  local start end
  # Write back what earlier steps left in the page cache, so that it does not
  # slow this step down.
  sync
  start=$(date +%s.%N)
  if ! "$@" > "$WORK/log.$name" 2>&1; then
    echo "error: step $name failed, see $WORK/log.$name" >&2; tail -5 "$WORK/log.$name" >&2; exit 1
  fi
  end=$(date +%s.%N)
  awk -v name="$name" -v start="$start" -v end="$end" 'BEGIN { printf "%s\t%.2f\n", name, end - start }' >> "$results"
  log "$name: $(tail -1 "$results" | cut -f2) s"
}

bytes=$(du -sb "$SRC" | cut -f1)
files=$(find "$SRC" -type f | wc -l)
log "source $SRC: $files files, $bytes bytes"

for kind in local s3; do
  if [[ $kind == local ]]; then repo=$WORK/local-repo; else repo=$S3_URL; fi
  "$cairn" --repo "$repo" init > /dev/null
  step "$kind backup" "$cairn" --repo "$repo" backup "$SRC"
  step "$kind unchanged backup" "$cairn" --repo "$repo" backup "$SRC"
  step "$kind restore" "$cairn" --repo "$repo" restore latest --target "$WORK/restore-$kind"
  diff -rq --no-dereference "$SRC" "$WORK/restore-$kind$SRC" > /dev/null ||
    { echo "error: the $kind restore differs from $SRC" >&2; exit 1; }
done
CAIRN_LIKE_PASSWORD=bench "$cairn" --repo "$WORK/copy-repo" init --like "$S3_URL" > /dev/null
step "copy from s3 to local" env CAIRN_FROM_PASSWORD=bench "$cairn" --repo "$WORK/copy-repo" copy --from "$S3_URL"

echo
echo "| step | seconds |"
echo "|---|---|"
while IFS=$'\t' read -r name seconds; do
  echo "| $name | $seconds |"
done < "$results"
echo
echo "source: $SRC, $files files, $bytes bytes; S3: $S3_URL; $(nproc) cores"
