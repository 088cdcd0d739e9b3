#!/usr/bin/env bash
# A one-minute look at the plugin: a small sample project (local busybox image, a database-like
# named volume and a bind mount), `status`, a refused `create`, `create --stop`, then clean-up.
# Run scripts/install.sh first (and scripts/ensure-engine.sh on a machine without an engine).
set -euo pipefail
demo=$(mktemp -d /tmp/nuwax-demo.XXXXXX)
cd "$demo"
mkdir -p data/uploads
echo "hello" >data/uploads/readme.txt
cat >compose.yaml <<'YAML'
name: nuwaxdemo
services:
  db:
    image: nuwax-test-busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do date >> /var/lib/db/heartbeat; sleep 1; done"]
    restart: unless-stopped
    volumes: ["dbdata:/var/lib/db", "./data:/srv/data"]
  migrate:
    image: nuwax-test-busybox:latest
    command: ["true"]
volumes:
  dbdata: {}
YAML
trap 'docker compose down -v -t 1 >/dev/null 2>&1; rm -rf "$demo"' EXIT
set -x
docker compose up -d
docker nuwaxbackup status
docker nuwaxbackup create || echo "refused, as it should be (exit $?)"
docker nuwaxbackup create --stop --format json
docker compose ps
tar -tzvf backups/*.tar.gz | head -n 20
