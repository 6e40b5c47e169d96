#!/usr/bin/env bash
# make demo: the embedded stack on a fresh data dir, the digits example with --wait, its model.
# make demo-sweep (scripts/demo.sh sweep): the same stack, a sweep of the RL example (CEM on
# CartPole), its trial table and the best trial's registered model.
# make demo-pipeline (scripts/demo.sh pipeline): the same stack, examples/pipelines/retrain.yaml
# with --wait, its steps, the version it registered, promoted to production if it beats the holder.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${TRAINYARD_DEMO_DIR:-.trainyard-demo}
API_PORT=${TRAINYARD_DEMO_API_PORT:-8700}
NATS_PORT=${TRAINYARD_DEMO_NATS_PORT:-4250}
[[ "$DATA" == /* ]] || DATA_ABS="$PWD/$DATA"
export TRAINYARD_URL="http://127.0.0.1:${API_PORT}" TRAINYARD_DATA_DIR="${DATA_ABS:-$DATA}"
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

if [[ "${1:-digits}" == sweep ]]; then
  export COLUMNS=${COLUMNS:-160}   # the trial table's columns, also in a log without a terminal
  sweep_file=examples/rl/cem/sweep.yaml
  if [[ "${RL:-}" == tfagents ]]; then sweep_file=examples/rl/cartpole/sweep.yaml; fi
  echo "== running the sweep $sweep_file (TPE, 2 trials at once, ASHA pruning)"
  sweep_id=$($RUN trainyard sweep run "$sweep_file" --wait -o name) || {
    echo "the sweep did not succeed"; $RUN trainyard sweep list; exit 1; }
  echo "== trials of sweep $sweep_id, best objective first"
  $RUN trainyard sweep status "$sweep_id"
  echo "== the best trial and its registered model"
  $RUN trainyard sweep best "$sweep_id"
elif [[ "${1:-digits}" == pipeline ]]; then
  echo "== running examples/pipelines/retrain.yaml (prepare -> train, an array of 3 -> evaluate -> register -> announce)"
  if ! $RUN trainyard pipeline run examples/pipelines/retrain.yaml --wait -o json >"$DATA/retrain.json"; then
    cat "$DATA/retrain.json"; echo "the pipeline did not succeed"; exit 1
  fi
  field() { $RUN python -c 'import json, sys; d = json.load(open(sys.argv[1]))
for key in sys.argv[2:]: d = d[key]
print(d)' "$@"; }
  run_id=$(field "$DATA/retrain.json" run_id)
  echo "== the run's steps"
  $RUN trainyard pipeline status "$run_id"
  $RUN trainyard status "$(field "$DATA/retrain.json" steps register jobs 0 job_id)" -o json >"$DATA/register.json"
  version=$(field "$DATA/register.json" model version)
  echo "== the chosen model: digits-classifier version $version (C=$(field "$DATA/register.json" outputs C), accuracy $(field "$DATA/register.json" outputs accuracy))"
  $RUN trainyard logs "$(field "$DATA/retrain.json" steps announce jobs 0 job_id)" | grep "^registered digits-classifier" || true
  echo "== promoting it to production if it beats the current holder"
  $RUN trainyard models promote digits-classifier "$version" --alias production --if-better accuracy
  echo "== registered models"
  $RUN trainyard models digits-classifier
else
  echo "== submitting examples/digits/job.yaml"
  $RUN trainyard submit examples/digits/job.yaml --wait

  echo "== registered models"
  $RUN trainyard models digits-classifier
fi
echo "== demo finished in $(( $(date +%s) - start )) s"
