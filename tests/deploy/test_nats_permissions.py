"""Each service's NATS user may publish and subscribe only where that service's code does.

A real nats-server runs deploy/nats/nats.conf (the file docker-compose mounts; the Kubernetes config
includes the same generated auth.conf). Each case connects as one user and publishes or subscribes on
one subject: refused cases must be refused by the server (its ``Permissions Violation`` error), and
allowed ones must reach the stream (the JetStream ack proves it was stored).
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.errors import NoServersError

from trainyard_contracts import JobEvent, Subjects
from trainyard_shared.testing.helpers import eventually

from .natsconf import NATS_DIR, ROOT, inbox_of, natsauth, password_for, provisioned, secured_server

pytestmark = pytest.mark.nats_auth

S = Subjects("trainyard")
JOB = "j-perm-0001"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with secured_server(tmp_path_factory.mktemp("nats-auth") / "store") as srv:
        yield srv


class Connection:
    """One user's connection, remembering the permission errors the server sent it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.refused = asyncio.Event()
        self.nc: typing.Any = None

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc).lower())  # nats-py lower-cases the server's error text
        if "permissions violation" in self.errors[-1]:
            self.refused.set()

    async def refused_on(self, subject: str, timeout: float = 10.0) -> bool:
        """True once the server has refused ``subject``; False if it has not within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._names(subject):
                return True
            self.refused.clear()
            try:
                await asyncio.wait_for(self.refused.wait(), deadline - loop.time())
            except TimeoutError:
                break
        return self._names(subject)

    def _names(self, subject: str) -> bool:
        return any(f'"{subject.lower()}"' in e and "permissions violation" in e for e in self.errors)


async def connect(server, user: str, password: str | None = None) -> Connection:
    conn = Connection()
    conn.nc = await nats.connect(
        server.url,
        user=user,
        password=password or password_for(user),
        error_cb=conn.on_error,
        inbox_prefix=inbox_of(user),
        allow_reconnect=False,
        max_reconnect_attempts=0,
    )
    return conn


@pytest.fixture
async def streams_declared(server) -> AsyncIterator[None]:
    await provisioned(server)  # the operator declares; services only bind
    yield


# ---------------------------------------------------------------- the generated files are fresh


@pytest.mark.unit
def test_auth_conf_is_generated_from_the_current_subjects():
    auth = natsauth()
    for path, executor_ids in auth.OUTPUTS.items():
        assert path.read_text() == auth.render(auth.Subjects(), executor_ids), (
            f"{path} is stale: uv run --frozen python deploy/nats/natsauth.py"
        )


@pytest.mark.unit
def test_every_job_event_has_a_writer_and_only_known_writers():
    auth = natsauth()
    union = typing.get_args(typing.get_args(JobEvent)[0])
    types = {model.model_fields["type"].default for model in union}
    written = {e for events in auth.EVENTS_BY_SERVICE.values() for e in events}
    assert written == types
    assert auth.EVENTS_BY_SERVICE["telemetry"] == ()  # nothing on the job path


@pytest.mark.unit
def test_no_user_may_declare_delete_or_purge_a_stream_and_only_admin_is_unlimited():
    """Only the operator declares (the provision step); the one consumer delete left is the
    submission's removal of the ordered consumers it read buckets with (joblist.BucketReader), on
    buckets' streams, where no durable consumer lives. The purges: the submission's of the logs
    stream, filtered on one finished job's subjects (DELETE /v1/jobs/{id}?purge=true), and the jobs
    index writers' of the entry a job left (jobindex.py)."""
    auth = natsauth()
    users = auth.users(S)
    assert [name for name, perms in users.items() if perms is None] == ["admin"]
    for name, perms in users.items():
        if perms is None:
            continue
        for subject in perms.publish:
            assert (
                ".DELETE." not in subject
                or subject == "$JS.API.STREAM.MSG.DELETE.TRAINYARD_DLQ"
                or (name == "submission" and subject.startswith("$JS.API.CONSUMER.DELETE.KV_trainyard_"))
            ), (name, subject)
            assert not subject.startswith(("$JS.API.STREAM.CREATE.", "$JS.API.STREAM.UPDATE.")), (
                name,
                subject,
            )
            assert "DURABLE.CREATE" not in subject, (name, subject)
            assert subject not in (">", "$JS.>", "$JS.API.>"), (name, subject)
            assert ".PURGE." not in subject or (name, subject) in {
                ("submission", f"$JS.API.STREAM.PURGE.{S.streams.logs}"),
                # the jobs index's writers remove the entry of the state a job left
                ("submission", f"$JS.API.STREAM.PURGE.{S.streams.jobindex}"),
                ("scheduler", f"$JS.API.STREAM.PURGE.{S.streams.jobindex}"),
            }, (name, subject)


