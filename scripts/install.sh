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

if command -v docker >/dev/null 2>&1; then
    docker nuwaxbackup --version >&2
fi
