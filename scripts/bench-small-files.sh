#!/usr/bin/env bash
# Benchmark the many-small-files shape (an uploads folder, a maildir, a PHP or Node tree):
# our create, verify and rollback against the peer tar run by run, in one run, page cache
# warm (each tree is read once before timing; the runs alternate ours/peer).
#   create   bind:   ours `create`                      vs `tar -czf` of the same folder
#   create   volume: ours `create` (read through `docker cp`) vs `tar -czf` of the volume's folder
#   verify:          ours `verify`                      vs `tar -tzf` of our archive
#   rollback bind:   ours `rollback --yes --no-safety-backup` (verify included)
#                    vs `rm -rf` + `tar -xzf` + `sync`, each after the same deletion
# Prints median seconds and peak RSS (own process) per run, and the ratios issue "Scale"
# asks for. The rollback pair runs once, after the other runs (it leaves the disk busy
# writing back a million new inodes; every measurement starts after a `sync`).
#
#   scripts/bench-small-files.sh [--files N] [--links N] [--runs R] [--no-rollback]
# Defaults: 600,000 files, 60,000 symlinks, 3 runs. Needs a Docker engine
# (scripts/ensure-engine.sh) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
files=600000
links=60000
runs=3
rollback=1
while [ $# -gt 0 ]; do
    case "$1" in
        --files) files=$2; shift 2 ;;
        --links) links=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --no-rollback) rollback=0; shift ;;
        *) echo "usage: $0 [--files N] [--links N] [--runs R] [--no-rollback]" >&2; exit 2 ;;
    esac
done
work=${NUWAX_BENCH_DIR:-/tmp/nuwax-bench-small}/f$files-l$links
proj=$work/proj
out=$work/out
bin=${NUWAX_BENCH_BIN:-$repo/target/release/docker-nuwax-backup}
bash scripts/ensure-engine.sh >&2
[ -n "${NUWAX_BENCH_BIN:-}" ] || cargo build --release --locked >&2
if [ ! -f "$proj/data/.complete" ]; then
    rm -rf "$proj" && mkdir -p "$proj"
    echo "making $files files and $links symlinks in $proj/data" >&2
    python3 scripts/make-small-files.py "$proj/data" --files "$files" --links "$links"
fi
cat >"$proj/compose.yaml" <<YAML
name: nwxbench-small
services:
  app:
    image: nuwax-test-busybox:latest
    command: ["true"]
    volumes: ["./data:/data", "files:/files"]
volumes:
  files: {}
YAML
rm -rf "$out" && mkdir -p "$out"
export NUWAX_BACKUP_CATALOG="$out/catalog.db"
cleanup() { (cd "$proj" && docker compose down -v -t 0 >/dev/null 2>&1) || true; }
trap cleanup EXIT
cd "$proj"
docker compose create >/dev/null 2>&1
echo "filling the named volume" >&2
tar -C data -c . | docker cp - nwxbench-small-app-1:/files
volume_dir=$(docker volume inspect --format '{{.Mountpoint}}' nwxbench-small_files)
# Warm the page cache. GNU tar skips reading file contents when its archive is /dev/null.
tar -cf - data "$volume_dir" | cat >/dev/null

results=$out/results.txt
: >"$results"
measure() {
    local label=$1
    shift
    sync
    python3 "$repo/scripts/measure.py" --out "$out/time.txt" -- "$@" >/dev/null 2>"$out/stderr.txt" || {
        echo "$label failed:" >&2
        cat "$out/stderr.txt" >&2
        exit 1
    }
    echo "$label $(cat "$out/time.txt")" | tee -a "$results" >&2
}
only_bind() { sed -i 's|"./data:/data", "files:/files"|"./data:/data"|' compose.yaml; }
only_volume() { sed -i 's|"./data:/data", "files:/files"|"files:/files"|' compose.yaml; }
both() { sed -i 's|volumes: \[.*\]|volumes: ["./data:/data", "files:/files"]|' compose.yaml; }

for r in $(seq "$runs"); do
    rm -rf "$out/b" "$out/v" "$out/peer.tar.gz"
    only_bind
    measure create-bind-ours "$bin" create --storage "$out/b"
    measure create-bind-tar tar -czf "$out/peer.tar.gz" -C data .
    both; only_volume
    measure create-volume-ours "$bin" create --storage "$out/v"
    measure create-volume-tar tar -czf "$out/peer-vol.tar.gz" -C "$volume_dir" .
    both
    archive=$(ls "$out"/b/*.tar.gz)
    id=$("$bin" list --format json 2>/dev/null | python3 -c 'import json,sys; r=[x for x in json.load(sys.stdin) if x["file_path"].startswith(sys.argv[1])]; print(r[0]["id"])' "$out/b")
    measure verify-ours "$bin" verify "$id"
    measure verify-tar tar -tzf "$archive"
done
# Rollback: both start from a deleted tree on the same filesystem (once: GNU tar takes
# minutes to extract many symlinks).
if [ "$rollback" = 1 ]; then
    only_bind
    rm -rf data && sync
    measure rollback-ours "$bin" rollback "$id" --yes --no-safety-backup
    rm -rf data && sync
    mkdir data
    measure rollback-tar sh -c "tar -xzf '$archive' -C data --strip-components=2 binds/data && sync"
    both
fi

python3 - "$results" "$files" "$links" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    label, secs, own, tree = line.split()
    runs.setdefault(label, []).append((float(secs), int(own)))
med = {k: (statistics.median(s for s, _ in v), max(o for _, o in v)) for k, v in runs.items()}
print(f"{sys.argv[2]} files, {sys.argv[3]} symlinks, page cache warm, median of {len(next(iter(runs.values())))} runs")
print(f"{'run':22} {'seconds':>8} {'own peak RSS MiB':>17}")
for k, (s, own) in med.items():
    print(f"{k:22} {s:8.2f} {own/1024:17.1f}")
def ratio(peer, ours):
    return med[peer][0] / med[ours][0]
print()
print(f"create bind:   {ratio('create-bind-tar', 'create-bind-ours'):.2f}x the speed of tar -czf (goal >= 1.3)")
print(f"create volume: {ratio('create-volume-tar', 'create-volume-ours'):.2f}x the speed of tar -czf (goal >= 1.3)")
print(f"verify:        {med['verify-ours'][0] / med['verify-tar'][0]:.2f}x the time of tar -tzf (goal <= 3)")
if 'rollback-ours' in med:
    print(f"rollback:      {ratio('rollback-tar', 'rollback-ours'):.2f}x the speed of rm + tar -xzf + sync (goal >= 1)")
PY
