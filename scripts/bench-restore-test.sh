#!/usr/bin/env bash
# Benchmark `verify ID --restore-test` against doing the same by hand in one run (the peer:
# `tar -xzf` into a scratch folder, `docker compose up -d --wait` of a copy whose bind points
# there, `down -v`, `rm -rf`), on the shared data set (../shared/bench/make-dataset.py) in a
# bind of a service with a healthcheck; and what hooks cost a create (`create --stop` with a
# no-op host hook and a no-op service hook, against `--no-hooks`). Prints seconds, peak RSS
# and the ratios.
#
#   scripts/bench-restore-test.sh [--scale S]     (S: the data set's scale, default 0.25)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
scale=0.25
[ "${1:-}" = "--scale" ] && scale=$2
work=${NUWAX_BENCH_DIR:-/tmp/nuwax-bench}/restore-test
bin=${NUWAX_BENCH_BIN:-$repo/target/release/docker-nuwax-backup}
bash scripts/ensure-engine.sh
[ -n "${NUWAX_BENCH_BIN:-}" ] || cargo build --release --locked >&2
rm -rf "$work" && mkdir -p "$work/proj"
export NUWAX_BACKUP_CATALOG="$work/catalog.db"
python3 "$repo/../shared/bench/make-dataset.py" "$work/proj/data" --scale "$scale" >&2
service='    image: nuwax-test-busybox:latest
    command: ["sh", "-c", "trap '"'"'exit 0'"'"' TERM; while :; do sleep 1; done"]
    healthcheck: {test: ["CMD", "test", "-d", "/data"], interval: 1s, retries: 3}'
cat >"$work/proj/compose.yaml" <<YAML
name: nwxbench-rtest
services:
  db:
$service
    volumes: ["./data:/data"]
    labels:
      nuwaxbackup.before-backup: "true"
x-nuwax-backup:
  hooks:
    before-backup: ["true"]
YAML
cleanup() {
    (cd "$work/proj" && docker compose down -v -t 0 >/dev/null 2>&1) || true
    docker compose -p nwxbench-manual -f "$work/manual.yaml" down -v -t 0 >/dev/null 2>&1 || true
}
trap cleanup EXIT
(cd "$work/proj" && docker compose up -d --wait >/dev/null 2>&1)

results="$work/results.txt"
: >"$results"
. "$repo/scripts/bench-lib.sh"

cd "$work/proj"
for i in 1 2 3; do
    measure "create-no-hooks-$i" "$bin" create --stop --no-hooks --storage "$work/store"
    measure "create-hooks-$i" "$bin" create --stop --storage "$work/store"
done
id=$("$bin" list --format ids | head -n 1)
archive=$("$bin" list --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["file_path"])')
cat >"$work/manual.yaml" <<YAML
name: nwxbench-manual
services:
  db:
$service
    volumes: ["$work/scratch/binds/data:/data"]
YAML
cat >"$work/manual.sh" <<SH
set -e
mkdir -p "$work/scratch" && tar -xzf "$archive" -C "$work/scratch"
docker compose -p nwxbench-manual -f "$work/manual.yaml" up -d --wait >/dev/null 2>&1
docker compose -p nwxbench-manual -f "$work/manual.yaml" down -v -t 1 >/dev/null 2>&1
rm -rf "$work/scratch"
SH
for i in 1 2 3; do
    measure "manual-$i" bash "$work/manual.sh"
    measure "ours-$i" "$bin" verify "$id" --restore-test --settle 1
done
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, secs, *rest = line.split()
    rows.setdefault(label.rsplit("-", 1)[0], []).append((float(secs), int(rest[0]) if rest else 0))
med = {k: statistics.median(s for s, _ in v) for k, v in rows.items()}
rss = {k: max(r for _, r in v) for k, v in rows.items()}
print(f"restore test: ours {med['ours']:.2f} s (peak RSS {rss['ours']} KiB), by hand {med['manual']:.2f} s: {med['ours'] / med['manual']:.2f}x")
print(f"hooks: create --stop {med['create-hooks']:.2f} s with a host and a service no-op hook, "
      f"{med['create-no-hooks']:.2f} s without: +{(med['create-hooks'] - med['create-no-hooks']) * 1000:.0f} ms")
PY