@pytest.mark.unit
def test_the_compose_config_includes_the_generated_users():
    text = (NATS_DIR / "nats.conf").read_text()
    assert "include ./auth.conf" in text and "jetstream" in text
    k8s = (ROOT / "deploy" / "k8s" / "base" / "nats" / "nats.conf").read_text()
    assert "include ./auth.conf" in k8s


# ---------------------------------------------------------------- the server enforces them

REFUSED_PUBLISH = [
    ("executor-exec-a", S.job(JOB, "submitted")),  # submission, and the scheduler's copy ahead of queued
    ("executor-exec-a", S.job(JOB, "model_registered")),
    ("telemetry", S.job(JOB, "queued")),  # telemetry publishes nothing on the job path
    ("telemetry", S.job(JOB, "succeeded")),
    ("telemetry", S.exec_command("exec-a", "start")),
    ("telemetry", S.log(JOB, 1)),
    ("telemetry", "$KV.trainyard_jobs." + JOB),  # reads the job records, never writes them
    ("telemetry", S.dlq("scheduler")),  # its own dead letters only
    ("submission", S.exec_command("exec-a", "start")),  # only the scheduler commands executors
    ("submission", S.exec_command("exec-a", "cancel")),
    ("submission", S.job(JOB, "running")),
    ("executor-exec-a", S.job(JOB, "succeeded")),  # it reports; the scheduler announces
    ("executor-exec-a", S.job(JOB, "running")),
    ("executor-exec-a", "$KV.trainyard_jobs." + JOB),  # reads the job records, never writes them
    ("executor-exec-a", S.exec_report("exec-b", JOB)),  # reports for itself only
    ("scheduler", S.exec_report("exec-a", JOB)),  # only an executor reports
    ("registry", S.job(JOB, "succeeded")),
    ("registry", S.exec_command("exec-a", "start")),
    ("executor-exec-a", S.exec_command("exec-b", "start")),
    ("executor-exec-a", "$KV.trainyard_leases.scheduler"),  # cannot take the scheduler's lease
    ("executor-exec-a", "$KV.trainyard_executors.exec-b"),  # nor another executor's heartbeat
    ("client", S.job(JOB, "submitted")),  # another system submits through the intake only
    ("client", "$KV.trainyard_jobs." + JOB),
    ("telemetry", "$JS.API.STREAM.DELETE.TRAINYARD_JOBS"),
    ("submission", "$JS.API.STREAM.PURGE.TRAINYARD_JOBS"),
    ("registry", "trainyard.jobidx.default.running." + JOB),  # the index is its writers' alone
    ("executor-exec-a", "trainyard.jobidx.default.running." + JOB),
    ("client", "$JS.API.DIRECT.GET.TRAINYARD_JOBIDX"),
]

ALLOWED_PUBLISH = [
    ("submission", S.job(JOB, "submitted")),
    ("submission", S.intake_submit),
    ("scheduler", S.job(JOB, "submitted")),  # its copy ahead of queued, same message id
    ("scheduler", S.job(JOB, "queued")),
    ("scheduler", S.exec_command("exec-a", "start")),
    ("scheduler", S.job(JOB, "succeeded")),  # from an executor's report
    ("scheduler", S.job(JOB, "running")),
    ("executor-exec-a", S.exec_report("exec-a", JOB)),
    ("executor-exec-a", S.log(JOB, 1)),
    ("executor-exec-a", "$KV.trainyard_executors.exec-a"),  # its own heartbeat
    ("registry", S.job(JOB, "model_registered")),
    ("registry", S.model_registered("digits")),
    ("telemetry", S.dlq("telemetry")),
    ("client", S.intake_submit),
    ("scheduler", "trainyard.jobidx.default.running." + JOB),
    ("submission", "trainyard.jobidx.default.submitted." + JOB),
]


