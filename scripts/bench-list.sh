#!/usr/bin/env bash
# `list` on a catalog of 10,000 rows (a benchmark, not a test): prints the time of
# `list --format json` and `list` (table) for one project holding them all.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
cargo build --release --locked >&2
work=$(mktemp -d /tmp/nuwax-bench-list.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
printf 'name: benchlist\nservices:\n  a:\n    image: nuwax-test-busybox:latest\n' >compose.yaml
export NUWAX_BACKUP_CATALOG="$work/catalog.db"
"$repo/target/release/docker-nuwax-backup" list >/dev/null # creates the schema
python3 - "$work/catalog.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
rows = [("benchlist", "/w", f"/w/backups/backup_manual_v1_{i}.tar.gz", "1.0", "manual", "completed",
         f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z", 1000 + i, "ab" * 32, 10, "gzip", 5)
        for i in range(10000)]
c.executemany("INSERT INTO backups (project, project_dir, file_path, service_version, backup_type, status,"
              " created_at, size_bytes, sha256, file_count, compression, duration_ms)"
              " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
c.commit()
PY
TIMEFORMAT='%R s'
for fmt in json table ids; do
    echo -n "list --format $fmt, 10000 rows: "
    { time "$repo/target/release/docker-nuwax-backup" list --format "$fmt" >/dev/null 2>&1; } 2>&1
done
