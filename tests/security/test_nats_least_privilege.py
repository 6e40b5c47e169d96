"""Each NATS user gets only what its code uses: no stream changes, no one else's consumer or inbox.

A real nats-server runs the deployed config (deploy/nats/nats.conf with the users of
trainyard_shared.natsusers, one per test executor id), after the provision step as ``admin``. Each
attack is made with a service's own credentials through the nats-py call that would do it; the
server must refuse it (its ``Permissions Violation``), and ``admin`` then reads the stream or
consumer to show nothing changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamSource
from nats.js.errors import NotFoundError

from trainyard_contracts import Subjects
from trainyard_shared.natsserver import NatsServer
from trainyard_shared.testing.helpers import eventually

from ..deploy.natsconf import inbox_of, password_for, provisioned, secured_server

pytestmark = [pytest.mark.security, pytest.mark.nats_auth, pytest.mark.service]

S = Subjects("trainyard")
JOBS, EXEC, INTAKE = S.streams.jobs, S.streams.exec, S.streams.intake
REFUSAL_WAIT = 2.0  # a refused request gets no answer: how long a JetStream call waits for one


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with secured_server(tmp_path_factory.mktemp("nats-least-privilege") / "store") as srv:
        yield srv


class As:
    """One user's connection, with the permission violations the server reported to it."""

    def __init__(self, nc: Any, errors: list[str]) -> None:
        self.nc, self.errors = nc, errors
        self.js = nc.jetstream(timeout=REFUSAL_WAIT)

    def refused(self, subject: str) -> bool:
        return any("permissions violation" in e and subject.lower() in e for e in self.errors)


@contextlib.asynccontextmanager
async def connected(server: NatsServer, user: str) -> AsyncIterator[As]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        server.url,
        user=user,
        password=password_for(user),
        inbox_prefix=inbox_of(user),
        error_cb=on_error,
        allow_reconnect=False,
        max_reconnect_attempts=0,
    )
    try:
        yield As(nc, errors)
    finally:
        await nc.close()


async def attempt(conn: As, call: Any, subject: str) -> None:
    """Make the call; it must fail and the server must have named ``subject`` as refused."""
    with pytest.raises(Exception):  # noqa: B017 - a timeout or the violation, depending on timing
        await call
    await refusal(conn, subject)


async def refusal(conn: As, subject: str) -> None:
    """Wait until the server has reported ``subject`` refused to ``conn``."""

    async def reported() -> bool:
        return conn.refused(subject)

    await eventually(reported, 10, f"a permission violation for {subject} (errors: {conn.errors})")


@pytest.fixture
async def admin(server: NatsServer) -> AsyncIterator[As]:
    await provisioned(server)
    async with connected(server, "admin") as conn:
        yield conn


async def test_a_connection_without_credentials_is_refused(server: NatsServer):
    with pytest.raises((nats.errors.NoServersError, nats.errors.Error, OSError)):
        await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)


async def test_telemetry_cannot_change_the_jobs_stream(server, admin):
    before = (await admin.js.stream_info(JOBS)).config
    changed = before.evolve(max_msgs=1, max_age=1.0)
    async with connected(server, "telemetry") as telemetry:
        await attempt(telemetry, telemetry.js.update_stream(config=changed), f"$JS.API.STREAM.UPDATE.{JOBS}")
        await attempt(telemetry, telemetry.js.delete_stream(JOBS), f"$JS.API.STREAM.DELETE.{JOBS}")
    after = (await admin.js.stream_info(JOBS)).config
    assert (after.max_msgs, after.max_age) == (before.max_msgs, before.max_age)


async def test_telemetry_cannot_add_a_source_to_the_tokens_bucket(server, admin):
    """The attack of the finding: a source feeding the tokens bucket forges an admin token."""
    tokens = f"KV_{S.prefix}_tokens"
    config = (await admin.js.stream_info(tokens)).config
    sourced = config.evolve(sources=[StreamSource(name=S.streams.dlq)])
    async with connected(server, "telemetry") as telemetry:
        await attempt(
            telemetry, telemetry.js.update_stream(config=sourced), f"$JS.API.STREAM.UPDATE.{tokens}"
        )
        await attempt(
            telemetry,
            telemetry.js.add_stream(config=sourced.evolve(name="FORGED")),
            "$JS.API.STREAM.CREATE.FORGED",
        )
    assert not (await admin.js.stream_info(tokens)).config.sources


async def test_telemetry_cannot_limit_the_jobs_bucket_to_one_message(server, admin):
    bucket = f"KV_{S.buckets.jobs}"
    config = (await admin.js.stream_info(bucket)).config
    async with connected(server, "telemetry") as telemetry:
        await attempt(
            telemetry,
            telemetry.js.update_stream(config=config.evolve(max_msgs=1)),
            f"$JS.API.STREAM.UPDATE.{bucket}",
        )
    assert (await admin.js.stream_info(bucket)).config.max_msgs == -1


async def own_durable(server: NatsServer, user: str, stream: str, name: str, subject: str) -> None:
    """The durable consumer ``user``'s service creates (batches.Puller: name, durable, filter)."""
    async with connected(server, user) as owner:
        config = ConsumerConfig(
            name=name, durable_name=name, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT
        )
        await owner.js.add_consumer(stream, config=config)
        assert not owner.errors


OTHERS_DURABLES = [
    # (attacker, owner, stream, durable, filter)
    ("client", "scheduler", JOBS, "scheduler-job-requests", S.all_job_events),
    ("submission", "registry", JOBS, "registry-succeeded", S.job_event_kind("succeeded")),
    ("telemetry", "submission", INTAKE, "submission-intake", S.intake_submit),
    ("executor-exec-a", "executor-exec-b", EXEC, "executor-exec-b", S.exec_commands_of("exec-b")),
]


