"""A trigger on the embedded stack: `trainyard up` with TRAINYARD_TRIGGER_SUBJECTS=datasets.>,
`trainyard trigger create examples/pipelines/on-digits-published.yaml`, then another system
publishes `datasets.digits.published` with plain nats-py and the pipeline runs with the event's
values."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats
import pytest

from trainyard_client.uptest import Up, free_block

from .test_pipeline_stack import trainyard

pytestmark = [pytest.mark.stack, pytest.mark.workflow, pytest.mark.local, pytest.mark.timeout(900)]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "on-digits-published.yaml"


async def publish(up: Up, subject: str, event: dict) -> None:
    """Another system's plain publish (no JetStream); the stack's operator user stands in for the
    NATS user an operator gives that system."""
    password = (up.data / "nats-auth" / "admin.password").read_text().strip()
    nc = await nats.connect(f"nats://127.0.0.1:{up.nats_port}", user="admin", password=password)
    await nc.publish(subject, json.dumps(event).encode())
    await nc.flush()
    await nc.close()


def test_an_event_from_another_system_runs_the_example_trigger_on_the_stack(tmp_path):
    document = EXAMPLE.read_text().replace("debounce_seconds: 30", "debounce_seconds: 0")
    trigger_file = tmp_path / "trigger.yaml"
    trigger_file.write_text(document)
    base = free_block(7)
    up = Up(tmp_path / "data", base, base + 6, env={"TRAINYARD_TRIGGER_SUBJECTS": "datasets.>"}).start()
    try:
        created = trainyard(up, "trigger", "create", str(trigger_file), "-o", "json")
        assert created.returncode == 0, created.stdout + created.stderr
        asyncio.run(publish(up, "datasets.digits.published", {"kind": "full", "version": "v7", "rows": 1797}))
        deadline = time.monotonic() + 240
        run = None
        while time.monotonic() < deadline:
            shown = json.loads(trainyard(up, "trigger", "get", "retrain-on-digits", "-o", "json").stdout)
            if shown["fired"] == 1 and shown["last_run_id"]:
                status = trainyard(up, "pipeline", "status", shown["last_run_id"], "-o", "json")
                run = json.loads(status.stdout)
                if run["state"] != "running":
                    break
            time.sleep(0.5)
        assert run is not None and run["state"] == "succeeded", run
        assert run["spec"]["params"] == {"version": "v7", "rows": 1797}
    finally:
        up.signal()
        up.wait(120)
