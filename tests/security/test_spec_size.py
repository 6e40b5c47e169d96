"""A spec is bounded so that every message built from it fits NATS' ``max_payload`` (issue 13).

Before: a spec with a 600 KB env passed the 1 MiB body limit, then its start command (the spec
twice) was over ``max_payload`` and the scheduler's planning pass failed on it forever while the
job held its capacity. Now the spec's JSON is at most ``MAX_SPEC_BYTES`` (256 KiB), refused with
the largest field named; the start command carries the spec once; and a start command that still
cannot be sent fails its job with the reason.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from trainyard_contracts import (
    AttemptInfo,
    JobState,
    JobSubmitted,
    Subjects,
    lifecycle,
    parse_job_event,
    validate_spec,
)
from trainyard_contracts._time import utcnow
from trainyard_contracts.commands import EXECUTOR_COMMAND_ADAPTER
from trainyard_contracts.spec import JobSpec
from trainyard_contracts.specsize import MAX_SPEC_BYTES
from trainyard_scheduler.startcommand import start_command
from trainyard_shared.publishing import CommandSender
from trainyard_shared.settings import CommonSettings
from trainyard_submission.app import create_app
from trainyard_submission.settings import SubmissionSettings

pytestmark = [pytest.mark.security]

MAX_PAYLOAD = 1024 * 1024  # nats-server's default
HEADERS_ROOM = 4096
TOKEN = "spec-size-token"


def spec_of_size(size: int) -> dict:
    """A spec whose JSON is ``size`` bytes (within a few), most of it in env, with every other
    field that can be large used as well: what the bound must cover."""
    base = {
        "name": "big",
        "queue": "default",
        "command": ["python", "-c", "print(1)"],
        "env": {"SECRET": "s3cr3t-value", "A": ""},
        "secret_env": ["SECRET"],
        "source": {"repo": "https://token@example.com/team/repo.git", "ref": "main", "commit": "a" * 40},
        "retries": {"limit": 100, "backoff": 1},
        "params": {f"p{i}": i for i in range(50)},
        "labels": {f"l{i}": "v" * 64 for i in range(50)},
        "outputs": {"model": "m", "path": "outputs"},
    }
    fill = size - len(JobSpec.model_validate(base).model_dump_json().encode())
    base["env"]["A"] = "x" * fill
    return base


def test_a_spec_over_the_bound_is_refused_naming_its_largest_field():
    with pytest.raises(ValueError) as refused:
        validate_spec(spec_of_size(600 * 1024))
    (error,) = refused.value.errors  # type: ignore[attr-defined]
    assert error.field == "env"
    assert "over the limit of 256 KiB" in error.message and "env is its largest field" in error.message


def test_the_largest_accepted_spec_fits_in_every_message_built_from_it():
    """Record (after 100 retries), submitted event, start command with and without the record
    carried along: each under max_payload with room for headers."""
    spec = validate_spec(spec_of_size(MAX_SPEC_BYTES))
    assert len(spec.model_dump_json().encode()) <= MAX_SPEC_BYTES
    now = utcnow()
    submitted = lifecycle.new_record("jobbig0001", spec, now, "api:team:abcdef012345")
    record = lifecycle.schedule(lifecycle.advance(submitted, JobState.QUEUED, now), "e1", now)
    attempts = [
        AttemptInfo(
            number=n,
            executor_id="executor-" + "e" * 50,
            scheduled_at=now,
            started_at=now,
            ended_at=now + timedelta(seconds=n),
            state=JobState.FAILED,
            exit_code=1,
            reason="process exited with status 1: " + "r" * 200,
        )
        for n in range(1, 102)
    ]
    record = record.model_copy(update={"attempt": 101, "attempts": attempts, "retries_used": 100})
    commands = CommandSender(broker=None, subjects=Subjects("trainyard"))  # type: ignore[arg-type]
    room = MAX_PAYLOAD - HEADERS_ROOM
    with_record = start_command(commands, record, "e1", None, {"record": record, "record_revision": 7}, room)
    without = start_command(commands, record, "e1", None, {}, room)
    assert with_record is not None and without is not None
    sizes = {
        "record": len(record.model_dump_json().encode()),
        "submitted": len(JobSubmitted(job_id="jobbig0001", spec=spec.redacted()).model_dump_json().encode()),
        "start with record": len(with_record.payload),
        "start": len(without.payload),
    }
    assert all(size <= room for size in sizes.values()), sizes
    # the spec travels once: the command with the record is not the spec twice
    assert sizes["start with record"] < sizes["record"] + 1024
    parsed = EXECUTOR_COMMAND_ADAPTER.validate_json(with_record.payload)
    assert parsed.spec is None and parsed.job_spec == spec  # type: ignore[union-attr]
    assert parse_job_event(JobSubmitted(job_id="j", spec=spec).model_dump_json().encode()).spec == spec


@pytest.mark.service
async def test_the_api_refuses_a_600_kb_env_with_a_field_error(nats_server, prefix, tmp_path):
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "d")
    app = create_app(common, SubmissionSettings(token=TOKEN))  # the default 1 MiB body limit
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            answer = await client.post(
                "/v1/jobs", json=spec_of_size(600 * 1024), headers={"Authorization": f"Bearer {TOKEN}"}
            )
            listed = await client.get("/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 422, answer.text[:500]
    errors = answer.json()["errors"]
    assert [e["field"] for e in errors] == ["env"]
    assert "256 KiB" in errors[0]["message"]
    assert listed.json()["jobs"] == []
