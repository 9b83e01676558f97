#!/usr/bin/env bash
# Restore a dump made by scripts/backup_db.sh, replacing what the database holds now.
#
#   scripts/restore_db.sh [--compose] [--yes] FILE
#
#   --compose  restore into the `db` service of this checkout's docker-compose.yml; api and web
#              are stopped meanwhile and started again afterwards. Without it, pg_restore runs
#              here against $DATABASE_URL, or libpq's PG* variables when that is unset.
#   --yes      do not ask for confirmation (also RESTORE_CONFIRM=yes); required without a terminal
#
# One transaction: the dump's tables are dropped and recreated, and either all of it is restored
# or, on any error, nothing changes. Owner and privileges come from the connecting user, so a
# dump restores into a database with another user name too.
set -euo pipefail

usage() { sed -n '2,13p' "$0" >&2; exit 2; }

mode=local
confirmed=${RESTORE_CONFIRM:-no}
while [ $# -gt 0 ]; do
    case "$1" in
    --compose) mode=compose; shift ;;
    --yes) confirmed=yes; shift ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) break ;;
    esac
done
[ $# -eq 1 ] || usage
file=$1
if [ ! -f "$file" ] || [ ! -r "$file" ]; then echo "no such backup: $file" >&2; exit 1; fi
database=${DATABASE_URL:-${PGDATABASE:-}}
if [ "$mode" = local ] && [ -z "$database" ]; then
    # pg_restore without a database would only print SQL and look like a success.
    echo "set DATABASE_URL (or PGDATABASE) to the database to restore into" >&2
    exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose --project-directory "$repo" "$@"
    else
        docker-compose --project-directory "$repo" "$@"
    fi
}

# Refuse a file that is not a readable custom-format dump before touching anything.
if [ "$mode" = compose ]; then
    compose exec -T db pg_restore --list <"$file" >/dev/null
else
    pg_restore --list "$file" >/dev/null
fi || { echo "$file is not a readable pg_dump archive" >&2; exit 1; }

if [ "$confirmed" != yes ]; then
    if [ ! -t 0 ]; then
        echo "refusing to replace the database without --yes (or RESTORE_CONFIRM=yes)" >&2
        exit 1
    fi
    read -r -p "Replace the current database with $file? Type yes: " answer
    [ "$answer" = yes ] || { echo "not restored" >&2; exit 1; }
fi

options=(--clean --if-exists --no-owner --no-privileges --single-transaction --exit-on-error)
if [ "$mode" = compose ]; then
    stopped=()
    for service in web api; do
        if [ -n "$(compose ps -q "$service" 2>/dev/null)" ]; then stopped+=("$service"); fi
    done
    if [ ${#stopped[@]} -gt 0 ]; then
        compose stop "${stopped[@]}"
        trap 'compose start "${stopped[@]}"' EXIT
    fi
    # shellcheck disable=SC2016  # expanded by the container's shell, from its environment
    compose exec -T db sh -c 'exec pg_restore "$@" -U "$POSTGRES_USER" -d "$POSTGRES_DB"' \
        pg_restore "${options[@]}" <"$file"
else
    pg_restore "${options[@]}" --dbname="$database" "$file"
fi
echo "restored: $file"
