"""scripts/asyncapi.py (make asyncapi): every batch consumer of every service is in its AsyncAPI
document, as faststream would have written it for a subscriber, with its message schema.

The batch consumers are ``Puller``s, not faststream subscribers: without the generator's own step
a regenerated document silently loses them."""

from __future__ import annotations

import importlib
import importlib.util
import json
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "trainyard_asyncapi_script", ROOT / "scripts" / "asyncapi.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def documents() -> dict[str, dict[str, Any]]:
    return generator().service_documents()


def receive(doc: dict[str, Any], operation: str) -> tuple[dict[str, Any], str]:
    """The channel of a receive operation and the schema name of its message's payload."""
    op = doc["operations"][operation]
    assert op["action"] == "receive"
    channel = doc["channels"][op["channel"]["$ref"].rsplit("/", 1)[-1]]
    message = doc["components"]["messages"][
        channel["messages"]["SubscribeMessage"]["$ref"].rsplit("/", 1)[-1]
    ]
    payload = message["payload"]["$ref"].rsplit("/", 1)[-1]
    for server in channel["servers"]:
        assert server["$ref"].rsplit("/", 1)[-1] in doc["servers"]
    return channel, payload


# (service, operation, subject, payload schema, the payload's union members if it is one)
BATCH_CONSUMERS = [
    (
        "executor",
        "executor/commands",
        "trainyard.exec.*.*",
        "executor.commands:Message:Payload",
        {"StartAttempt", "CancelAttempt"},
    ),
    ("registry", "registry/succeeded", "trainyard.job.*.succeeded", "JobSucceeded", None),
    (
        "scheduler",
        "scheduler/job-requests/cancel_requested",
        "trainyard.job.*.cancel_requested",
        "JobCancelRequested",
        None,
    ),
    (
        "telemetry",
        "telemetry/job-events",
        "trainyard.job.>",
        "telemetry.job-events:Message:Payload",
        {"JobSubmitted", "JobSucceeded", "JobRequeued", "ModelRegistered"},
    ),
    (
        "submission",
        "submission/intake/submit",
        "trainyard.intake.submit",
        "submission.intake.submit:Message:Payload",
        None,
    ),
    (
        "submission",
        "submission/intake/workflow",
        "trainyard.intake.workflow",
        "submission.intake.workflow:Message:Payload",
        None,
    ),
]


@pytest.mark.parametrize(("service", "operation", "subject", "payload", "members"), BATCH_CONSUMERS)
def test_each_batch_consumer_is_a_receive_operation_with_its_message_schema(
    documents: dict[str, dict[str, Any]],
    service: str,
    operation: str,
    subject: str,
    payload: str,
    members: set[str] | None,
) -> None:
    doc = documents[service]
    channel, got = receive(doc, operation)
    assert fnmatch(channel["address"], subject), channel["address"]
    assert channel["bindings"]["nats"]["subject"] == channel["address"]
    assert channel["description"]
    assert got == payload
    schemas = doc["components"]["schemas"]
    assert got in schemas
    if members is not None:
        named = {ref["$ref"].rsplit("/", 1)[-1] for ref in schemas[got]["oneOf"]}
        assert members <= named
        assert all(name in schemas for name in named)  # every member's own schema is there too


def test_the_faststream_subscribers_stay_as_they_were(documents: dict[str, dict[str, Any]]) -> None:
    """Adding the batch consumers changes nothing faststream wrote itself."""
    plain = (
        importlib.import_module("trainyard_scheduler.app")
        .create_app()
        .schema.to_specification()
        .to_jsonable()
    )
    doc = documents["scheduler"]
    for section in ("channels", "operations"):
        for key, value in plain[section].items():
            assert doc[section][key] == value
    for key, value in plain["components"]["schemas"].items():
        assert doc["components"]["schemas"][key] == value
    assert json.dumps(plain["servers"], sort_keys=True) == json.dumps(doc["servers"], sort_keys=True)


def test_a_batch_consumer_without_a_known_message_model_stops_the_generator() -> None:
    script = generator()
    with pytest.raises(SystemExit, match="no message model"):
        script.payload_of("reporting-events", "trainyard.job.>", script._payloads())
    with pytest.raises(SystemExit, match="no message model"):
        script.payload_of("scheduler-job-requests", "trainyard.job.*.running", script._payloads())
