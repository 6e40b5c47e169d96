#!/usr/bin/env bash
# make demo: the embedded stack on a fresh data dir, the digits example with --wait, its model.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TRAINYARD_DEMO_DIR:-.trainyard-demo}
API_PORT=${TRAINYARD_DEMO_API_PORT:-8700}
NATS_PORT=${TRAINYARD_DEMO_NATS_PORT:-4250}
export TRAINYARD_URL="http://127.0.0.1:${API_PORT}" TRAINYARD_DATA_DIR="$PWD/$DATA"
RUN="${UV:-uv} run --frozen"
start=$(date +%s)

mkdir -p "$DATA"
echo "== starting the embedded stack (data in $DATA, logs in $DATA/logs)"
$RUN trainyard up --data-dir "$DATA" --api-port "$API_PORT" --nats-port "$NATS_PORT" >"$DATA/up.log" 2>&1 &
UP_PID=$!
stop_stack() {
  if kill -0 "$UP_PID" 2>/dev/null; then
    echo "== stopping the stack"
    kill -TERM "$UP_PID" 2>/dev/null || true
    wait "$UP_PID" 2>/dev/null || true
  fi
}
trap stop_stack EXIT

deadline=$(( $(date +%s) + 120 ))
until grep -q "Trainyard is up" "$DATA/up.log" 2>/dev/null; do
  if ! kill -0 "$UP_PID" 2>/dev/null; then echo "the stack did not start:"; cat "$DATA/up.log"; exit 1; fi
  if (( $(date +%s) > deadline )); then echo "the stack did not start in 120 s:"; cat "$DATA/up.log"; exit 1; fi
  sleep 0.5
done
cat "$DATA/up.log"

echo "== submitting examples/digits/job.yaml"
$RUN trainyard submit examples/digits/job.yaml --wait

echo "== registered models"
$RUN trainyard models digits-classifier
echo "== demo finished in $(( $(date +%s) - start )) s"
