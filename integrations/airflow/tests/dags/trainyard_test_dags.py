"""DAGs the provider's tests run with dag.test() (Airflow 3.3 wants them in the dags folder)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Asset, AssetWatcher

from trainyard_airflow.operators import TrainyardJobOperator, TrainyardPipelineOperator
from trainyard_airflow.sensors import TrainyardJobSensor
from trainyard_airflow.triggers import TrainyardModelRegisteredTrigger

START = datetime(2026, 1, 1)
SMALL = {"cpu": 0.1, "memory": "64Mi"}


def _job(name: str, code: str) -> dict[str, object]:
    return {"name": name, "command": ["python3", "-c", code], "resources": SMALL}


with DAG("trainyard_job_succeeds", start_date=START, schedule=None, catchup=False):
    TrainyardJobOperator(
        task_id="train",
        spec=_job("airflow-ok", "print('hello from a trainyard job run by airflow')"),
        poll_interval=1,
    )

with DAG("trainyard_job_fails", start_date=START, schedule=None, catchup=False):
    TrainyardJobOperator(
        task_id="train",
        spec=_job("airflow-fails", "import sys; print('about to fail'); sys.exit(3)"),
        poll_interval=1,
    )

# not deferrable: the worker follows the job (what SIGTERM, i.e. "mark failed", interrupts)
with DAG("trainyard_job_long_on_worker", start_date=START, schedule=None, catchup=False):
    TrainyardJobOperator(
        task_id="train",
        spec=_job("airflow-long", "import time; print('started', flush=True); time.sleep(600)"),
        deferrable=False,
        poll_interval=1,
    )

with DAG("trainyard_pipeline", start_date=START, schedule=None, catchup=False):
    TrainyardPipelineOperator(
        task_id="pipeline",
        pipeline={
            "name": "airflow-two-steps",
            "params": {"code": 0},
            "steps": [
                {"name": "prepare", "job": _job("prepare", "print('prepared')")},
                {
                    "name": "train",
                    "depends": ["prepare"],
                    "job": _job("train", "import sys; sys.exit(${{ params.code }})"),
                },
            ],
        },
        pipeline_params={"code": "{{ dag_run.conf.get('code', 0) }}"},
        poll_interval=1,
    )

with DAG("trainyard_sensor", start_date=START, schedule=None, catchup=False):
    TrainyardJobSensor(task_id="wait", job_id="{{ dag_run.conf['job_id'] }}", poke_interval=1, timeout=300)

with DAG("trainyard_sensor_poke", start_date=START, schedule=None, catchup=False):
    TrainyardJobSensor(
        task_id="wait", job_id="{{ dag_run.conf['job_id'] }}", deferrable=False, poke_interval=1, timeout=300
    )

with DAG("trainyard_job_rejected", start_date=START, schedule=None, catchup=False):
    TrainyardJobOperator(task_id="train", spec={"name": "bad", "command": ["true"], "resources": {"cpu": -1}})

# a DAG run per new version of a model: the triggerer runs the watcher (test_asset_watcher.py)
ASSET_MODEL = "airflow-asset-model"
new_model = Asset(
    "trainyard-model-airflow-asset-model",
    uri=f"trainyard://models/{ASSET_MODEL}",
    watchers=[
        AssetWatcher(
            name="model_registered",
            trigger=TrainyardModelRegisteredTrigger(ASSET_MODEL, poll_interval=0.5, after_version=0),
        )
    ],
)

with DAG("trainyard_on_new_model", start_date=START, schedule=[new_model], catchup=False):
    TrainyardJobSensor(
        task_id="made_by",
        job_id="{{ (triggering_asset_events.values() | first | first).extra['payload']['job_id'] }}",
    )
