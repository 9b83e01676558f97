#!/usr/bin/env bash
# Build both images and run the whole compose stack once, for real, on a machine that has no
# image registry: stand-in base images from Debian packages, a local wheel index, then
# `compose up`, one drawing posted to the api, its row checked in PostgreSQL, and teardown.
#
#   sudo scripts/compose_smoke.sh            (root; needs dockerd, docker-compose, debootstrap)
#   sudo scripts/compose_smoke.sh --prepare  (only fetch what it needs into the cache)
#
# Not part of CI. Safety, without exception:
#   - the Docker engine runs in a network namespace of its own (unshare --net) that has only a
#     loopback interface, with --bridge=none --iptables=false, its own data root and socket;
#   - every container and every build uses host networking (docker-compose.hostnet.yml), i.e.
#     that namespace's 127.0.0.1: no bridge network, no private-range address, ever (checked);
#   - dockerd is stopped by its PID at the end, whatever happened.
# Packages are fetched before entering the namespace (debootstrap, pip download), by the host's
# own apt and pip configuration; inside, pip reads a wheel index served on 127.0.0.1.
#
# Environment: SMOKE_CACHE (rootfs and wheels, kept between runs; default .artifacts/smoke-cache),
# SMOKE_TIMEOUT_S (how long the stack may take to become healthy; default 420),
# SMOKE_KEEP_IMAGES=1 (keep the engine's images in the cache for a faster next run; by default
# everything the engine stored is deleted at the end),
# DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SMOKE_CACHE:-$repo/.artifacts/smoke-cache}
state=$repo/.artifacts/smoke-state
data_root=$state/docker
[ "${SMOKE_KEEP_IMAGES:-0}" = 1 ] && data_root=$cache/docker
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
timeout_s=${SMOKE_TIMEOUT_S:-420}
index_port=3141
project=digit-smoke
# The FROM and image: names in Dockerfile.*/docker-compose.yml, stood in for locally.
python_image=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$repo/Dockerfile.api" | head -n 1)
postgres_image=$(sed -n 's/^ *image: \(postgres:[^ ]*\)$/\1/p' "$repo/docker-compose.yml")

