#!/usr/bin/env bash
# The main job, end to end: train, export, verify, serve, call, scrape, load-test, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MODELS=${MODELS:-models}
HOST=127.0.0.1
GRPC_PORT=${GRPC_PORT:-8001}
METRICS_PORT=${METRICS_PORT:-8002}
LOG=$(mktemp -t d2lserve-demo.XXXXXX.log)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/6 train and export linear, softmax and mlp into $MODELS/"
$PY -m training --model all --out "$MODELS"

step "2/6 verify every version in the repository"
$PY -m model_repository.verify "$MODELS"

step "3/6 start the server on $HOST:$GRPC_PORT (metrics on :$METRICS_PORT, log in $LOG)"
$PY -m serving --model-repository "$MODELS" --host "$HOST" --grpc-port "$GRPC_PORT" \
  --metrics-port "$METRICS_PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if $PY -m serving.healthcheck --target "$HOST:$GRPC_PORT" --timeout 1 >/dev/null 2>&1; then break; fi
  if ! kill -0 $SERVER 2>/dev/null; then echo "server exited; its log:"; cat "$LOG"; exit 1; fi
  sleep 0.2
done
$PY -m serving.healthcheck --target "$HOST:$GRPC_PORT"

step "4/6 call Predict on a few test images and the regression model"
$PY scripts/demo_call.py --target "$HOST:$GRPC_PORT"

step "5/6 load test: 5 s, 16 concurrent single-row requests to mlp"
$PY -m serving.loadtest --target "$HOST:$GRPC_PORT" --model mlp --concurrency 16 \
  --duration 5 --warmup 1 --metrics-url "http://$HOST:$METRICS_PORT/metrics"

step "6/6 scrape the metrics endpoint (a few of the series)"
$PY - "$HOST" "$METRICS_PORT" <<'PYEOF'
import sys
import urllib.request

host, port = sys.argv[1], sys.argv[2]
text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
wanted = ("d2lserve_requests_total{", "d2lserve_executions_total{", "d2lserve_model_state{")
for line in text.splitlines():
    if line.startswith(wanted) and not line.rstrip().endswith(" 0.0"):
        print(line)
PYEOF

step "stopping the server (SIGTERM, graceful)"
kill -TERM $SERVER
wait $SERVER && echo "server exited cleanly"
trap - EXIT
