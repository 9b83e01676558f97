#!/usr/bin/env bash
# Install the Debian packages a role needs, only those missing (apt-get; sudo when not root).
#   scripts/system_deps.sh dev    PostgreSQL server binaries, python3-venv
#   scripts/system_deps.sh test   the same, plus Chromium for the browser tests, and
#                                 docker-compose (validates compose files without an engine) and
#                                 shellcheck for the deployment checks
set -euo pipefail
role=${1:-dev}

need=()
dpkg -s postgresql >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    || need+=(postgresql)
python3 -c "import ensurepip, venv" 2>/dev/null || need+=(python3-venv)
if [ "$role" = test ]; then
    [ -x /usr/bin/chromium ] || need+=(chromium)
    command -v docker-compose >/dev/null || need+=(docker-compose)
    command -v shellcheck >/dev/null || need+=(shellcheck)
fi
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${need[*]}"
sudo=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "run as root or install: ${need[*]}" >&2; exit 1; }
    sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
