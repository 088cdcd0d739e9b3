#!/usr/bin/env bash
# Benchmark uploads to S3-compatible storage, in one run, against the same local server
# (s3s-fs from scripts/ensure-s3.sh, its folder on this machine's disk):
#   - our `push` of the ~1 GiB data set's archive vs boto3's upload_file of the same file
#     (boto3's defaults: 8 MiB parts, 10 threads), wall time and our peak RSS;
#   - `create --remote` wall time vs `create` + `push` done separately.
# Alternates the tools, median of N runs, and prints the ratios.
#
#   scripts/bench-remote.sh [--scale S] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

scale=1
runs=3
while [ $# -gt 0 ]; do
    case "$1" in
        --scale) scale=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        *) echo "usage: $0 [--scale S] [--runs N]" >&2; exit 2 ;;
    esac
done

dataset_script=${NUWAX_DATASET_SCRIPT:-$repo/../shared/bench/make-dataset.py}
work=${NUWAX_BENCH_DIR:-/tmp/nuwax-bench}
proj="$work/proj-$scale"
out="$work/remote-out"
bin=$repo/target/release/docker-nuwax-backup
name="nwxbench-remote"

bash scripts/ensure-engine.sh
s3s=$(bash scripts/ensure-s3.sh)
cargo build --release --locked >&2
mkdir -p "$proj"
if [ ! -f "$proj/data/.complete" ]; then
    echo "making the data set (scale $scale) in $proj/data" >&2
    rm -rf "$proj/data"
    python3 "$dataset_script" "$proj/data" --scale "$scale"
    touch "$proj/data/.complete"
fi
cat >"$proj/compose.yaml" <<EOF
name: $name
services:
  db:
    image: nuwax-test-busybox:latest
    command: ["true"]
    volumes: ["./data:/data"]
EOF

rm -rf "$out" && mkdir -p "$out/s3root" "$out/store"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=bench-secret-key AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port NUWAX_BACKUP_CATALOG="$out/catalog.db"
"$s3s" --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$out/s3root" >/dev/null 2>&1 &
server=$!
cleanup() {
    kill "$server" 2>/dev/null || true
    (cd "$proj" && docker compose down -t 0 >/dev/null 2>&1) || true
    rm -rf "$out/s3root"
}
trap cleanup EXIT
until python3 -c "import socket; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null; do sleep 0.1; done
python3 -c "import boto3; boto3.client('s3').create_bucket(Bucket='bench')"
(cd "$proj" && docker compose create >/dev/null 2>&1)

results="$out/results.txt"
: >"$results"
# measure LABEL CMD…: appends "label seconds own_peak_kib"
measure() {
    local label=$1
    shift
    sync
    python3 "$repo/scripts/measure.py" --out "$out/time.txt" -- "$@" >/dev/null 2>"$out/stderr.txt" || {
        echo "$label failed:" >&2
        cat "$out/stderr.txt" >&2
        exit 1
    }
    local t
    t=$(tail -n 1 "$out/time.txt")
    echo "$label ${t% *}" | tee -a "$results" >&2
}

cd "$proj"
"$bin" create --storage "$out/store" --format json >"$out/row.json" 2>/dev/null
id=$(python3 -c "import json; print(json.load(open('$out/row.json'))['id'])")
archive=$(python3 -c "import json; print(json.load(open('$out/row.json'))['file_path'])")
echo "archive: $(du -h "$archive" | cut -f1) $archive" >&2
for run in $(seq 1 "$runs"); do
    measure ours-push "$bin" push "$id" --remote "s3://bench/ours-$run"
    measure boto3-upload_file python3 -c "import boto3, sys; boto3.client('s3').upload_file(sys.argv[1], 'bench', sys.argv[2])" "$archive" "boto3-$run/archive"
    measure ours-create "$bin" create --storage "$out/store"
    last=$("$bin" list --format ids | head -n 1)
    measure ours-push-separately "$bin" push "$last" --remote "s3://bench/sep-$run"
    measure ours-create-remote "$bin" create --storage "$out/store" --remote "s3://bench/comb-$run"
    rm -rf "$out/s3root/bench/"*"-$run" 
done

python3 - "$results" "$(stat -c %s "$archive")" <<'EOF'
import sys, collections, statistics
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, secs, own, *_ = line.split()
    rows[label].append((float(secs), int(own)))
size = int(sys.argv[2])
med = {k: statistics.median(s for s, _ in v) for k, v in rows.items()}
peak = {k: max(o for _, o in v) for k, v in rows.items()}
print(f"archive {size/2**20:.0f} MiB; median of {len(rows['ours-push'])} runs")
print(f"{'what':22} {'seconds':>8} {'MiB/s':>7} {'own peak RSS MiB':>17}")
for k in med:
    print(f"{k:22} {med[k]:8.2f} {size/2**20/med[k]:7.0f} {peak[k]/1024:17.1f}")
print()
print(f"upload: ours {med['boto3-upload_file']/med['ours-push']:.2f}x the speed of boto3 upload_file (goal >= 1); "
      f"our peak RSS {peak['ours-push']/1024:.0f} MiB (goal < 96)")
sep = med['ours-create'] + med['ours-push-separately']
print(f"create --remote: {med['ours-create-remote']:.2f} s vs create + push {sep:.2f} s "
      f"({med['ours-create-remote']/sep:.2f}x, goal <= 1)")
EOF
