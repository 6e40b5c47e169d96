#!/usr/bin/env bash
# The provider's own venv (Airflow 3.3 pins FastAPI below the services' version, so it cannot share
# the workspace's): built from the pinned requirements.txt, rebuilt when that file changes; the
# provider itself installed editable from this checkout on every call (no dependencies: seconds).
#   bash integrations/airflow/venv.sh VENV_DIR        (make test-airflow calls it)
set -euo pipefail
venv=${1:?usage: venv.sh VENV_DIR}
here=$(cd "$(dirname "$0")" && pwd)
uv=${UV:-python3 -m uv}
stamp="$venv/.trainyard-requirements.sha256"
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "== the Airflow venv: $venv (apache-airflow from $here/requirements.txt, ~300 MB)"
    rm -rf "$venv"
    $uv venv -q --python 3.11 "$venv"
    $uv pip sync -q --python "$venv/bin/python" "$here/requirements.txt"
    echo "$want" >"$stamp"
fi
$uv pip install -q --python "$venv/bin/python" --no-deps -e "$here"