@pytest.mark.parametrize(("user", "subject"), REFUSED_PUBLISH, ids=lambda v: str(v))
async def test_a_user_is_refused_on_a_subject_its_service_does_not_own(
    server, streams_declared, user, subject
):
    conn = await connect(server, user)
    try:
        await conn.nc.publish(subject, b"{}")
        await conn.nc.flush()
        assert await conn.refused_on(subject), f"{user} was allowed to publish on {subject}: {conn.errors}"
    finally:
        await conn.nc.close()


@pytest.mark.parametrize(("user", "subject"), ALLOWED_PUBLISH, ids=lambda v: str(v))
async def test_a_user_is_allowed_on_a_subject_its_service_owns(server, streams_declared, user, subject):
    conn = await connect(server, user)
    try:
        ack = await conn.nc.jetstream().publish(subject, b"{}", timeout=10)
        assert ack.seq >= 1 and ack.stream.startswith(("TRAINYARD_", "KV_trainyard_"))
        assert not conn.errors
    finally:
        await conn.nc.close()


REFUSED_SUBSCRIBE = [
    ("telemetry", "trainyard.exec.>"),  # cannot read commands off the wire
    ("executor-exec-a", S.intake_submit),
    ("executor-exec-a", "trainyard.exec.exec-b.>"),
    ("executor-exec-a", "_INBOX.executor-exec-b.>"),  # another executor's deliveries
    ("telemetry", "_INBOX.>"),  # every user's replies: job records, tokens, commands
    ("submission", S.scheduler_why),  # asks the scheduler; only the scheduler answers
    ("client", "trainyard.>"),
]


@pytest.mark.parametrize(("user", "subject"), REFUSED_SUBSCRIBE, ids=lambda v: str(v))
async def test_a_user_may_not_subscribe_outside_its_inbox_and_its_own_subjects(server, user, subject):
    conn = await connect(server, user)
    try:
        await conn.nc.subscribe(subject)
        await conn.nc.flush()
        assert await conn.refused_on(subject), f"{user} could subscribe to {subject}"
    finally:
        await conn.nc.close()


async def test_the_scheduler_answers_a_why_on_the_askers_inbox(server):
    """allow_responses: the scheduler may publish to a reply subject only when asked."""
    scheduler = await connect(server, "scheduler")
    submission = await connect(server, "submission")

    async def answer(msg):
        await msg.respond(b'{"pending": false}')

    async def ask():
        # the server may answer "no responders" if the subscription has not reached it yet (seen
        # once in CI on a loaded machine): ask again until the scheduler's interest is there
        try:
            return await submission.nc.request(S.scheduler_why, b'{"job_id": "j"}', timeout=10)
        except nats.errors.NoRespondersError:
            return None

    try:
        await scheduler.nc.subscribe(S.scheduler_why, cb=answer)
        await scheduler.nc.flush()
        reply = await eventually(ask, 10, "an answer from the scheduler")
        assert reply.data == b'{"pending": false}'
        assert not scheduler.errors and not submission.errors
    finally:
        await scheduler.nc.close()
        await submission.nc.close()


@pytest.mark.parametrize(("user", "password"), [("telemetry", "wrong"), ("nobody", "x")])
async def test_a_wrong_password_or_unknown_user_cannot_connect(server, user, password):
    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        await connect(server, user, password)


def test_the_server_refuses_to_start_without_the_passwords(tmp_path: Path):
    """No default password hides in the config: an unset variable stops the server at once."""
    import os
    import subprocess

    from trainyard_shared.natsserver import nats_server_binary

    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_NATS_PASSWORD_")}
    done = subprocess.run(
        [nats_server_binary(), "-c", str(NATS_DIR / "nats.conf"), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "TRAINYARD_NATS_PASSWORD_" in done.stdout + done.stderr


async def test_the_scheduler_may_look_up_whether_an_event_was_announced(server, streams_declared):
    """The scheduler asks the jobs stream whether an event is there (a report applied before comes
    again: ReportApplier._announce_unsaid; an old job's submitted copy): a look-up of one message,
    which its user was refused before (the look-up timed out and broke its connection)."""
    from nats.js.errors import NotFoundError

    conn = await connect(server, "scheduler")
    try:
        with pytest.raises(NotFoundError):  # the stream answers: no such event (not a refusal)
            await conn.nc.jetstream().get_last_msg("TRAINYARD_JOBS", S.job("0never0announced", "succeeded"))
        assert not conn.errors
    finally:
        await conn.nc.close()
