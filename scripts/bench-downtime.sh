#!/usr/bin/env bash
# Benchmark downtime on the shared ~1 GiB data set, in one run:
#   - `create --stop` (capture: copy on this disk) vs `--capture direct`: downtime and wall
#     time, and `cp -a` + `sync` of the same data on the same disk (the raw copy);
#   - the same on a loop-mounted XFS with reflinks (capture: reflink), against
#     `docker compose restart` (the floor: stopping and starting alone);
#   - `rollback --yes` of that backup (staged first): its downtime against the same restart.
# Prints each number and the ratios issue "Downtime close to zero" asks for.
#
#   scripts/bench-downtime.sh [--scale S]
# Needs root (loop device), a Docker engine (scripts/ensure-engine.sh), xfsprogs, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

scale=1
while [ $# -gt 0 ]; do
    case "$1" in
        --scale) scale=$2; shift 2 ;;
        *) echo "usage: $0 [--scale S]" >&2; exit 2 ;;
    esac
done

dataset_script=${NUWAX_DATASET_SCRIPT:-$repo/../shared/bench/make-dataset.py}
work=${NUWAX_BENCH_DIR:-/tmp/nuwax-bench-downtime}
bin=$repo/target/release/docker-nuwax-backup
image=nuwax-test-busybox:latest
export NUWAX_BACKUP_CATALOG="$work/catalog.db"

bash scripts/ensure-engine.sh
cargo build --release --locked >&2
mkdir -p "$work"

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
ms() { python3 -c "import json,sys; print(json.load(open('$1'))['$2'])"; }

# project DIR NAME: a compose project with a daemon on ./data, the data set made once.
project() {
    local dir=$1 name=$2
    mkdir -p "$dir"
    if [ ! -f "$dir/data/.complete" ]; then
        echo "making the data set (scale $scale) in $dir/data" >&2
        rm -rf "$dir/data"
        python3 "$dataset_script" "$dir/data" --scale "$scale" >&2
        touch "$dir/data/.complete"
    fi
    cat >"$dir/compose.yaml" <<YAML
name: $name
services:
  db:
    image: $image
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]
    restart: always
    volumes: ["./data:/data"]
YAML
    (cd "$dir" && docker compose up -d --quiet-pull >/dev/null 2>&1)
}

# measure DIR LABEL ARGS…: one `create --stop ARGS`, prints downtime, capture and wall time.
measure() {
    local dir=$1 label=$2
    shift 2
    rm -rf "$dir/backups"
    sync
    local t0 t1
    t0=$(now)
    (cd "$dir" && "$bin" create --stop --format json "$@" >"$work/row.json" 2>/dev/null)
    t1=$(now)
    local down cap how
    down=$(ms "$work/row.json" downtime_ms)
    cap=$(ms "$work/row.json" capture_ms)
    how=$(ms "$work/row.json" capture)
    echo "$label: capture $how, down $(python3 -c "print($down/1000)") s, capture $(python3 -c "print($cap/1000)") s, wall $(secs "$t0" "$t1") s" >&2
    echo "$down $(secs "$t0" "$t1")"
}

# raw_copy DIR: `cp -a` of the data on the same disk, then `sync`.
raw_copy() {
    local dir=$1
    rm -rf "$dir/.copy"
    sync
    local t0 t1
    t0=$(now)
    cp -a "$dir/data" "$dir/.copy" && sync
    t1=$(now)
    rm -rf "$dir/.copy"
    secs "$t0" "$t1"
}

restart_time() {
    local dir=$1 t0 t1
    t0=$(now)
    (cd "$dir" && docker compose restart >/dev/null 2>&1)
    t1=$(now)
    secs "$t0" "$t1"
}

cleanup() {
    for d in "$work/disk" "$work/xfs/proj"; do
        [ -f "$d/compose.yaml" ] && (cd "$d" && docker compose down -t 1 >/dev/null 2>&1 || true)
    done
    mountpoint -q "$work/xfs" 2>/dev/null && umount "$work/xfs" || true
    rm -f "$work/xfs.img"
}
trap cleanup EXIT

echo "== this machine's disk" >&2
project "$work/disk" nwxbench-down-disk
read -r copy_down copy_wall < <(measure "$work/disk" "capture auto " --capture auto)
read -r direct_down direct_wall < <(measure "$work/disk" "capture direct" --capture direct)
raw=$(raw_copy "$work/disk")
echo "cp -a + sync: $raw s" >&2

echo "== XFS with reflinks on a loop device" >&2
mkdir -p "$work/xfs"
truncate -s $((3 * scale))G "$work/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$work/xfs.img"
mount -o loop "$work/xfs.img" "$work/xfs"
mkdir -p "$work/xfs/proj"
cp -a "$work/disk/data" "$work/xfs/proj/data"
project "$work/xfs/proj" nwxbench-down-xfs
read -r xfs_down xfs_wall < <(measure "$work/xfs/proj" "xfs reflink  " --capture auto)
read -r xfs_direct_down xfs_direct_wall < <(measure "$work/xfs/proj" "xfs direct   " --capture direct)
restart=$(restart_time "$work/xfs/proj")
echo "docker compose restart: $restart s" >&2
id=$(ms "$work/row.json" id)
echo "changed" >"$work/xfs/proj/data/changed-since"
t0=$(now)
(cd "$work/xfs/proj" && "$bin" rollback "$id" --yes --no-safety-backup --format json >"$work/rb.json" 2>/dev/null)
t1=$(now)
rb_wall=$(secs "$t0" "$t1")
rb_down=$(ms "$work/rb.json" downtime_ms)
echo "rollback (staged first): down $(python3 -c "print($rb_down/1000)") s, wall $rb_wall s" >&2

python3 - "$copy_down" "$copy_wall" "$direct_down" "$direct_wall" "$raw" \
    "$xfs_down" "$xfs_wall" "$xfs_direct_down" "$xfs_direct_wall" "$restart" \
    "$rb_down" "$rb_wall" <<'PY'
import sys
cd, cw, dd, dw, raw, xd, xw, xdd, xdw, rs, rd, rw = map(float, sys.argv[1:])
rd = rd / 1000
cd, dd, xd, xdd = cd / 1000, dd / 1000, xd / 1000, xdd / 1000
print(f"disk: downtime {cd:.2f} s with capture vs {dd:.2f} s direct ({dd / cd:.1f}x shorter); "
      f"vs cp -a + sync {raw:.2f} s: {cd / raw:.2f}x (goal <= 1.5x)")
print(f"disk: wall {cw:.2f} s with capture vs {dw:.2f} s direct ({(cw / dw - 1) * 100:+.0f}%, goal <= +10%)")
print(f"xfs:  downtime {xd:.2f} s with reflinks vs {xdd:.2f} s direct; "
      f"docker compose restart {rs:.2f} s (goal: downtime <= restart + 1 s: {xd <= rs + 1})")
print(f"xfs:  wall {xw:.2f} s with reflinks vs {xdw:.2f} s direct ({(xw / xdw - 1) * 100:+.0f}%)")
print(f"rollback: downtime {rd:.2f} s of {rw:.2f} s wall; docker compose restart {rs:.2f} s "
      f"(goal: downtime <= restart + 1 s: {rd <= rs + 1})")
PY
