"""The event trigger against the real stack: a model version registered by the registry (MLflow
on SQLite in the embedded stack) becomes one event, with the version, job and metrics."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from trainyard_airflow.triggers import TrainyardModelRegisteredTrigger

pytestmark = pytest.mark.airflow

WRITE_MODEL = (
    "import os, pathlib; out = pathlib.Path(os.environ['TRAINYARD_OUTPUT_DIR']); "
    "out.mkdir(parents=True, exist_ok=True); (out / 'model.txt').write_text('w = 1'); "
    """(out / 'metrics.json').write_text('{"accuracy": 0.75}')"""
)


def _register(stack, model: str) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """Run a job that writes a model; its job id and the version the registry gave it."""
    spec = {"name": "writes-a-model", "command": ["python3", "-c", WRITE_MODEL],
            "resources": {"cpu": 0.1, "memory": "64Mi"}, "outputs": {"model": model}}  # fmt: skip
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.token}"}) as api:
        job_id = api.post("/v1/jobs", json=spec).json()["job_id"]
        deadline = time.monotonic() + 180
        while not (record := api.get(f"/v1/jobs/{job_id}").json()).get("model"):
            assert record["state"] in {"submitted", "queued", "scheduled", "running", "succeeded"}, record
            assert time.monotonic() < deadline, f"no model version registered for {job_id}: {record}"
            time.sleep(0.2)
    return job_id, int(record["model"]["version"])


async def test_each_new_version_is_one_event_and_what_existed_before_is_history(stack, capfd):
    model = f"airflow-{uuid.uuid4().hex[:8]}"
    _, first = await asyncio.to_thread(_register, stack, model)
    trigger = TrainyardModelRegisteredTrigger(model, poll_interval=0.3)
    events: list[dict[str, object]] = []

    async def collect() -> None:
        async for event in trigger.run():
            events.append(event.payload)

    watching = asyncio.create_task(collect())
    try:
        seen = ""
        deadline = time.monotonic() + 60
        while f"model {model}: versions above {first} fire" not in seen:  # its first listing
            assert time.monotonic() < deadline, seen[-2000:]
            await asyncio.sleep(0.1)
            seen += "".join(capfd.readouterr())
        job_id, second = await asyncio.to_thread(_register, stack, model)
        deadline = time.monotonic() + 60
        while not events:
            assert time.monotonic() < deadline, "no event for the new version"
            await asyncio.sleep(0.1)
    finally:
        watching.cancel()
    assert second == first + 1
    (event,) = events
    assert event["name"] == model and event["version"] == second and event["job_id"] == job_id
    assert event["metrics"] == {"accuracy": 0.75}
