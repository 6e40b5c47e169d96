"""Messages written by an older schema version still parse with today's models.

Services are upgraded one at a time, so for a while a new reader meets what an old writer wrote:
events in the jobs stream (kept 30 days), records in the KV buckets, commands in flight. Each file in
``fixtures/v<N>/`` is a message exactly as version N wrote it; these fixtures are frozen (never
regenerated from the current models, which would defeat the point). See docs/deploy.md,
"Contract compatibility", for adding a ``v2`` directory when a contract changes.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from trainyard_contracts import (
    EXECUTOR_COMMAND_ADAPTER,
    JOB_EVENT_ADAPTER,
    ExecutorHeartbeat,
    IntakeReply,
    JobEvent,
    JobRecord,
    LogChunk,
    ModelVersionRecord,
)

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures"
VERSIONS = sorted(p for p in FIXTURES.iterdir() if p.is_dir() and p.name.startswith("v"))

# fields a later version dropped on purpose, per fixture version: {"v1": {"event-failed": {"reason"}}}.
# Empty today: nothing written by v1 is lost when read back.
DROPPED_ON_PURPOSE: dict[str, dict[str, set[str]]] = {}

Parser = Callable[[bytes], BaseModel]


def parser_for(name: str) -> Parser:
    """Which model reads a fixture, from its file name."""
    if name.startswith("event-"):
        return JOB_EVENT_ADAPTER.validate_json
    if name.startswith("command-"):
        return EXECUTOR_COMMAND_ADAPTER.validate_json
    models: dict[str, type[BaseModel]] = {
        "job-record": JobRecord,
        "executor-heartbeat": ExecutorHeartbeat,
        "model-version-record": ModelVersionRecord,
        "intake-reply": IntakeReply,
        "log-chunk": LogChunk,
    }
    for stem, model in models.items():
        if name.startswith(stem):
            return model.model_validate_json
    raise AssertionError(f"fixture {name}: no model for this name; extend parser_for()")


def fixtures() -> list[Any]:
    return [
        pytest.param(path, id=f"{version.name}/{path.stem}")
        for version in VERSIONS
        for path in sorted(version.glob("*.json"))
    ]


def lost_fields(written: Any, read: Any, path: str = "") -> list[str]:
    """Paths of values the writer wrote that the reader no longer gives back unchanged."""
    if isinstance(written, dict):
        if not isinstance(read, dict):
            return [path or "."]
        out: list[str] = []
        for key, value in written.items():
            where = f"{path}.{key}" if path else key
            out += lost_fields(value, read[key], where) if key in read else [where]
        return out
    if isinstance(written, list):
        if not isinstance(read, list) or len(read) != len(written):
            return [path]
        return [
            p
            for i, (w, r) in enumerate(zip(written, read, strict=True))
            for p in lost_fields(w, r, f"{path}[{i}]")
        ]
    if isinstance(written, str) and isinstance(read, str) and written.endswith("Z"):
        # a timestamp may come back as +00:00 or Z: compare the instants
        from datetime import datetime

        try:
            return [] if datetime.fromisoformat(written) == datetime.fromisoformat(read) else [path]
        except ValueError:
            pass
    return [] if written == read else [path]


def test_there_are_fixtures_for_every_version_directory():
    assert VERSIONS, "no fixtures/v<N> directory"
    for version in VERSIONS:
        assert list(version.glob("*.json")), f"{version} holds no fixture"


@pytest.mark.parametrize("path", fixtures())
def test_a_message_written_by_an_older_version_still_parses(path: Path):
    model = parser_for(path.stem)(path.read_bytes())
    assert isinstance(model, BaseModel)


@pytest.mark.parametrize("path", fixtures())
def test_nothing_an_older_writer_wrote_is_lost_when_read_back(path: Path):
    """A renamed field would parse (extra fields are ignored) yet lose data: this catches it."""
    written = json.loads(path.read_bytes())
    read = json.loads(parser_for(path.stem)(path.read_bytes()).model_dump_json())
    allowed = DROPPED_ON_PURPOSE.get(path.parent.name, {}).get(path.stem, set())
    lost = [field for field in lost_fields(written, read) if field.split(".")[0] not in allowed]
    assert not lost, f"{path.parent.name}/{path.name}: fields lost or changed when read: {lost}"


def test_every_job_event_type_has_a_fixture_in_the_newest_version():
    """A new event type needs a fixture, so the next version's readers are tested against it."""
    union = typing.get_args(typing.get_args(JobEvent)[0])
    types = {model.model_fields["type"].default for model in union}
    newest = VERSIONS[-1]
    have = {p.stem.removeprefix("event-") for p in newest.glob("event-*.json")}
    assert types <= have, f"event types without a fixture in {newest.name}: {sorted(types - have)}"


@pytest.mark.parametrize("path", [p for v in VERSIONS for p in sorted(v.glob("event-*.json"))], ids=str)
def test_an_event_fixture_declares_the_schema_version_of_its_directory(path: Path):
    data = json.loads(path.read_bytes())
    assert f"v{data['schema_version']}" == path.parent.name
    assert path.stem == f"event-{data['type']}"


def test_the_compat_check_catches_a_renamed_field():
    """The guard itself: a field the reader does not know is reported as lost."""
    assert lost_fields({"reason": "x", "a": {"b": 1}}, {"why": "x", "a": {"b": 2}}) == ["reason", "a.b"]