@pytest.mark.parametrize(
    ("attacker", "owner", "stream", "name", "subject"), OTHERS_DURABLES, ids=lambda v: str(v)
)
async def test_no_user_can_delete_change_or_drain_another_users_consumer(
    server, admin, attacker, owner, stream, name, subject
):
    await own_durable(server, owner, stream, name, subject)
    before = (await admin.js.consumer_info(stream, name)).config
    async with connected(server, attacker) as conn:
        await attempt(conn, conn.js.delete_consumer(stream, name), f"$JS.API.CONSUMER.DELETE.{stream}.{name}")
        # the same name: an update that would point the consumer elsewhere
        hijack = ConsumerConfig(name=name, durable_name=name, filter_subject=f"{S.prefix}.nothing")
        await attempt(
            conn, conn.js.add_consumer(stream, config=hijack), f"$JS.API.CONSUMER.CREATE.{stream}.{name}"
        )
        # the legacy create (no name in the subject) with the durable's name in the body
        legacy = ConsumerConfig(durable_name=name, filter_subject=f"{S.prefix}.nothing")
        with contextlib.suppress(Exception):
            await conn.js.add_consumer(stream, config=legacy)
        # pulling the owner's messages (unacked, each counts towards its max_deliver)
        await attempt(
            conn,
            conn.nc.request(
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", b'{"batch": 1}', timeout=REFUSAL_WAIT
            ),
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
        )
    after = (await admin.js.consumer_info(stream, name)).config
    assert after.filter_subject == before.filter_subject == subject
    assert after.durable_name == name


async def test_an_executor_can_neither_command_nor_read_another_executor(server, admin):
    await own_durable(server, "executor-exec-b", EXEC, "executor-exec-b", S.exec_commands_of("exec-b"))
    async with connected(server, "executor-exec-a") as a:
        # commands to B: only the scheduler sends them
        start_b = S.exec_command("exec-b", "start")
        await a.nc.publish(start_b, b"{}")
        await a.nc.flush()
        await refusal(a, start_b)
        # B's commands through a consumer of A's own name filtered on B's subjects
        spy = ConsumerConfig(name="executor-exec-a", durable_name="executor-exec-a", filter_subject=start_b)
        await attempt(
            a,
            a.js.add_consumer(EXEC, config=spy),
            f"$JS.API.CONSUMER.CREATE.{EXEC}.executor-exec-a.{start_b}",
        )
        # B's deliveries and replies on the wire: core subscriptions to B's subjects and inbox
        for subject in (f"{S.prefix}.exec.exec-b.>", "_INBOX.executor-exec-b.>", "_INBOX.>"):
            await a.nc.subscribe(subject)
            await a.nc.flush()
            await refusal(a, subject)
    with pytest.raises(NotFoundError):
        await admin.js.consumer_info(EXEC, "executor-exec-a")  # the spy consumer was never made
    # and A's own consumer, on its own commands, is allowed
    await own_durable(server, "executor-exec-a", EXEC, "executor-exec-a", S.exec_commands_of("exec-a"))


async def test_the_jobs_index_is_written_by_its_writers_and_read_by_its_readers(server, admin):
    """The scheduler writes an entry and removes the one a job left; the submission service reads
    (batched direct gets, the ordered read of oldest first, the built marker); the scheduler,
    telemetry and an executor read the live jobs' entries at start-up (liveread.py: they read
    every record otherwise), and an executor may not write it. No permission violation on the way."""
    from datetime import UTC, datetime

    from trainyard_contracts import JobSpec, JobState, lifecycle
    from trainyard_shared.jobindex import IndexQuery, JobIndex
    from trainyard_shared.liveread import live_job_ids

    spec = JobSpec(name="idx", command=["true"])
    record = lifecycle.new_record("idxperm0001", spec, datetime.now(UTC), "test")
    running = record.model_copy(update={"state": JobState.RUNNING})
    records = {record.job_id: running}

    async def read(job_id: str) -> Any:
        return records.get(job_id)

    async with connected(server, "scheduler") as scheduler, connected(server, "submission") as submission:
        writer = JobIndex(scheduler.nc, scheduler.js, S)
        await writer.enter(record)
        entered = await writer.enter(running)
        await writer.leave(record, entered)  # not waited for: the reader finds one entry

        reader = JobIndex(submission.nc, submission.js, S)

        async def one_entry() -> list[str] | None:
            ids = [e.job_id for e in await reader.select(IndexQuery(), 10)]
            return (
                ids
                if ids == [record.job_id] and not await reader.select(IndexQuery(state="submitted"), 10)
                else None
            )

        assert await eventually(one_entry, 10, "the entry of the state left removed") == [record.job_id]
        oldest = await reader.page(IndexQuery(oldest_first=True), read)
        assert [r.job_id for r in oldest] == [record.job_id]
        assert not await reader.built()
        assert not scheduler.errors and not submission.errors

    for reader_user in ("scheduler", "telemetry", "executor-exec-a"):
        async with connected(server, reader_user) as start_reader:
            index = JobIndex(start_reader.nc, start_reader.js, S)
            assert await live_job_ids(index) == {record.job_id}, reader_user
            assert not await index.built()
            assert not start_reader.errors, reader_user
    async with connected(server, "executor-exec-a") as executor:
        await attempt(
            executor, executor.js.publish(writer.subject("default", "running", "x"), b"{}"), "jobidx"
        )
