#!/usr/bin/env bash
# Runs cairn's main job end to end on a real tree: back up, back up again,
# mount, compare the mounted snapshot and a copy out of it with the source,
# restore, compare again.
#
# Usage: scripts/main-job.sh [SOURCE_DIR]
#   SOURCE_DIR defaults to the Rust toolchain's documentation
#   ($(rustc --print sysroot)/share/doc, about 50,000 files).
# Work files go to $WORK (default: a new directory under /tmp), which is
# removed at the end unless KEEP=1.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
source_dir=${1:-$(rustc --print sysroot)/share/doc}
source_dir=$(cd "$source_dir" && pwd)
work=${WORK:-$(mktemp -d /tmp/cairn-main-job.XXXXXX)}
mountpoint=$work/mnt

step() { printf '\n== %s\n' "$*"; }

cleanup() {
  if mountpoint -q "$mountpoint" 2>/dev/null; then
    fusermount3 -u "$mountpoint" 2>/dev/null || umount -l "$mountpoint" || true
  fi
  if [[ -n ${mount_pid:-} ]]; then wait "$mount_pid" 2>/dev/null || true; fi
  if [[ ${KEEP:-0} != 1 ]]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

if ! command -v fusermount3 >/dev/null; then
  step "installing fuse3"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends fuse3 >/dev/null
fi
[[ -e /dev/fuse ]] || { echo "error: /dev/fuse is missing; load the fuse module" >&2; exit 1; }

step "building cairn (release)"
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
cairn=${CARGO_TARGET_DIR:-$here/target}/release/cairn

export CAIRN_REPO=$work/repo
export CAIRN_PASSWORD_FILE=$work/password
mkdir -p "$work" "$mountpoint"
head -c 24 /dev/urandom | base64 > "$CAIRN_PASSWORD_FILE"

step "init"
"$cairn" init

step "first backup of $source_dir"
/usr/bin/time -f "  %e s wall, %M KiB peak memory" "$cairn" backup "$source_dir"
step "second backup (unchanged files are not read again)"
/usr/bin/time -f "  %e s wall, %M KiB peak memory" "$cairn" backup "$source_dir"
"$cairn" snapshots
du -sh "$CAIRN_REPO" | awk '{print "  repository size: " $1}'

step "mount"
"$cairn" mount "$mountpoint" &
mount_pid=$!
for _ in $(seq 100); do
  [[ -e $mountpoint/snapshots/latest ]] && break
  sleep 0.1
done
ls "$mountpoint/snapshots/"

step "diff -r between the source and the mounted snapshot"
diff -r --no-dereference "$source_dir" "$mountpoint/snapshots/latest$source_dir"
echo "  identical"

step "cp -a out of the mount, then diff -r"
cp -a "$mountpoint/snapshots/latest$source_dir" "$work/copy"
diff -r --no-dereference "$source_dir" "$work/copy"
echo "  identical"

fusermount3 -u "$mountpoint"
wait "$mount_pid"
mount_pid=

step "restore latest"
"$cairn" restore latest --target "$work/restore"
diff -r --no-dereference "$source_dir" "$work/restore$source_dir"
echo "  identical"

step "check --read-data"
"$cairn" check --read-data

step "done: backup, mount, copy and restore all match $source_dir"
