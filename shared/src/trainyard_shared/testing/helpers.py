"""Run services in this process against a real nats-server, and watch what they do (test kit).

Imported by the integration, hostile-input and chaos tests as `trainyard_shared.testing.helpers`: an
installed module, so no test depends on how pytest names the several `tests` folders.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import nats
from nats.errors import NoRespondersError
from nats.js.api import DeliverPolicy

from trainyard_contracts import JobRecord, JobSpec, JobSubmitted, Subjects, lifecycle, new_job_id
from trainyard_contracts._time import utcnow
from trainyard_shared.jobindex import JobIndex
from trainyard_shared.settings import CommonSettings

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout: float = 30.0, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: T | None = None
    while loop.time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


@contextlib.asynccontextmanager
async def running(app: Any, timeout: float = 60.0) -> AsyncIterator[Any]:
    """The app started: broker connected, subscribers and batch consumers up, start-up hooks
    done (faststream's lifespan context alone hands over before all of that)."""
    from trainyard_shared.runner import STARTED

    async with app.start_lifespan_context():
        context = getattr(app, "context", None)  # a faststream app built by runner.build_app
        started = context.get(STARTED) if context is not None else None
        if started is not None:
            await asyncio.wait_for(started.wait(), timeout)
        yield app


@contextlib.asynccontextmanager
async def serving_http(app: Any, lifespan: Literal["auto", "on", "off"] = "auto") -> AsyncIterator[str]:
    """``app`` (ASGI) served by uvicorn on a free loopback port: its base URL. ``lifespan="off"``
    for an app already started with :func:`running`."""
    import socket

    import uvicorn

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class Bus:
    """A plain nats-py client for the test's own reads and writes."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.subjects = Subjects(prefix)
        self.nc: Any = None
        self.js: Any = None

    async def __aenter__(self) -> Bus:
        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.drain()

    async def record(self, job_id: str) -> JobRecord | None:
        kv = await self.js.key_value(self.subjects.buckets.jobs)
        try:
            entry = await kv.get(job_id)
        except Exception:
            return None
        return JobRecord.model_validate_json(entry.value)

    async def submit(self, spec: JobSpec) -> str:
        """What the submission service does: create the record, then the submitted event."""
        job_id = new_job_id()
        kv = await self.js.key_value(self.subjects.buckets.jobs)
        record = lifecycle.new_record(job_id, spec, utcnow(), "test")
        with contextlib.suppress(NoRespondersError):  # its jobs index entry, when the stream exists
            index = JobIndex(self.nc, self.js, self.subjects)
            await asyncio.gather(index.enter(record), index.arrive(record))
        await kv.create(job_id, record.model_dump_json().encode())
        event = JobSubmitted(job_id=job_id, spec=spec, submitted_by="test")
        await self.js.publish(
            event.subject(self.subjects),
            event.model_dump_json().encode(),
            headers={"Nats-Msg-Id": event.msg_id()},
        )
        return job_id

    async def wait_state(self, job_id: str, *states: str, timeout: float = 30.0) -> JobRecord:
        async def probe() -> JobRecord | None:
            record = await self.record(job_id)
            return record if record and record.state.value in states else None

        return await eventually(probe, timeout, f"job {job_id} in {states}")

    async def messages(self, subject: str, stream: str) -> list[Any]:
        """Every message stored so far on ``subject`` (an ephemeral ordered read)."""
        info = await self.js.stream_info(stream)
        if info.state.messages == 0:
            return []
        sub = await self.js.subscribe(
            subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, stream=stream
        )
        out = []
        try:
            while True:
                out.append(await sub.next_msg(timeout=0.5))
        except nats.errors.TimeoutError:
            pass
        finally:
            await sub.unsubscribe()
        return out

    async def event_types(self, job_id: str) -> list[str]:
        msgs = await self.messages(self.subjects.job_events(job_id), self.subjects.streams.jobs)
        return [json.loads(m.data)["type"] for m in msgs]

    async def log_text(self, job_id: str) -> list[str]:
        msgs = await self.messages(self.subjects.logs_of(job_id), self.subjects.streams.logs)
        return [line["text"] for m in msgs for line in json.loads(m.data)["lines"]]


def common_settings(nats_url: str, prefix: str, data_dir: Path) -> CommonSettings:
    return CommonSettings(nats_url=nats_url, prefix=prefix, data_dir=data_dir, log_format="text")


def fake_nvidia_smi(folder: Path, lines: list[str], expected_args: str, exit_code: int = 0) -> Path:
    """A stand-in for ``nvidia-smi`` (no GPU exists where the tests run): a script in ``folder``
    that prints ``lines`` when called with exactly ``expected_args``, and fails otherwise."""
    script = folder / "nvidia-smi"
    body = "".join(f"{line}\n" for line in lines)
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$*" = "{expected_args}" ] || {{ echo "unexpected arguments: $*" >&2; exit 2; }}\n'
        f"cat <<'EOF'\n{body}EOF\n"
        f"exit {exit_code}\n"
    )
    script.chmod(0o755)
    return script


def four_gpu_query_lines() -> list[str]:
    """What ``nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits``
    prints on a machine with four GPUs."""
    return [
        f"{i}, GPU-0a1b2c3d-{str(i) * 4}-0000-0000-00000000000{i}, NVIDIA A100-SXM4-40GB, 40960"
        for i in range(4)
    ]


def version_in_mlflow(client: Any, name: str) -> str:
    """A version made with MLflow's own client, as a user outside Trainyard would (MLflow 3: a
    logged model first). ``client``: an ``mlflow.MlflowClient`` (MLflow is not imported here)."""
    experiment = client.create_experiment(f"outside-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment)
    model = client.create_logged_model(experiment_id=experiment, name=name, source_run_id=run.info.run_id)
    mv = client.create_model_version(
        name, source=model.artifact_location, run_id=run.info.run_id, model_id=model.model_id
    )
    return str(mv.version)
