#!/usr/bin/env bash
# Benchmark `verify` of a gzip and a zstd archive of the shared data set against the peer
# tools reading the same file (`gzip -t`, `pigz -t`, `tar -tzf`; `zstd -t`, `tar -t --zstd`),
# in one run, cold page cache each time. Prints seconds, our peak RSS, and the ratios.
#
#   scripts/bench-verify.sh [--scale S] [--runs N]
# NUWAX_BENCH_BIN=PATH measures another build (an older commit's) in the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
scale=1
runs=3
while [ $# -gt 0 ]; do
    case $1 in
    --scale) scale=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
work=${NUWAX_BENCH_DIR:-/tmp/nuwax-bench}/verify-$scale
bin=${NUWAX_BENCH_BIN:-$repo/target/release/docker-nuwax-backup}
source scripts/bench-lib.sh
[ -n "${NUWAX_BENCH_BIN:-}" ] || cargo build --release --locked >&2
command -v pigz >/dev/null && command -v zstd >/dev/null || bash scripts/ensure-engine.sh
mkdir -p "$work"
data=$work/proj/data
if [ ! -f "$data/.complete" ]; then
    rm -rf "$data" && mkdir -p "$data"
    python3 "$repo/../shared/bench/make-dataset.py" "$data" --scale "$scale" >&2
    touch "$data/.complete"
fi
cat >"$work/proj/compose.yaml" <<YAML
name: nwxbench-verify
services:
  app:
    image: nuwax-test-busybox:latest
    command: ["true"]
    volumes: ["./data:/data"]
YAML
export NUWAX_BACKUP_CATALOG=$work/catalog.db
rm -f "$NUWAX_BACKUP_CATALOG" && rm -rf "$work/proj/backups"
results=$work/results.txt
: >"$results"
cd "$work/proj"
for codec in gzip zstd; do
    id=$("$bin" create --compression "$codec" --format json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    file=$(ls -t backups/* | grep -v '\.json$' | head -1)
    echo "$codec archive: $file ($(du -h "$file" | cut -f1))" >&2
    for _ in $(seq "$runs"); do
        measure "ours-verify-$codec" "$bin" verify "$id"
        if [ "$codec" = gzip ]; then
            measure "gzip-t" gzip -t "$file"
            measure "pigz-t" pigz -t "$file"
            measure "tar-tzf" tar -tzf "$file"
        else
            measure "zstd-t" zstd -q -t "$file"
            measure "tar-t-zstd" tar -t --zstd -f "$file"
        fi
    done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, secs, peak, *_ = line.split()
    rows.setdefault(label, []).append((float(secs), int(peak)))
med = {k: statistics.median(s for s, _ in v) for k, v in rows.items()}
for k, v in rows.items():
    print(f"{k:18} {med[k]:7.2f} s   peak {max(p for _, p in v) // 1024} MiB")
for ours, peers in [("ours-verify-gzip", ["gzip-t", "pigz-t", "tar-tzf"]),
                    ("ours-verify-zstd", ["zstd-t", "tar-t-zstd"])]:
    for p in peers:
        print(f"{ours} / {p}: {med[ours] / med[p]:.2f}x")
PY
