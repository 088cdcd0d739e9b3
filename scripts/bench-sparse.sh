#!/usr/bin/env bash
# Benchmark create and rollback of a 2 GiB sparse file (four 4 KiB blocks written, the rest
# holes) against GNU tar (`tar --sparse -czf`, `tar -xzf`) in one run, and the same file
# dense-allocated per byte of data for scale. Prints seconds, peak RSS and the ratios, and
# the blocks allocated after each restore.
#
#   scripts/bench-sparse.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${NUWAX_BENCH_DIR:-/tmp/nuwax-bench}/sparse
bin=$repo/target/release/docker-nuwax-backup
bash scripts/ensure-engine.sh
cargo build --release --locked >&2
rm -rf "$work" && mkdir -p "$work/proj/data"
export NUWAX_BACKUP_CATALOG="$work/catalog.db"
cat >"$work/proj/compose.yaml" <<YAML
name: nwxbench-sparse
services:
  app:
    image: nuwax-test-busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
    volumes: ["./data:/data"]
YAML
f="$work/proj/data/vm.img"
truncate -s 2G "$f"
for at in 0 1000 300000 524287; do
    printf 'block %s' "$at" | dd of="$f" bs=4096 seek="$at" conv=notrunc status=none
done
cleanup() { (cd "$work/proj" && docker compose down -t 0 >/dev/null 2>&1) || true; }
trap cleanup EXIT
(cd "$work/proj" && docker compose create >/dev/null 2>&1)

results="$work/results.txt"
: >"$results"
. "$repo/scripts/bench-lib.sh"

measure tar-sparse-czf tar --sparse -czf "$work/peer.tar.gz" -C "$work/proj/data" vm.img
(cd "$work/proj" && measure ours-create "$bin" create --storage "$work/store" --format json)
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$work/stdout.txt")
mkdir -p "$work/peer"
measure tar-xzf tar -xzf "$work/peer.tar.gz" -C "$work/peer"
rm -f "$f"
(cd "$work/proj" && measure ours-rollback "$bin" rollback "$id" --yes --no-safety-backup)
echo "blocks: original-by-tar $(stat -c %b "$work/peer/vm.img"), ours $(stat -c %b "$f"); sizes: tar archive $(stat -c %s "$work/peer.tar.gz"), ours $(stat -c %s "$work"/store/*.tar.gz)" | tee -a "$results" >&2
python3 - "$results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) >= 2 and parts[0] in ("tar-sparse-czf", "ours-create", "tar-xzf", "ours-rollback"):
        rows[parts[0]] = float(parts[1])
print(f"create/tar --sparse -czf: {rows['ours-create'] / rows['tar-sparse-czf']:.2f}x; "
      f"rollback/tar -xzf: {rows['ours-rollback'] / rows['tar-xzf']:.2f}x")
PY
