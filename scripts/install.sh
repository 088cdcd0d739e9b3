#!/usr/bin/env bash
# Build the release binary and install it as a Docker CLI plugin (and standalone on PATH).
#   scripts/install.sh            -> ${DOCKER_CONFIG:-~/.docker}/cli-plugins/docker-nuwaxbackup
#   scripts/install.sh --system   -> /usr/local/lib/docker/cli-plugins/docker-nuwaxbackup
# Docker only accepts plugin names matching ^[a-z][a-z0-9]*$, hence "nuwaxbackup" without a hyphen.
set -euo pipefail
cd "$(dirname "$0")/.."

system=0
case "${1:-}" in
    --system) system=1 ;;
    "") ;;
    *) echo "usage: scripts/install.sh [--system]" >&2; exit 2 ;;
esac

cargo build --release --locked >&2
bin=target/release/docker-nuwax-backup

if [ "$system" = 1 ]; then
    plugin_dir=/usr/local/lib/docker/cli-plugins
else
    plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
fi
install -D -m 0755 "$bin" "$plugin_dir/docker-nuwaxbackup"
echo "installed plugin: $plugin_dir/docker-nuwaxbackup (docker nuwaxbackup …)" >&2

if [ -w /usr/local/bin ]; then
    bin_dir=/usr/local/bin
else
    bin_dir="$HOME/.local/bin"
fi
install -D -m 0755 "$bin" "$bin_dir/docker-nuwax-backup"
echo "installed standalone: $bin_dir/docker-nuwax-backup" >&2
case ":$PATH:" in *":$bin_dir:"*) ;; *) echo "note: add $bin_dir to PATH for standalone use" >&2 ;; esac

if ! command -v docker >/dev/null 2>&1; then
    echo "note: no docker CLI on PATH: install Docker (https://docs.docker.com/engine/install/); as root on Debian, scripts/ensure-engine.sh sets one up" >&2
elif ! docker info >/dev/null 2>&1; then
    docker nuwaxbackup --version >&2
    echo "note: the Docker engine does not answer: start it (sudo systemctl start docker); as root on Debian without one, scripts/ensure-engine.sh sets one up" >&2
elif ! docker compose version >/dev/null 2>&1; then
    docker nuwaxbackup --version >&2
    echo "note: Compose v2 (docker compose) is missing: install the docker-compose-plugin package" >&2
else
    docker nuwaxbackup --version >&2
fi
cat >&2 <<'NEXT'

next, in your own compose project's folder:
  docker nuwaxbackup status            # what would be backed up, and what blocks a cold backup
  docker nuwaxbackup create --stop     # stop, back up, start again
  docker nuwaxbackup list              # your backups, newest first
(scripts/demo.sh shows the whole job on a throw-away sample project)
NEXT
