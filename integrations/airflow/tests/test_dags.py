"""dag.test() on SQLite against the real embedded stack: the operators' whole path (submit,
check, defer, the trigger inline, execute_complete) as Airflow runs it."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.airflow


def _dag(dag_id: str):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag
    from conftest import DAGS

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def _task_states(run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _api(stack) -> httpx.Client:  # type: ignore[no-untyped-def]
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=30)


def test_a_deferrable_job_task_succeeds_with_the_jobs_log_and_link(stack, airflow_db):
    run = _dag("trainyard_job_succeeds").test()
    assert _task_states(run) == {"train": "success"}
    (ti,) = run.get_task_instances()
    result = ti.xcom_pull(task_ids="train")
    assert result["state"] == "succeeded" and result["exit_code"] == 0
    job_id = ti.xcom_pull(task_ids="train", key="trainyard_job_id")
    assert job_id == result["job_id"]
    assert ti.xcom_pull(task_ids="train", key="_link_TrainyardJobLink") == f"{stack.url}/ui/jobs/{job_id}"
    with _api(stack) as api:
        record = api.get(f"/v1/jobs/{job_id}").json()
        assert record["state"] == "succeeded"
        assert "hello from a trainyard job run by airflow" in api.get(f"/v1/jobs/{job_id}/logs").text


def test_a_failing_job_fails_the_task_naming_the_state_and_exit_code(stack, airflow_db, capfd):
    run = _dag("trainyard_job_fails").test()
    assert _task_states(run) == {"train": "failed"}
    assert str(run.state) == "failed"
    (ti,) = run.get_task_instances()
    job_id = ti.xcom_pull(task_ids="train", key="trainyard_job_id")
    # the task's log (dag.test() writes it to the console): the error names the state and exit code
    assert f"trainyard job {job_id} ended failed (exit_code=3" in "".join(capfd.readouterr())
    with _api(stack) as api:
        assert api.get(f"/v1/jobs/{job_id}").json()["state"] == "failed"


def test_a_pipeline_task_succeeds_and_fails_with_its_run(stack, airflow_db):
    dag = _dag("trainyard_pipeline")
    ok = dag.test()
    assert _task_states(ok) == {"pipeline": "success"}
    result = ok.get_task_instances()[0].xcom_pull(task_ids="pipeline")
    assert result["state"] == "succeeded"
    assert result["steps"] == {"prepare": "succeeded", "train": "succeeded"}

    failed = dag.test(run_conf={"code": 1})
    assert _task_states(failed) == {"pipeline": "failed"}
    ti = failed.get_task_instances()[0]
    run_id = ti.xcom_pull(task_ids="pipeline", key="trainyard_run_id")
    link = ti.xcom_pull(task_ids="pipeline", key="_link_TrainyardPipelineLink")
    assert link == f"{stack.url}/ui/jobs?label=trainyard.dev%2Fpipeline-run%3D{run_id}"
    with _api(stack) as api:
        run = api.get(f"/v1/pipelines/{run_id}").json()
    assert run["state"] == "failed" and run["steps"]["train"]["state"] == "failed"


@pytest.mark.parametrize("dag_id", ["trainyard_sensor", "trainyard_sensor_poke"])
def test_the_sensor_follows_a_job_another_system_submitted(stack, airflow_db, dag_id):
    spec = {"name": "elsewhere", "command": ["python3", "-c", "import sys, time; time.sleep(1); sys.exit(4)"],
            "resources": {"cpu": 0.1, "memory": "64Mi"}}  # fmt: skip
    with _api(stack) as api:
        failing = api.post("/v1/jobs", json=spec).json()["job_id"]
        spec["command"] = ["python3", "-c", "import time; time.sleep(1)"]
        succeeding = api.post("/v1/jobs", json=spec).json()["job_id"]
    run = _dag(dag_id).test(run_conf={"job_id": succeeding})
    assert _task_states(run) == {"wait": "success"}
    assert _dag(dag_id).test(run_conf={"job_id": failing}).get_task_instances()[0].state == "failed"


def test_a_spec_the_api_refuses_fails_the_task_naming_the_field(stack, airflow_db, capfd):
    run = _dag("trainyard_job_rejected").test()
    assert _task_states(run) == {"train": "failed"}
    assert "422 invalid job spec: resources.cpu: Input should be greater than 0" in "".join(
        capfd.readouterr()
    )


def test_the_copy_paste_example_of_docs_airflow_md_runs(stack, airflow_db):
    run = _dag("train_digits").test()
    assert _task_states(run) == {"train": "success", "evaluate": "success"}
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    job_id = tis["train"].xcom_pull(task_ids="train")["job_id"]
    run_id = tis["evaluate"].xcom_pull(task_ids="evaluate", key="trainyard_run_id")
    with _api(stack) as api:
        score = api.get(f"/v1/pipelines/{run_id}").json()["steps"]["score"]["jobs"]["0"]["job_id"]
        assert f"scoring the model of job {job_id}" in api.get(f"/v1/jobs/{score}/logs").text
