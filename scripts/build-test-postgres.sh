#!/usr/bin/env bash
# Builds the local image `nuwax-test-postgres:15` for the hook recipe tests (pg_dumpall),
# without any registry: Debian's postgresql-15 binaries, the libraries they link, its share
# folder and busybox, imported as one layer. The server runs as `postgres` (uid 999) with
# trust auth on its Unix socket only; `pg-start` initialises an empty data folder first.
# Called by ensure-engine.sh; idempotent.
set -euo pipefail

IMAGE=nuwax-test-postgres:15
PG=/usr/lib/postgresql/15
log() { printf 'build-test-postgres: %s\n' "$*" >&2; }

docker image inspect "$IMAGE" >/dev/null 2>&1 && exit 0
if [ ! -x "$PG/bin/postgres" ]; then
    log "installing postgresql-15 (its binaries go into the image; no cluster is started here)"
    # No service starts on this host: invoke-rc.d asks policy-rc.d first.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >&2
fi
log "building $IMAGE"
root=$(mktemp -d)
trap 'rm -rf "$root"; rm -f /usr/sbin/policy-rc.d' EXIT
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/usr/lib/postgresql" "$root/usr/share/postgresql" \
    "$root/usr/share/zoneinfo" "$root/var/run/postgresql" "$root/var/lib/postgresql/data" "$root/dumps"
cp "$(command -v busybox)" "$root/bin/busybox"
for applet in sh ls cat echo sleep true false mkdir rm cp mv chmod chown test id env printf head tail \
    grep kill date wc; do
    ln -sf busybox "$root/bin/$applet"
done
cp -a "$PG" "$root/usr/lib/postgresql/"
cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
cp -a /usr/share/zoneinfo/UTC "$root/usr/share/zoneinfo/"
for tool in postgres initdb pg_ctl psql pg_dump pg_dumpall pg_isready pg_restore; do
    ln -sf "$PG/bin/$tool" "$root/bin/$tool"
done
# Every shared library the binaries and their modules link, at its own path.
find "$PG/bin" "$PG/lib" -type f \( -perm -u+x -o -name '*.so*' \) | while read -r elf; do
    { ldd "$elf" 2>/dev/null || true; } | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }'
done | sort -u | while read -r lib; do
    cp --parents -L "$lib" "$root"
done
printf 'root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999:postgres:/var/lib/postgresql:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\npostgres:x:999:\n' >"$root/etc/group"
cat >"$root/bin/pg-start" <<'EOF'
#!/bin/sh
set -e
data=/var/lib/postgresql/data
if [ ! -s "$data/PG_VERSION" ]; then
    initdb -D "$data" -U postgres --auth=trust --locale=C -E UTF8 >/dev/null
fi
exec postgres -D "$data" -c listen_addresses= -k /var/run/postgresql
EOF
chmod 0755 "$root/bin/pg-start"
chmod 1777 "$root/tmp"
chown -R 999:999 "$root/var/run/postgresql" "$root/var/lib/postgresql" "$root/dumps"
chmod 0700 "$root/var/lib/postgresql/data"
tar -C "$root" -c . | docker import -c 'ENV PATH=/bin TZ=UTC PGHOST=/var/run/postgresql' \
    -c 'USER postgres' -c 'CMD ["/bin/pg-start"]' - "$IMAGE" >/dev/null
log "built $IMAGE"
