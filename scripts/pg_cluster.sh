#!/usr/bin/env bash
# A private, throwaway PostgreSQL cluster for development and tests.
#
#   scripts/pg_cluster.sh start   DIR [PORT]   create (first time) and start; prints the DATABASE_URL
#   scripts/pg_cluster.sh stop    DIR          stop it (fast shutdown)
#   scripts/pg_cluster.sh restart DIR          restart it (used by the recovery tests)
#   scripts/pg_cluster.sh destroy DIR          stop it and delete DIR
#   scripts/pg_cluster.sh dev-dir              where `make dev` keeps this checkout's cluster
#
# initdb and pg_ctl refuse to run as root, so as root the cluster belongs to the `postgres`
# system user (created by Debian's postgresql package) and every call goes through runuser.
# It listens on 127.0.0.1 only, with trust authentication: it is never reachable from outside.
#
# `make dev`'s cluster lives outside the checkout, because `postgres` cannot enter a checkout
# under a private folder (root's home, a `mktemp -d`): one folder per checkout, named after
# its path, under /var/lib/digit-predictor as root, else $XDG_STATE_HOME/digit-predictor
# (~/.local/state/digit-predictor). DEV_PG_DIR overrides it; `make clean` deletes it.
set -euo pipefail
umask 022  # folders this script creates must stay enterable for `postgres`

usage() { sed -n '2,8p' "$0" >&2; exit 2; }

dev_dir() {
    if [ -n "${DEV_PG_DIR:-}" ]; then
        realpath -m "$DEV_PG_DIR"
        return
    fi
    local checkout state name
    checkout=$(realpath "$(dirname "$0")/..")
    if [ "$(id -u)" = 0 ]; then
        state=/var/lib/digit-predictor
    else
        state=${XDG_STATE_HOME:-$HOME/.local/state}/digit-predictor
    fi
    # The folder's name plus a hash of the full path: two clones never share a cluster.
    name=$(basename "$checkout")
    name=${name//[^A-Za-z0-9._-]/_}
    echo "$state/pg-$name-$(printf '%s' "$checkout" | sha256sum | cut -c1-12)"
}

[ $# -ge 1 ] || usage
cmd=$1
if [ "$cmd" = dev-dir ]; then
    dev_dir
    exit 0
fi
[ $# -ge 2 ] || usage
dir=$(realpath -m "$2")
port=${3:-54329}
db_user=digits
db_name=digits

if [ "$cmd" = destroy ] && [ ! -s "$dir/PG_VERSION" ]; then
    rm -rf "$dir"  # nothing can be running there: no server binaries needed
    exit 0
fi

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "PostgreSQL server binaries not found: apt-get install postgresql" >&2
    exit 1
fi

owner=$(id -un)
if [ "$(id -u)" = 0 ]; then
    owner=postgres
    id -u "$owner" >/dev/null 2>&1 || useradd --system --no-create-home "$owner"
fi
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u "$owner" -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
    if [ ! -s "$dir/PG_VERSION" ]; then
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown "$owner" "$dir"
        if ! as_owner test -w "$dir"; then
            echo "user $owner cannot write to $dir (is a parent folder private?" \
                "Put the cluster elsewhere, e.g. DEV_PG_DIR for make dev)" >&2
            exit 1
        fi
        as_owner "$bindir/initdb" -D "$dir" -U "$db_user" --auth=trust --encoding=UTF8 \
            --no-instructions >"$dir.initdb.log" 2>&1 || { cat "$dir.initdb.log" >&2; exit 1; }
        rm -f "$dir.initdb.log"
        {
            echo "listen_addresses = '127.0.0.1'"
            echo "port = $port"
            echo "unix_socket_directories = ''"
            echo "max_connections = 200"
            echo "fsync = off"  # throwaway data: speed matters more than crash safety
            echo "logging_collector = off"
        } | as_owner tee -a "$dir/postgresql.conf" >/dev/null
    fi
    port=$(sed -n "s/^port = \([0-9]*\)$/\1/p" "$dir/postgresql.conf" | tail -n 1)
    if ! as_owner "$bindir/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        as_owner "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null \
            || { tail -n 20 "$dir/server.log" >&2; exit 1; }
    fi
    if ! "$bindir/psql" -h 127.0.0.1 -p "$port" -U "$db_user" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$db_name'" | grep -q 1; then
        "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$db_user" "$db_name"
    fi
    echo "postgresql://$db_user@127.0.0.1:$port/$db_name"
    ;;
stop)
    [ -s "$dir/PG_VERSION" ] || exit 0
    as_owner "$bindir/pg_ctl" -D "$dir" -m fast -w status >/dev/null 2>&1 || exit 0
    as_owner "$bindir/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    ;;
restart)
    as_owner "$bindir/pg_ctl" -D "$dir" -m fast -w -t 60 -l "$dir/server.log" restart >/dev/null
    ;;
destroy)
    "$0" stop "$dir"
    rm -rf "$dir"
    ;;
*)
    usage
    ;;
esac
