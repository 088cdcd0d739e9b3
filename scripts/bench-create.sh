#!/usr/bin/env bash
# Benchmark `create` against the peer tools in one run, on the shared ~1 GiB data set:
#   GNU tar -czf (gzip -6), tar | pigz -6 -p2, tar | zstd -3 -T2, and our create for the same
#   data in a bind mount and in a named volume (read through the engine), gzip and zstd.
# Prints wall time, peak RSS and archive size for each, and the ratios the issues ask for.
#
#   scripts/bench-create.sh [--scale S] [--runs N]
# Needs: a Docker engine (scripts/ensure-engine.sh), python3, pigz, zstd, /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

scale=1
runs=1
only_ours=0
while [ $# -gt 0 ]; do
    case "$1" in
        --scale) scale=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --only-ours) only_ours=1; shift ;;
        *) echo "usage: $0 [--scale S] [--runs N] [--only-ours]" >&2; exit 2 ;;
    esac
done

dataset_script=${NUWAX_DATASET_SCRIPT:-$repo/../shared/bench/make-dataset.py}
work=${NUWAX_BENCH_DIR:-/tmp/nuwax-bench}
proj="$work/proj-$scale"
out="$work/out"
bin=$repo/target/release/docker-nuwax-backup
image=nuwax-test-busybox:latest
name_bind="nwxbench-bind"
name_vol="nwxbench-vol"

bash scripts/ensure-engine.sh
cargo build --release --locked >&2
mkdir -p "$proj" "$out"
if [ ! -f "$proj/data/.complete" ]; then
    echo "making the data set (scale $scale) in $proj/data" >&2
    rm -rf "$proj/data"
    python3 "$dataset_script" "$proj/data" --scale "$scale"
    touch "$proj/data/.complete"
fi

cat >"$proj/compose.yaml" <<EOF
name: $name_bind
services:
  db:
    image: $image
    command: ["true"]
    volumes: ["./data:/data"]
EOF
mkdir -p "$work/vol-$scale"
cat >"$work/vol-$scale/compose.yaml" <<EOF
name: $name_vol
services:
  db:
    image: $image
    command: ["true"]
    volumes: ["benchdata:/data"]
volumes:
  benchdata: {}
EOF

cleanup() {
    (cd "$work/vol-$scale" && docker compose down -v -t 0 >/dev/null 2>&1) || true
    (cd "$proj" && docker compose down -t 0 >/dev/null 2>&1) || true
}
trap cleanup EXIT

(cd "$proj" && docker compose create >/dev/null 2>&1)
(
    cd "$work/vol-$scale"
    docker compose create >/dev/null 2>&1
    echo "filling the named volume" >&2
    tar -C "$proj/data" -c . | docker cp - "$name_vol-db-1:/data"
)

# measure LABEL OUTFILE CMD…: one line "label seconds own_peak_kib tree_peak_kib bytes"
results="$out/results-$scale.txt"
: >"$results"
measure() {
    local label=$1 file=$2
    shift 2
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    local t
    python3 "$repo/scripts/measure.py" --out "$out/time.txt" -- "$@" >/dev/null 2>"$out/stderr.txt" || {
        echo "$label failed:" >&2
        cat "$out/stderr.txt" >&2
        exit 1
    }
    t=$(tail -n 1 "$out/time.txt")
    local size=0
    [ -n "$file" ] && size=$(stat -c %s $file 2>/dev/null | head -n 1)
    echo "$label $t $size" | tee -a "$results" >&2
}

for run in $(seq 1 "$runs"); do
    rm -rf "$out"/peer* "$out"/ours*
    mkdir -p "$out/ours-bind" "$out/ours-vol" "$out/ours-zstd"
    if [ "$only_ours" = 0 ]; then
        measure tar-czf "$out/peer.tar.gz" tar -C "$proj/data" -czf "$out/peer.tar.gz" .
        measure tar-pigz "$out/peer-pigz.tar.gz" tar -C "$proj/data" -I "pigz -6 -p2" -cf "$out/peer-pigz.tar.gz" .
        measure tar-zstd "$out/peer.tar.zst" tar -C "$proj/data" -I "zstd -3 -T2" -cf "$out/peer.tar.zst" .
    fi
    export NUWAX_BACKUP_CATALOG="$out/catalog.db"
    (cd "$proj" && measure ours-bind-gzip "$out/ours-bind/*.tar.gz" "$bin" create --storage "$out/ours-bind")
    (cd "$work/vol-$scale" && measure ours-volume-gzip "$out/ours-vol/*.tar.gz" "$bin" create --storage "$out/ours-vol")
    (cd "$proj" && measure ours-bind-zstd "$out/ours-zstd/*.tar.zst" "$bin" create --compression zstd --storage "$out/ours-zstd")
done

python3 - "$results" <<'EOF'
import sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, secs, own, tree, size = line.split()
    rows[label].append((float(secs), int(own), int(tree), int(size)))
best = {k: min(v) for k, v in rows.items()}
def secs(k): return best[k][0]
print(f"{'tool':18} {'seconds':>8} {'own peak RSS MiB':>17} {'tree peak MiB':>14} {'archive MiB':>12}")
for k, (s, own, tree, size) in best.items():
    print(f"{k:18} {s:8.2f} {own/1024:17.1f} {tree/1024:14.1f} {size/2**20:12.1f}")
if "tar-czf" in best:
    print()
    print(f"bind   gzip: {secs('tar-czf')/secs('ours-bind-gzip'):.2f}x faster than tar -czf (goal >= 4), "
          f"{secs('tar-pigz')/secs('ours-bind-gzip'):.2f}x faster than tar|pigz (goal >= 1.5)")
    print(f"volume gzip: {secs('tar-czf')/secs('ours-volume-gzip'):.2f}x faster than tar -czf (goal >= 3.5)")
    print(f"size: ours {best['ours-bind-gzip'][3]/best['tar-czf'][3]*100-100:+.2f}% vs gzip -6 (goal <= +2%)")
    print(f"zstd: {secs('ours-bind-zstd')/secs('tar-zstd'):.2f}x the time of tar|zstd -3 -T2 (goal <= 1.3)")
EOF
