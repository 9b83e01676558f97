#!/usr/bin/env bash
# Back up the Digit Predictor database with pg_dump, keeping the newest BACKUP_KEEP dumps.
#
#   scripts/backup_db.sh [--compose] [DIR]
#
#   DIR        where dumps go (default $BACKUP_DIR, else /var/backups/digit-predictor)
#   --compose  dump from the `db` service of this checkout's docker-compose.yml (the VPS set-up,
#              run daily by cron); without it, pg_dump runs here against $DATABASE_URL, or
#              libpq's PG* variables when that is unset.
#   BACKUP_KEEP  how many dumps to keep, newest first (default 14: two weeks of daily dumps)
#
# After a good dump it runs `python -m digit_predictor.db prune-drawings`, which drops the
# drawings of uncorrected predictions older than DRAWING_RETENTION_DAYS (the app's setting; off
# when unset) and prints what it did; --compose runs it in a one-off container of the api image.
# A failed prune makes the script exit 1 (the dump is kept).
#
# Each dump is PostgreSQL's custom format (`pg_restore --list` must read it back before it
# counts), written under a temporary name and renamed when complete: a failed run leaves no
# partial file and deletes no old dump. Restore with scripts/restore_db.sh. Credentials come
# only from the environment (or the container's own); none is ever written to a file or argv.
set -euo pipefail

usage() { sed -n '2,20p' "$0" >&2; exit 2; }

mode=local
case "${1:-}" in
--compose) mode=compose; shift ;;
-h | --help) usage ;;
-*) usage ;;
esac
[ $# -le 1 ] || usage
dir=${1:-${BACKUP_DIR:-/var/backups/digit-predictor}}
keep=${BACKUP_KEEP:-14}
case "$keep" in '' | *[!0-9]* | 0) echo "BACKUP_KEEP must be a positive number" >&2; exit 2 ;; esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose --project-directory "$repo" "$@"
    else
        docker-compose --project-directory "$repo" "$@"
    fi
}

# pg_dump / pg_restore, here or inside the db container (where the image's own settings apply).
dump() {
    if [ "$mode" = compose ]; then
        # shellcheck disable=SC2016  # expanded by the container's shell, from its environment
        compose exec -T db sh -c 'exec pg_dump --format=custom -U "$POSTGRES_USER" -d "$POSTGRES_DB"'
    else
        pg_dump --format=custom ${DATABASE_URL:+--dbname="$DATABASE_URL"}
    fi
}
# The drawing-retention job, with the app's own settings (from .env / the container's env).
prune_drawings() {
    if [ "$mode" = compose ]; then
        compose run --rm --no-deps -T migrate python -m digit_predictor.db prune-drawings
    else
        local python=${PYTHON:-$repo/.venv/bin/python}
        [ -x "$python" ] || python=python3
        "$python" -m digit_predictor.db prune-drawings
    fi
}
list_archive() {
    if [ "$mode" = compose ]; then
        compose exec -T db pg_restore --list <"$1"
    else
        pg_restore --list "$1"
    fi
}

umask 077
mkdir -p "$dir"
name=digits-$(date -u +%Y%m%dT%H%M%SZ).dump
target=$dir/$name
[ ! -e "$target" ] || { echo "$target already exists; not overwriting it" >&2; exit 1; }
partial=$(mktemp "$dir/.partial-XXXXXX")
trap 'rm -f "$partial"' EXIT

dump >"$partial"
if ! list_archive "$partial" >/dev/null; then
    echo "the new dump does not read back; keeping the old ones" >&2
    exit 1
fi
mv "$partial" "$target"
echo "backup: $target ($(du -h "$target" | cut -f1))"

# Retention: names sort by time; only files this script writes are considered.
mapfile -t old < <(find "$dir" -maxdepth 1 -type f -name 'digits-*.dump' -printf '%f\n' | sort -r \
    | tail -n +$((keep + 1)))
for file in "${old[@]}"; do
    rm -f -- "${dir:?}/$file"
    echo "removed old backup: $dir/$file"
done

# Only after a dump that reads back: a drawing is never dropped before it is in a backup.
if ! prune_drawings; then
    echo "prune-drawings failed (the backup itself is fine)" >&2
    exit 1
fi
