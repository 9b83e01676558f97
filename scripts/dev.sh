#!/usr/bin/env bash
# The whole app on this machine: PostgreSQL (a private cluster of this checkout's own, unless
# DATABASE_URL is set), migrations, the api and the web app. Ctrl-C stops all three.
# The cluster's folder: `scripts/pg_cluster.sh dev-dir` says where; `make clean` deletes it.
# Run through `make dev`, which creates .venv and installs the app first.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
API_PORT=${API_PORT:-8000}
WEB_PORT=${WEB_PORT:-8501}
PG_PORT=${DEV_PG_PORT:-54329}

pids=()
own_cluster=""
cleanup() {
    trap - INT TERM EXIT
    echo
    echo "stopping..."
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$own_cluster" ]; then scripts/pg_cluster.sh stop "$own_cluster" || true; fi
}
trap cleanup INT TERM EXIT

if [ -z "${DATABASE_URL:-}" ]; then
    own_cluster=$(scripts/pg_cluster.sh dev-dir)
    DATABASE_URL=$(scripts/pg_cluster.sh start "$own_cluster" "$PG_PORT")
    echo "PostgreSQL: private cluster in $own_cluster ($DATABASE_URL); make clean deletes it"
fi
export DATABASE_URL
export API_URL=${API_URL:-http://127.0.0.1:$API_PORT}

# The same entry commands the containers run (Dockerfile.api, Dockerfile.web, docker-compose.yml).
"$BIN/python" -m digit_predictor.db migrate --wait 60
export API_HOST=127.0.0.1 API_PORT
"$BIN/python" -m digit_predictor.api &
pids+=($!)
"$BIN/streamlit" run src/digit_predictor/web/app.py --server.port "$WEB_PORT" \
    --server.address 127.0.0.1 --server.headless true --browser.gatherUsageStats false &
pids+=($!)

echo
echo "  Digit Predictor is starting: open http://localhost:$WEB_PORT"
echo "  (api on $API_URL, docs at $API_URL/docs). Ctrl-C stops everything."
echo
# Stop everything as soon as one part dies, rather than leave a half-running app.
wait -n "${pids[@]}"
