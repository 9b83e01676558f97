#!/usr/bin/env bash
# Prepare a fresh Debian (12+) or Ubuntu (22.04+) VPS for Digit Predictor. Run once, as root:
#
#   scp scripts/provision_vps.sh root@VPS: && ssh root@VPS bash provision_vps.sh [REPO_URL]
#
# Installs Docker Engine with the compose plugin from Docker's apt repository, a firewall (ufw)
# that lets in only SSH, HTTP and HTTPS, automatic security updates, cron for the daily backup,
# and log rotation for containers. With REPO_URL it also clones the app into APP_DIR
# (default /opt/digit-predictor). Then: edit APP_DIR/.env, run APP_DIR/scripts/deploy.sh.
#
# Environment: SSH_PORT (default 22: the port sshd listens on, kept open), APP_DIR, DEPLOY_USER
# (an existing user to add to the docker group: docker access is root access).
# Safe to run again.
set -euo pipefail

ssh_port=${SSH_PORT:-22}
app_dir=${APP_DIR:-/opt/digit-predictor}
repo_url=${1:-}

[ "$(id -u)" = 0 ] || { echo "run as root (sudo bash $0)" >&2; exit 1; }
# shellcheck source=/dev/null
. /etc/os-release
case "${ID:-}" in
debian | ubuntu) ;;
*) echo "unsupported system: ${PRETTY_NAME:-unknown} (Debian or Ubuntu only)" >&2; exit 1 ;;
esac
case "$ssh_port" in '' | *[!0-9]*) echo "SSH_PORT must be a number" >&2; exit 1 ;; esac

export DEBIAN_FRONTEND=noninteractive
log() { printf '==> %s\n' "$*"; }

log "base packages"
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    ca-certificates curl gnupg git ufw cron unattended-upgrades >/dev/null

log "Docker Engine and the compose plugin (Docker's apt repository for $ID $VERSION_CODENAME)"
install -m 0755 -d /etc/apt/keyrings
if [ ! -s /etc/apt/keyrings/docker.asc ]; then
    curl -fsSL "https://download.docker.com/linux/$ID/gpg" -o /etc/apt/keyrings/docker.asc
    chmod a+r /etc/apt/keyrings/docker.asc
fi
echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc]" \
    "https://download.docker.com/linux/$ID $VERSION_CODENAME stable" \
    >/etc/apt/sources.list.d/docker.list
apt-get update -qq
apt-get install -y -qq docker-ce docker-ce-cli containerd.io docker-buildx-plugin \
    docker-compose-plugin >/dev/null

# Container logs would otherwise grow without bound.
if [ ! -s /etc/docker/daemon.json ]; then
    mkdir -p /etc/docker
    cat >/etc/docker/daemon.json <<'EOF'
{
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "5"}
}
EOF
fi
systemctl enable --now docker >/dev/null
systemctl restart docker
systemctl enable --now cron >/dev/null

log "firewall: only SSH ($ssh_port/tcp), HTTP and HTTPS in"
# Allow SSH before enabling, so the running session survives. Note that ports Docker publishes
# skip ufw: docker-compose.yml publishes only 80/443 (proxy) and 8501 on 127.0.0.1.
ufw --force reset >/dev/null
ufw default deny incoming >/dev/null
ufw default allow outgoing >/dev/null
ufw limit "$ssh_port/tcp" comment ssh >/dev/null
ufw allow 80/tcp comment http >/dev/null
ufw allow 443/tcp comment https >/dev/null
ufw allow 443/udp comment http3 >/dev/null
ufw --force enable >/dev/null
ufw status verbose

log "automatic security updates"
cat >/etc/apt/apt.conf.d/20auto-upgrades <<'EOF'
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
EOF

if [ -n "${DEPLOY_USER:-}" ]; then
    log "adding $DEPLOY_USER to the docker group"
    usermod -aG docker "$DEPLOY_USER"
fi

if [ -n "$repo_url" ]; then
    if [ -d "$app_dir/.git" ]; then
        log "$app_dir already holds a checkout"
    else
        log "cloning $repo_url into $app_dir"
        git clone "$repo_url" "$app_dir"
    fi
fi

docker --version
docker compose version
log "done. Next: cd $app_dir && scripts/deploy.sh (it creates .env with random secrets first;"
log "set DOMAIN and ACME_EMAIL there, point DOMAIN's DNS at this server, run it again)"