log() { printf '[smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { log "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------- outside the namespace

build_rootfs() {
    # One Debian bookworm tree stands in for both base images: python3.11 with venv (as in
    # python:3.11-slim-bookworm) and PostgreSQL 15 with a minimal copy of the official image's
    # entrypoint (initialise an empty PGDATA from POSTGRES_*, then run postgres).
    [ -s "$cache/rootfs.tar" ] && return 0
    local root=$cache/rootfs
    log "debootstrap bookworm into $root"
    rm -rf "$root"
    mkdir -p "$cache"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { tail -n 20 "$cache/debootstrap.log"; die "debootstrap failed"; }
    # Nothing may start inside the chroot (a PostgreSQL on the host's port, say), and the
    # package makes no cluster: the entrypoint does, in the container.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    mkdir -p "$root/etc/postgresql-common"
    echo "create_main_cluster = false" >"$root/etc/postgresql-common/createcluster.conf"
    log "installing postgresql-15 into the stand-in"
    # shellcheck disable=SC2016  # $1 belongs to the inner shell
    unshare --mount --fork -- sh -c '
        set -e
        mount -t proc proc "$1/proc"
        chroot "$1" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null && \
            apt-get clean && rm -rf /var/lib/apt/lists/*"
    ' sh "$root" || die "apt-get in the chroot failed"
    cat >"$root/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
# Stand-in for the official postgres image's entrypoint: the part docker-compose.yml relies on.
set -eu
if [ "${1:-}" = postgres ]; then
    shift
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        pwfile=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
        chown postgres "$pwfile"
        runuser -u postgres -- initdb -D "$PGDATA" -U "${POSTGRES_USER:-postgres}" \
            --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
        rm -f "$pwfile"
        echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
        runuser -u postgres -- pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        runuser -u postgres -- createdb -U "${POSTGRES_USER:-postgres}" "${POSTGRES_DB:-postgres}" \
            2>/dev/null || true
        runuser -u postgres -- pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
    exec runuser -u postgres -- postgres -D "$PGDATA" "$@"
fi
exec "$@"
ENTRYPOINT
    chmod 755 "$root/usr/local/bin/docker-entrypoint.sh"
    log "packing the stand-in root file system"
    tar -C "$root" --numeric-owner -cf "$cache/rootfs.tar.tmp" .
    mv "$cache/rootfs.tar.tmp" "$cache/rootfs.tar"
    rm -rf "$root"
}

build_wheelhouse() {
    # Every wheel both images install, fetched by this machine's pip (which takes torch's CPU
    # build from its local wheel directory), laid out as a PEP 503 index.
    local house=$cache/wheelhouse
    [ -e "$house/.complete" ] && return 0
    log "downloading wheels for requirements/api.txt and requirements/web.txt"
    rm -rf "$house"
    mkdir -p "$house/files"
    "$repo/.venv/bin/python" -m pip download --quiet --only-binary=:all: --dest "$house/files" \
        -r "$repo/requirements/api.txt" -r "$repo/requirements/web.txt"
    compgen -G "$house/files/torch-*+cpu-*.whl" >/dev/null || die "the wheel directory has no CPU torch"
    "$repo/.venv/bin/python" - "$house" <<'PY'
import html, pathlib, re, sys

house = pathlib.Path(sys.argv[1])
projects: dict[str, list[str]] = {}
for wheel in sorted((house / "files").glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    projects.setdefault(name, []).append(wheel.name)
for name, files in projects.items():
    page = house / "simple" / name / "index.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    links = "".join(f'<a href="../../files/{html.escape(f)}">{html.escape(f)}</a><br>\n' for f in files)
    page.write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
PY
    touch "$house/.complete"
}

# ---------------------------------------------------------------- inside the namespace

dockerd_pid=""
index_pid=""
compose=()

networks_are_safe() {
    # Only Docker's built-in host and none networks may exist; and the namespace has lo alone.
    local bad=""
    if [ -n "$dockerd_pid" ]; then
        bad=$(docker network ls --format '{{.Name}} {{.Driver}}' | grep -v -E '^(host host|none null)$' || true)
    fi
    [ -z "$bad" ] || { log "unexpected Docker networks: $bad"; return 1; }
    bad=$(ip -o addr show | awk '$2 != "lo" {print $2, $4}')
    [ -z "$bad" ] || { log "unexpected addresses: $bad"; return 1; }
    if ip -o addr show | grep -E -q ' inet (10\.|172\.(1[6-9]|2[0-9]|3[01])\.|192\.168\.)'; then
        log "a private-range address appeared"
        return 1
    fi
}

# shellcheck disable=SC2317  # runs from the EXIT trap
teardown() {
    local rc=$?
    set +e
    if [ -n "$dockerd_pid" ]; then
        if [ "$rc" != 0 ] && [ ${#compose[@]} -gt 0 ]; then
            log "logs of the failed run:"
            "${compose[@]}" ps
            "${compose[@]}" logs --no-color --tail=60
        fi
        if [ ${#compose[@]} -gt 0 ]; then
            log "compose down"
            "${compose[@]}" down --volumes --remove-orphans --timeout 10 2>&1 | tail -n 3
        fi
        log "remaining containers: $(docker ps -aq | wc -l)"
        networks_are_safe && log "networks at the end: host and none only; lo only"
        log "stopping dockerd (pid $dockerd_pid)"
        kill -TERM "$dockerd_pid"
        for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
        kill -0 "$dockerd_pid" 2>/dev/null && { log "dockerd still up: KILL"; kill -KILL "$dockerd_pid"; }
        wait "$dockerd_pid" 2>/dev/null
    fi
    [ -n "$index_pid" ] && kill "$index_pid" 2>/dev/null && wait "$index_pid" 2>/dev/null
    # dockerd leaves its netns bind mount behind; this mount namespace's mounts only.
    findmnt -rn -o TARGET | grep -F "$state/" | sort -r | xargs -r umount -l
    rm -rf "$state"
    if [ "$rc" = 0 ]; then log "SMOKE TEST PASSED"; else log "SMOKE TEST FAILED (exit $rc)"; fi
    exit "$rc"
}

wait_healthy() {
    local service=$1 deadline=$((SECONDS + timeout_s)) id status
    while :; do
        id=$("${compose[@]}" ps -q "$service")
        status=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)
        [ "$status" = healthy ] && { log "$service is healthy"; return 0; }
        [ "$SECONDS" -ge "$deadline" ] && die "$service not healthy after ${timeout_s}s (status: $status)"
        sleep 3
    done
}

inside() {
    trap teardown EXIT
    trap 'exit 130' INT TERM  # so that teardown runs on Ctrl-C or kill too
    ip link set lo up
    networks_are_safe || die "the namespace is not loopback-only"
    rm -rf "$state"
    mkdir -p "$state"

    log "wheel index on 127.0.0.1:$index_port"
    "$repo/.venv/bin/python" -m http.server --bind 127.0.0.1 --directory "$cache/wheelhouse" \
        "$index_port" >"$state/index.log" 2>&1 &
    index_pid=$!

    log "starting dockerd (bridge none, no iptables, data root $data_root)"
    dockerd --data-root "$data_root" --exec-root "$state/exec" --pidfile "$state/dockerd.pid" \
        --host "unix://$state/docker.sock" --bridge=none --iptables=false --ip6tables=false \
        --ip-forward=false --ip-masq=false >"$state/dockerd.log" 2>&1 &
    dockerd_pid=$!
    export DOCKER_HOST=unix://$state/docker.sock
    for _ in $(seq 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
    docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}' \
        || { tail -n 30 "$state/dockerd.log"; die "dockerd did not start"; }
    networks_are_safe || die "dockerd created a network"

    log "importing stand-ins: $python_image, $postgres_image"
    docker image inspect "$python_image" >/dev/null 2>&1 \
        || docker import --change 'CMD ["python3"]' "$cache/rootfs.tar" "$python_image" >/dev/null
    docker image inspect "$postgres_image" >/dev/null 2>&1 || docker import \
        --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PGDATA=/var/lib/postgresql/data' \
        --change 'ENTRYPOINT ["docker-entrypoint.sh"]' --change 'CMD ["postgres"]' \
        "$cache/rootfs.tar" "$postgres_image" >/dev/null

    # Real secrets for this run only: the app refuses the placeholders of .env.example.
    local api_key
    api_key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    {
        echo "DB_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
        echo "API_KEY=$api_key"
        echo "DEBUG=false"
    } >"$state/env"
    # docker-compose.yml + docker-compose.hostnet.yml, merged; then the published ports dropped
    # (docker-compose 1.29 refuses them on host networking, where they mean nothing anyway).
    # Refuse to go on unless every service is on host networking and no network is declared.
    docker-compose --project-name "$project" --project-directory "$repo" --env-file "$state/env" \
        -f "$repo/docker-compose.yml" -f "$repo/docker-compose.hostnet.yml" config >"$state/compose.yml"
    "$repo/.venv/bin/python" - "$state/compose.yml" <<'PY' || die "the merged file is not host-only"
import sys

import yaml

path = sys.argv[1]
with open(path) as f:
    config = yaml.safe_load(f)
assert "networks" not in config, "networks declared"
for name, service in config["services"].items():
    assert service.get("network_mode") == "host", f"{name} is not on host networking"
    assert "networks" not in service, f"{name} joins a network"
    if "build" in service:
        assert service["build"].get("network") == "host", f"{name} builds off host networking"
    service.pop("ports", None)
with open(path, "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
print(f"{len(config['services'])} services, all on host networking, no networks")
PY
    compose=(docker-compose --project-name "$project" --project-directory "$repo"
        --env-file "$state/env" -f "$state/compose.yml")

    local index=http://127.0.0.1:$index_port/simple/
    log "building images (build network: host; pip index $index)"
    "${compose[@]}" build --build-arg "PIP_INDEX_URL=$index" --build-arg "TORCH_INDEX_URL=$index" \
        api web
    docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep digit-predictor
    networks_are_safe || die "building created a network"

    log "checking the images"
    [ "$(docker run --rm --network host digit-predictor-api id -u)" = 10001 ] || die "api runs as root"
    [ "$(docker run --rm --network host digit-predictor-web id -u)" = 10001 ] || die "web runs as root"
    docker run --rm --network host digit-predictor-api \
        python -c "import torch; assert torch.version.cuda is None; print('api torch', torch.__version__)"
    docker run --rm --network host digit-predictor-web \
        python -c "import importlib.util as u; assert u.find_spec('torch') is None; print('web: no torch')"
    docker run --rm --network host digit-predictor-api ls -l /app/model/saved_model
    docker run --rm --network host --entrypoint sh digit-predictor-api -c \
        'test ! -e /app/.env && test ! -e /app/.git && test ! -e /app/tests' || die "the build context leaked"

    log "compose up"
    "${compose[@]}" up -d
    networks_are_safe || die "compose created a network"
    wait_healthy db
    wait_healthy api
    wait_healthy web
    "${compose[@]}" ps
    local migrate_exit
    migrate_exit=$(docker inspect --format '{{.State.ExitCode}}' "$("${compose[@]}" ps -q migrate)")
    [ "$migrate_exit" = 0 ] || die "migrate exited $migrate_exit"
    "${compose[@]}" logs --no-color migrate | tail -n 3

    log "web: $(curl -fsS http://127.0.0.1:8501/_stcore/health), page $(curl -fsS -o /dev/null -w '%{http_code}' http://127.0.0.1:8501/)"
    log "api /readyz: $(curl -fsS http://127.0.0.1:8000/readyz)"

    log "posting a drawing of a 7"
    "$repo/.venv/bin/python" - "$state/seven.png" <<'PY'
import sys

from PIL import Image, ImageDraw

image = Image.new("L", (280, 280), 0)
draw = ImageDraw.Draw(image)
draw.line([(70, 60), (210, 60), (130, 230)], fill=255, width=22)
image.save(sys.argv[1])
PY
    local response id
    response=$(curl -fsS -X POST -H "X-API-Key: $api_key" -F "image=@$state/seven.png;type=image/png" \
        http://127.0.0.1:8000/v1/predictions) || die "POST /v1/predictions failed"
    log "api answered: $response"
    id=$(python3 -c 'import json, sys; print(int(json.loads(sys.argv[1])["id"]))' "$response")

    log "checking row $id in PostgreSQL"
    local row=""
    for _ in $(seq 20); do
        row=$("${compose[@]}" exec -T db psql -U digits -d digits -tA -c \
            "SELECT id, predicted_digit, round(confidence::numeric, 3), octet_length(image_data) > 0 FROM predictions WHERE id = $id")
        [ -n "$row" ] && break
        sleep 1  # the api may queue its write
    done
    [ -n "$row" ] || die "no row $id in predictions"
    log "row: $row"

    log "backup and restore through compose (scripts/backup_db.sh --compose, restore_db.sh --compose)"
    export COMPOSE_FILE=$state/compose.yml COMPOSE_PROJECT_NAME=$project
    "$repo/scripts/backup_db.sh" --compose "$state/backups"
    local dump
    dump=$(find "$state/backups" -name 'digits-*.dump' | head -n 1)
    [ -s "$dump" ] || die "no dump written"
    "${compose[@]}" exec -T db psql -q -U digits -d digits -c "DELETE FROM predictions"
    "$repo/scripts/restore_db.sh" --compose --yes "$dump"
    wait_healthy api
    wait_healthy web
    row=$("${compose[@]}" exec -T db psql -U digits -d digits -tA -c \
        "SELECT id, predicted_digit FROM predictions WHERE id = $id")
    [ -n "$row" ] || die "row $id did not come back from the dump"
    log "row $id is back after the restore: $row"

    log "restart: the stack comes back healthy with its data"
    "${compose[@]}" restart db api web
    wait_healthy db
    wait_healthy api
    wait_healthy web
    [ "$("${compose[@]}" exec -T db psql -U digits -d digits -tA -c 'SELECT count(*) FROM predictions')" -ge 1 ] \
        || die "the row did not survive a restart"
    networks_are_safe || die "a network appeared"
}

# ---------------------------------------------------------------- main

main() {
    if [ "${1:-}" = --inside ]; then
        inside
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "run as root (dockerd, debootstrap, unshare)"
    local tool
    for tool in dockerd docker docker-compose debootstrap unshare curl; do
        command -v "$tool" >/dev/null \
            || die "$tool not found (apt-get install docker.io docker-compose debootstrap curl)"
    done
    if [ -z "$postgres_image" ] || [ -z "$python_image" ]; then die "could not read the image names"; fi
    build_rootfs
    build_wheelhouse
    [ "${1:-}" = --prepare ] && { log "cache ready in $cache"; return 0; }
    log "entering a new network and mount namespace"
    exec unshare --net --mount --fork -- "$0" --inside
}

# On one line: bash has read all of it before anything runs, so editing the file meanwhile is safe.
main "$@"; exit $?
