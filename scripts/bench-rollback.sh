#!/usr/bin/env bash
# Benchmark `rollback` against `tar -xzf` of the same archive, in one run, on the shared data
# set: a bind mount and a named volume, verification included (both rollbacks run with
# --no-safety-backup so that the same work is compared; one more run shows the safety backup's
# cost). Prints seconds, peak RSS of our process, and the ratios.
#
#   scripts/bench-rollback.sh [--scale S]
# Reuses the data set and projects of scripts/bench-create.sh (run that first, or this makes them).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
scale=1
[ "${1:-}" = "--scale" ] && scale=$2
work=${NUWAX_BENCH_DIR:-/tmp/nuwax-bench}
proj="$work/proj-$scale"
volproj="$work/vol-$scale"
out="$work/rollback"
bin=$repo/target/release/docker-nuwax-backup
bash scripts/ensure-engine.sh
cargo build --release --locked >&2
if [ ! -f "$proj/data/.complete" ] || [ ! -f "$volproj/compose.yaml" ]; then
    echo "run scripts/bench-create.sh --scale $scale first (it makes the data set and projects)" >&2
    exit 1
fi
rm -rf "$out" && mkdir -p "$out"
export NUWAX_BACKUP_CATALOG="$out/catalog.db"
cleanup() { (cd "$volproj" && docker compose down -v -t 0 >/dev/null 2>&1) || true; (cd "$proj" && docker compose down -t 0 >/dev/null 2>&1) || true; }
trap cleanup EXIT
(cd "$proj" && docker compose create >/dev/null 2>&1)
(cd "$volproj" && docker compose create >/dev/null 2>&1 && tar -C "$proj/data" -c . | docker cp - "nwxbench-vol-db-1:/data")

results="$out/results.txt"
: >"$results"
measure() {
    local label=$1
    shift
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    python3 "$repo/scripts/measure.py" --out "$out/time.txt" -- "$@" >/dev/null 2>"$out/stderr.txt" || {
        echo "$label failed:" >&2
        cat "$out/stderr.txt" >&2
        exit 1
    }
    echo "$label $(cat "$out/time.txt")" | tee -a "$results" >&2
}

bind_id=$(cd "$proj" && "$bin" create --storage "$out/bind" --format json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
vol_id=$(cd "$volproj" && "$bin" create --storage "$out/vol" --format json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
archive=$(ls "$out"/bind/*.tar.gz)

mkdir -p "$out/peer"
measure tar-xzf tar -xzf "$archive" -C "$out/peer"
rm -rf "$out/peer" && mkdir -p "$out/peer"
# rollback syncs what it wrote before it reports success; this is the same for tar
measure tar-xzf-sync sh -c "tar -xzf '$archive' -C '$out/peer' && sync"
rm -rf "$out/peer"
(cd "$proj" && measure ours-bind "$bin" rollback "$bind_id" --yes --no-safety-backup)
(cd "$volproj" && measure ours-volume "$bin" rollback "$vol_id" --yes --no-safety-backup)
(cd "$proj" && measure ours-bind-with-safety "$bin" rollback "$bind_id" --yes)

python3 - "$results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    label, secs, own, tree = line.split()
    rows[label] = (float(secs), int(own))
print(f"{'run':24} {'seconds':>8} {'own peak RSS MiB':>17}")
for k, (s, own) in rows.items():
    print(f"{k:24} {s:8.2f} {own/1024:17.1f}")
peer = rows["tar-xzf"][0]
print()
print(f"bind rollback:   {peer/rows['ours-bind'][0]:.2f}x the speed of tar -xzf (goal >= 1)")
print(f"volume rollback: {peer/rows['ours-volume'][0]:.2f}x the speed of tar -xzf (goal >= 1)")
peer_sync = rows["tar-xzf-sync"][0]
print(f"with sync: bind {peer_sync/rows['ours-bind'][0]:.2f}x, volume {peer_sync/rows['ours-volume'][0]:.2f}x the speed of tar -xzf && sync")
PY
