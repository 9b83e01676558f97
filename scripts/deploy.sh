#!/usr/bin/env bash
# Deploy or update Digit Predictor on a server prepared by scripts/provision_vps.sh.
#
#   scripts/deploy.sh                 on the server, in the checkout (e.g. /opt/digit-predictor)
#   scripts/deploy.sh USER@HOST       from your machine: the same, over ssh (APP_DIR on the host,
#                                     default /opt/digit-predictor)
#   scripts/deploy.sh --check-env     only check .env (or $ENV_FILE), then stop
#
# Options: --no-proxy (no Caddy/TLS: the page stays on 127.0.0.1:8501), --no-pull (deploy the
# checkout as it is, without `git pull`).
#
# Steps: create .env with fresh random secrets on the first run; refuse placeholders, DEBUG and a
# missing DOMAIN/ACME_EMAIL; git pull --ff-only; build the images (pulling newer base images);
# docker compose up; wait until db, api and web are healthy; install the daily backup (cron, as
# root); remove dangling images. Safe to run again: that is how an update is done.
set -euo pipefail

proxy=yes
pull=yes
check_only=no
remote=""
while [ $# -gt 0 ]; do
    case "$1" in
    --no-proxy) proxy=no ;;
    --no-pull) pull=no ;;
    --check-env) check_only=yes ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) remote=$1 ;;
    esac
    shift
done

if [ -n "$remote" ]; then
    # Run this same script on the server; its own options go along.
    app_dir=${APP_DIR:-/opt/digit-predictor}
    flags=()
    [ "$proxy" = no ] && flags+=(--no-proxy)
    [ "$pull" = no ] && flags+=(--no-pull)
    # shellcheck disable=SC2029  # expanded here on purpose: the path and flags are ours
    exec ssh "$remote" "cd '$app_dir' && scripts/deploy.sh ${flags[*]}"
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
env_file=${ENV_FILE:-$repo/.env}
timeout_s=${DEPLOY_TIMEOUT_S:-300}
backup_dir=${BACKUP_DIR:-/var/backups/digit-predictor}

log() { printf '==> %s\n' "$*"; }
die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }

# The value of NAME in the env file (last assignment wins, surrounding quotes removed); not
# `source`d: values are data, never shell.
env_value() {
    local line
    line=$(grep -E "^[[:space:]]*$1=" "$env_file" | tail -n 1 || true)
    line=${line#*=}
    line=${line%\"}
    line=${line#\"}
    line=${line%\'}
    line=${line#\'}
    printf '%s' "$line"
}

random_secret() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

create_env() {
    log "creating $env_file from .env.example with fresh random secrets"
    (
        umask 077
        sed -e "s/^DB_PASSWORD=change-me.*/DB_PASSWORD=$(random_secret)/" \
            -e "s/^API_KEY=change-me.*/API_KEY=$(random_secret)/" \
            "$repo/.env.example" >"$env_file"
    )
}

check_env() {
    [ -f "$env_file" ] || die "$env_file not found: cp .env.example .env, then edit it"
    local problems=() name value
    if grep -E -n '^[^#]*=[[:space:]]*["'\'']?change-me' "$env_file" >/dev/null; then
        problems+=("placeholder values left: $(grep -E '^[^#]*=[[:space:]]*["'\'']?change-me' "$env_file" | cut -d= -f1 | tr '\n' ' ')")
    fi
    [ -n "$(env_value DB_PASSWORD)" ] || problems+=("DB_PASSWORD is empty")
    case "$(env_value DEBUG | tr '[:upper:]' '[:lower:]')" in
    1 | true | yes | on) problems+=("DEBUG is on: never on a server") ;;
    esac
    if [ "$proxy" = yes ]; then
        for name in DOMAIN ACME_EMAIL; do
            value=$(env_value "$name")
            [ -n "$value" ] || problems+=("$name is empty (needed for TLS; or deploy with --no-proxy)")
        done
        case "$(env_value DOMAIN)" in
        localhost | 127.* | *example.com) problems+=("DOMAIN must be this server's public name") ;;
        esac
    fi
    if [ "$(stat -c %a "$env_file")" != 600 ]; then
        chmod 600 "$env_file" 2>/dev/null || problems+=("chmod 600 $env_file")
    fi
    if [ ${#problems[@]} -gt 0 ]; then
        printf 'deploy: fix %s first:\n' "$env_file" >&2
        printf '  - %s\n' "${problems[@]}" >&2
        exit 1
    fi
    log "$env_file looks right"
}

if [ "$check_only" = yes ]; then
    check_env
    exit 0
fi

command -v docker >/dev/null || die "docker not found: run scripts/provision_vps.sh first"
docker compose version >/dev/null 2>&1 || die "the docker compose plugin is missing (provision_vps.sh installs it)"
compose=(docker compose --project-directory "$repo" --env-file "$env_file")
[ "$proxy" = yes ] && compose+=(--profile proxy)

if [ ! -f "$env_file" ]; then
    create_env
    if [ "$proxy" = yes ]; then
        die "set DOMAIN and ACME_EMAIL in $env_file, then run scripts/deploy.sh again"
    fi
fi
check_env

if [ "$pull" = yes ] && [ -d .git ]; then
    log "git pull"
    git pull --ff-only
fi

log "building images"
"${compose[@]}" build --pull
log "starting the stack"
"${compose[@]}" up -d --remove-orphans

log "waiting for db, api and web to be healthy (up to ${timeout_s}s)"
deadline=$((SECONDS + timeout_s))
for service in db api web; do
    while :; do
        id=$("${compose[@]}" ps -q "$service")
        status=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)
        [ "$status" = healthy ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            "${compose[@]}" ps
            "${compose[@]}" logs --tail=40 "$service"
            die "$service is $status after ${timeout_s}s"
        fi
        sleep 3
    done
    log "$service healthy"
done

if [ "$(id -u)" = 0 ]; then
    log "daily backup: /etc/cron.d/digit-predictor (03:17, into $backup_dir, keeps ${BACKUP_KEEP:-14})"
    cat >/etc/cron.d/digit-predictor <<EOF
# Written by scripts/deploy.sh: daily pg_dump of the Digit Predictor database.
SHELL=/bin/bash
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
17 3 * * * root cd '$repo' && BACKUP_KEEP=${BACKUP_KEEP:-14} scripts/backup_db.sh --compose '$backup_dir' >>/var/log/digit-predictor-backup.log 2>&1
EOF
    chmod 644 /etc/cron.d/digit-predictor
else
    log "not root: install the daily backup yourself (docs/deploy.md, Backups)"
fi

docker image prune -f >/dev/null
"${compose[@]}" ps
if [ "$proxy" = yes ]; then
    log "deployed: https://$(env_value DOMAIN)"
else
    log "deployed: http://127.0.0.1:$(env_value WEB_PORT | grep . || echo 8501) (no proxy)"
fi
