#!/usr/bin/env bash
# Builds the local image `nuwax-test-mariadb:10` for the hook recipe tests (mariadb-dump),
# without any registry: Debian's mariadb-server binaries, the libraries they link, its share
# folder and busybox, imported as one layer. The server runs as `mysql` (uid 999), on its Unix
# socket only, root with the password in MARIADB_ROOT_PASSWORD; `mariadb-start` initialises an empty data folder
# first. Called by ensure-engine.sh; idempotent.
set -euo pipefail

IMAGE=nuwax-test-mariadb:10
log() { printf 'build-test-mariadb: %s\n' "$*" >&2; }

docker image inspect "$IMAGE" >/dev/null 2>&1 && exit 0
if [ ! -x /usr/sbin/mariadbd ]; then
    log "installing mariadb-server (its binaries go into the image; no server is started here)"
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mariadb-server >&2
fi
log "building $IMAGE"
root=$(mktemp -d)
trap 'rm -rf "$root"; rm -f /usr/sbin/policy-rc.d' EXIT
mkdir -p "$root/bin" "$root/usr/bin" "$root/usr/sbin" "$root/etc/mysql" "$root/tmp" "$root/usr/share" \
    "$root/run/mysqld" "$root/var/lib/mysql" "$root/dumps"
cp "$(command -v busybox)" "$root/bin/busybox"
for applet in sh ls cat echo sleep true false mkdir rm cp mv chmod chown test id env printf head tail \
    grep sed kill date wc hostname dirname basename tr cut; do
    ln -sf busybox "$root/bin/$applet"
done
tools=(/usr/sbin/mariadbd /usr/bin/mariadb /usr/bin/mariadb-dump /usr/bin/mariadb-admin
    /usr/bin/mariadb-install-db /usr/bin/my_print_defaults /usr/bin/resolveip)
for t in "${tools[@]}"; do
    [ -e "$t" ] && cp -L "$t" "$root$t"
done
cp -a /usr/share/mysql "$root/usr/share/"
for elf in "${tools[@]}"; do
    [ -e "$elf" ] || continue
    { ldd "$elf" 2>/dev/null || true; } | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }'
done | sort -u | while read -r lib; do
    cp --parents -L "$lib" "$root"
done
printf '[mysqld]\nuser=mysql\ndatadir=/var/lib/mysql\nsocket=/run/mysqld/mysqld.sock\nskip-networking\n[client]\nsocket=/run/mysqld/mysqld.sock\n' \
    >"$root/etc/mysql/my.cnf"
printf 'root:x:0:0:root:/root:/bin/sh\nmysql:x:999:999:mysql:/var/lib/mysql:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nmysql:x:999:\n' >"$root/etc/group"
cat >"$root/bin/mariadb-start" <<'EOF'
#!/bin/sh
set -e
if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
        --auth-root-authentication-method=normal --skip-name-resolve >/dev/null
    # As the official image: root's password from MARIADB_ROOT_PASSWORD.
    printf "FLUSH PRIVILEGES;\nALTER USER 'root'@'localhost' IDENTIFIED BY '%s';\n" "${MARIADB_ROOT_PASSWORD:?}" |
        mariadbd --bootstrap >/dev/null 2>&1
fi
exec mariadbd
EOF
chmod 0755 "$root/bin/mariadb-start"
chmod 1777 "$root/tmp"
chown -R 999:999 "$root/run/mysqld" "$root/var/lib/mysql" "$root/dumps"
tar -C "$root" -c . | docker import -c 'ENV PATH=/bin:/usr/bin:/usr/sbin TZ=UTC' \
    -c 'USER mysql' -c 'CMD ["/bin/mariadb-start"]' - "$IMAGE" >/dev/null
log "built $IMAGE"
