#!/usr/bin/env bash
# A private, throwaway PostgreSQL cluster for development and tests.
#
#   scripts/pg_cluster.sh start   DIR [PORT]   create (first time) and start; prints the DATABASE_URL
#   scripts/pg_cluster.sh stop    DIR          stop it (fast shutdown)
#   scripts/pg_cluster.sh restart DIR          restart it (used by the recovery tests)
#   scripts/pg_cluster.sh destroy DIR          stop it and delete DIR
#
# initdb and pg_ctl refuse to run as root, so as root the cluster belongs to the `postgres`
# system user (created by Debian's postgresql package) and every call goes through runuser.
# It listens on 127.0.0.1 only, with trust authentication: it is never reachable from outside.
set -euo pipefail

usage() { sed -n '2,9p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
dir=$(realpath -m "$2")
port=${3:-54329}
db_user=digits
db_name=digits

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
            echo "user $owner cannot write to $dir (is a parent folder private?)" >&2
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
