#!/usr/bin/env bash
# The whole job in under a minute, on a throw-away sample project: back up, break, roll back.
#   scripts/demo.sh [--keep]
# Brings up a small project (a database-like service on a named volume, and a bind), shows
# `status`, a refused `create` while it runs, `create --stop`, damages the data (the "bad
# upgrade"), `rollback --yes`, checks the data is back and the service runs, and `list`.
# Uses its own catalog (the user's catalog gets no rows) and removes everything it made
# (containers, volumes, network, an image it built, temp folders) unless --keep.
# Exits non-zero when a check fails. Needs the plugin installed (scripts/install.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
keep=0
case "${1:-}" in
    --keep) keep=1 ;;
    "") ;;
    *) echo "usage: scripts/demo.sh [--keep]" >&2; exit 2 ;;
esac
say() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'demo: FAILED: %s\n' "$*" >&2; exit 1; }

# An engine and Compose v2, or a clear word on what to do.
if ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ]; then
        say "no Docker engine here: setting one up with scripts/ensure-engine.sh"
        bash "$here/ensure-engine.sh"
    elif command -v dockerd >/dev/null 2>&1 || command -v systemctl >/dev/null 2>&1; then
        fail "the Docker engine is not running: start it (sudo systemctl start docker), then run this again"
    else
        fail "no Docker engine answers: install Docker (https://docs.docker.com/engine/install/), then run this again"
    fi
fi
docker compose version >/dev/null 2>&1 ||
    fail "Compose v2 (docker compose) is missing: install the docker-compose-plugin package, then run this again"
docker nuwaxbackup --version >/dev/null 2>&1 ||
    fail "the plugin is not installed: run scripts/install.sh first"

name=${NUWAX_DEMO_NAME:-nuwaxdemo-$$}
demo=$(mktemp -d "${TMPDIR:-/tmp}/nuwax-demo.XXXXXX")
export NUWAX_BACKUP_CATALOG="$demo/catalog/catalog.db"
built_image=""
image=""
for candidate in busybox:latest nuwax-test-busybox:latest; do
    if docker image inspect "$candidate" >/dev/null 2>&1; then image=$candidate; break; fi
done
cleanup() {
    if [ "$keep" = 1 ]; then
        echo "demo: kept $demo (project $name; remove with: cd $demo && docker compose down -v)" >&2
        return
    fi
    (cd "$demo" && docker compose down -v --remove-orphans -t 1 >/dev/null 2>&1) || true
    [ -n "$built_image" ] && docker image rm "$built_image" >/dev/null 2>&1 || true
    rm -rf "$demo"
}
trap cleanup EXIT
if [ -z "$image" ]; then
    built_image="nuwax-demo-busybox:$$"
    say "no busybox image here: building $built_image from this machine's busybox (no registry)"
    bb=$(command -v busybox) || fail "no busybox image and no busybox binary: docker pull busybox, then run this again"
    root="$demo/image"
    mkdir -p "$root/bin" "$root/tmp"
    cp "$bb" "$root/bin/busybox"
    for a in sh sleep date cat echo trap true; do ln -sf busybox "$root/bin/$a"; done
    tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' - "$built_image" >/dev/null
    rm -rf "$root"
    image=$built_image
fi

cd "$demo"
mkdir -p data/uploads
echo "invoice 42" >data/uploads/invoice.txt
cat >compose.yaml <<YAML
name: $name
services:
  db:
    image: $image
    command: ["sh", "-c", "trap 'exit 0' TERM; [ -e /var/lib/db/table ] || echo 'row 1' > /var/lib/db/table; while :; do sleep 1; done"]
    restart: unless-stopped
    volumes: ["dbdata:/var/lib/db", "./data:/srv/data"]
volumes:
  dbdata: {}
YAML

say "a sample project $name with a database (named volume dbdata) and uploads (bind ./data)"
docker compose up -d --quiet-pull 2>/dev/null || docker compose up -d
sleep 1
say "status: what would be backed up, and what blocks a cold backup"
docker nuwaxbackup status
say "create while the database runs: refused, a cold backup never copies live files (exit 8)"
code=0; docker nuwaxbackup create || code=$?
[ "$code" = 8 ] || fail "create while running should exit 8, got $code"
say "create --stop: stops the database, archives both volumes, starts it again"
id=$(docker nuwaxbackup create --stop --format json | grep -o '"id": *[0-9]*' | head -n 1 | grep -o '[0-9]*$')
[ -n "$id" ] || fail "create --stop printed no backup id"
say "the bad upgrade: the table is rewritten and an upload deleted"
docker compose exec -T db sh -c 'echo "garbage" > /var/lib/db/table'
rm data/uploads/invoice.txt
say "rollback to backup #$id: verified first, a safety backup of the damage, then restored"
docker nuwaxbackup rollback "$id" --yes
say "check: the data is back and the database runs"
[ "$(cat data/uploads/invoice.txt)" = "invoice 42" ] || fail "the upload did not come back"
table=$(docker compose exec -T db cat /var/lib/db/table)
[ "$table" = "row 1" ] || fail "the table did not come back (it holds: $table)"
[ "$(docker compose ps --format '{{.State}}' db)" = running ] || fail "db is not running after the rollback"
echo "data restored, db running" >&2
say "list: the backup, and the safety backup taken before the rollback"
docker nuwaxbackup list
say "demo passed"
