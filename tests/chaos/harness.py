"""What the chaos run needs around the embedded stack: kill and restart one process, freeze an
executor with its jobs, a steady load, a mirror of the job records, and readers for the audit.

Every wait is on a condition with a deadline (``until``); the only timed sleeps pace the load
generator and the polling of those conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
from nats.js.api import DeliverPolicy

from trainyard_client.bus import submit_over_nats
from trainyard_client.stack import EmbeddedStack, ServiceProcess
from trainyard_client.stackprocess import free_port
from trainyard_contracts import JobRecord, Subjects
from trainyard_shared.jobview import JobView

from .audit import TICK_SECONDS

T = TypeVar("T")
PY = sys.executable

# One run of one attempt: start, a tick every TICK_SECONDS while it works, end when done.
# argv: marker file, seconds of work, release file ('' = none), 'model' to write a model output.
# Attempt 1 of a job given a release file holds until that file exists (a long-running attempt
# for the fencing scenario); every later attempt just works its seconds.
MARKING = """
import json, os, sys, time
marker = sys.argv[1]
job, attempt, pid = os.environ['TRAINYARD_JOB_ID'], os.environ['TRAINYARD_ATTEMPT'], os.getpid()
def mark(kind):
    fd = os.open(marker, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f'{kind} {job} {attempt} {pid} {time.time():.6f}\\n'.encode())
    os.close(fd)
mark('start')
"""
"""A chaos job's first lines: ``mark(kind)`` appends a marker line (argv[1] is the marker file),
and the run's ``start`` is marked."""
JOB_CODE = (
    MARKING
    + f"""
seconds, release = float(sys.argv[2]), sys.argv[3]
until = time.time() + seconds
hold = release and attempt == '1'
while time.time() < until or (hold and not os.path.exists(release) and time.time() < until + 300):
    time.sleep({TICK_SECONDS})
    mark('tick')
if sys.argv[4:] == ['model']:
    out = os.environ['TRAINYARD_OUTPUT_DIR']
    os.makedirs(out, exist_ok=True)
    open(os.path.join(out, 'model.txt'), 'w').write(job)
    open(os.path.join(out, 'metrics.json'), 'w').write('{{"score": 1.0}}')
mark('end')
"""
)
MODEL_NAME = "chaos-model"


async def until(
    probe: Callable[[], Awaitable[T | None] | T | None],
    timeout: float,
    what: str,
    poll: float = 0.1,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = probe()
        last = await result if asyncio.iscoroutine(result) else result
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f}s (last: {last!r})")
        await asyncio.sleep(poll)


def job_spec(
    seq: int, marker: Path, seconds: float, *, release: Path | None = None, model: bool = False
) -> dict[str, Any]:
    argv = [PY, "-c", JOB_CODE, str(marker), f"{seconds:.2f}", str(release or "")]
    if model:
        argv.append("model")
    spec: dict[str, Any] = {
        "name": f"chaos-{seq}",
        "command": argv,
        "resources": {"cpu": 0.25, "memory": 64},
        "labels": {"chaos-seq": str(seq)},
    }
    if model:
        spec["outputs"] = {"model": MODEL_NAME, "path": "out"}
    return spec


# ---------------------------------------------------------------------------------- processes


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


class ChaosStack:
    """The embedded stack plus what the chaos run does to it."""

    def __init__(self, stack: EmbeddedStack) -> None:
        self.stack = stack
        self.extra_executors: dict[str, ServiceProcess] = {}

    def process(self, name: str) -> ServiceProcess:
        return self.extra_executors.get(name) or self.stack.services[name]

    def kill(self, name: str) -> float:
        """``kill -9`` the service's process (not its children); when it died (epoch seconds)."""
        service = self.process(name)
        assert service.process is not None and service.alive, f"{name} is not running"
        killed_at = time.time()
        os.kill(service.process.pid, signal.SIGKILL)
        service.process.wait(timeout=10)
        return killed_at

    def restart(self, name: str, env: dict[str, str] | None = None) -> float:
        """Start the service again on the same data dir and ports."""
        service = self.process(name)
        assert not service.alive, f"{name} still runs"
        if service.log_file is not None:
            service.log_file.close()
            service.log_file = None
        started = time.time()
        self.stack._spawn(service, {**self.stack.service_env(), **(env or {})})
        return started

    def kill_nats(self) -> float:
        killed_at = time.time()
        self.stack.nats.stop(kill=True)  # SIGKILL; the store dir stays
        return killed_at

    def restart_nats(self) -> float:
        started = time.time()
        self.stack.nats.start(timeout=30)
        return started

    def start_executor(self, executor_id: str, env: dict[str, str]) -> ServiceProcess:
        """A second executor process with its own id, port and log."""
        port = free_port(self.stack.host)
        service = ServiceProcess("executor", port, self.stack.log_dir / f"executor-{executor_id}.log")
        self.extra_executors[executor_id] = service
        self.stack._spawn(
            service,
            {
                **self.stack.service_env(),
                **env,
                "TRAINYARD_EXECUTOR_ID": executor_id,
                "TRAINYARD_EXECUTOR_PORT": str(port),
            },
        )
        return service

    def stop_extra_executors(self, timeout: float = 30) -> None:
        for service in self.extra_executors.values():
            if service.process is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.process.pid, signal.SIGCONT)
                service.process.send_signal(signal.SIGTERM)
            try:
                service.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
            if service.log_file is not None:
                service.log_file.close()
                service.log_file = None

    def health_url(self, name: str) -> str:
        return f"http://{self.stack.host}:{self.process(name).port}/healthz"

    async def healthy(self, name: str) -> bool:
        if name == "nats":
            return bool(await asyncio.to_thread(self.stack.nats.healthy))
        async with httpx.AsyncClient(timeout=6) as http:
            try:
                return (await http.get(self.health_url(name))).is_success
            except httpx.HTTPError:
                return False

    async def all_healthy(self) -> bool:
        names = ["nats", *self.stack.services, *self.extra_executors]
        return all(await asyncio.gather(*(self.healthy(n) for n in names)))

    @staticmethod
    def freeze(pid: int) -> list[int]:
        """SIGSTOP a process and everything below it (a machine that stops answering)."""
        os.kill(pid, signal.SIGSTOP)
        frozen = [pid]
        for child in descendants(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
                frozen.append(child)
        return frozen

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def log_tails(self) -> str:
        names = [*self.stack.services, "nats"]
        parts = [f"--- {n} ---\n{self.stack.log_tail(n, 15)}" for n in names]
        for executor_id, service in self.extra_executors.items():
            parts.append(f"--- executor {executor_id} ---\n{self.stack.log_tail(service.log_path.stem, 15)}")
        return "\n".join(parts)


# ---------------------------------------------------------------------------------- the bus side


@dataclass
class Observation:
    at: float
    """when the change happened: the record's own state time, or (a model) when this run saw it"""
    kind: str  # a state value, or "model"
    job_id: str
    executor_id: str | None


class Mirror:
    """The job records as the chaos run sees them: a JobView on a connection of its own, plus the
    time this process first saw each state change (what recovery times are measured with)."""

    def __init__(self, url: str, prefix: str, **connect_options: Any) -> None:
        self.url = url
        self.connect_options = connect_options  # the stack's credentials (admin: reads the records)
        self.subjects = Subjects(prefix)
        self.observations: list[Observation] = []
        self.nc: Any = None
        self.js: Any = None
        self.view: JobView | None = None

    async def start(self) -> None:
        self.nc = await nats.connect(
            self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5, **self.connect_options
        )
        self.js = self.nc.jetstream(timeout=10)
        kv = await self.js.key_value(self.subjects.buckets.jobs)
        view = JobView(kv)
        view.on_change(self._observe)
        await view.start()
        self.view = view

    async def restart(self) -> None:
        """A fresh connection and watch (after the broker came back)."""
        await self.stop()
        await until(self._try_start, 60, "the chaos run's mirror reconnected", poll=0.5)

    async def _try_start(self) -> bool:
        try:
            await self.start()
        except Exception:
            await self.stop()
            return False
        return True

    async def stop(self) -> None:
        if self.view is not None:
            await self.view.stop()
            self.view = None
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
            self.nc = None

    def _observe(self, before: JobRecord | None, after: JobRecord) -> None:
        now = time.time()
        if before is None or before.state != after.state or before.attempt != after.attempt:
            stamp = after.state_times.get(after.state.value)
            when = stamp.timestamp() if stamp is not None else now
            self.observations.append(Observation(when, after.state.value, after.job_id, after.executor_id))
        if after.model is not None and (before is None or before.model is None):
            self.observations.append(Observation(now, "model", after.job_id, after.executor_id))

    def first(self, kind: str, after: float, executor_id: str | None = None) -> Observation | None:
        for obs in self.observations:
            if (
                obs.kind == kind
                and obs.at > after
                and (executor_id is None or obs.executor_id == executor_id)
            ):
                return obs
        return None

    def count(self, kind: str, after: float) -> int:
        """How many jobs reached ``kind`` after ``after``."""
        return len({obs.job_id for obs in self.observations if obs.kind == kind and obs.at > after})

    def records(self) -> dict[str, JobRecord]:
        assert self.view is not None
        return dict(self.view.records)

    async def job_events(self) -> list[dict[str, Any]]:
        """The whole jobs stream, decoded, with each message's stream sequence."""
        stream = self.subjects.streams.jobs
        info = await self.js.stream_info(stream)
        last = info.state.last_seq
        out: list[dict[str, Any]] = []
        if info.state.messages == 0:
            return out
        sub = await self.js.subscribe(
            self.subjects.all_job_events,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            stream=stream,
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=10)
                seq = msg.metadata.sequence.stream
                try:
                    body = json.loads(msg.data)
                except ValueError:
                    body = {}
                if isinstance(body, dict):
                    out.append({**body, "_seq": seq, "_subject": msg.subject})
                if seq >= last:
                    break
        finally:
            await sub.unsubscribe()
        return out

    async def republish(self, events: list[dict[str, Any]]) -> int:
        """Publish events again, bodies unchanged, each with a fresh Nats-Msg-Id (so JetStream's
        deduplication lets them through: what a redelivery or a confused producer looks like)."""
        last = 0
        for event in events:
            body = {k: v for k, v in event.items() if not k.startswith("_")}
            ack = await self.js.publish(
                event["_subject"],
                json.dumps(body).encode(),
                headers={"Nats-Msg-Id": f"chaos-dup-{uuid.uuid4().hex}"},
            )
            assert not ack.duplicate
            last = ack.seq
        return last

    async def consumers_caught_up(self) -> bool:
        """Every durable consumer of the jobs stream has had everything delivered and acked."""
        infos = await self.js.consumers_info(self.subjects.streams.jobs)
        durable = [c for c in infos if c.config.durable_name]
        return bool(durable) and all(c.num_pending == 0 and c.num_ack_pending == 0 for c in durable)


def model_versions_by_job(db: Path) -> dict[str, int]:
    """job id -> model versions carrying its ``trainyard.job_id`` tag, read from MLflow's store."""
    if not db.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT value, COUNT(*) FROM model_version_tags WHERE key = 'trainyard.job_id' GROUP BY value"
        ).fetchall()
    return {str(job): int(n) for job, n in rows}


async def telemetry_counts(url: str) -> dict[str, float]:
    """``trainyard_job_events_total`` by type from the telemetry service's /metrics."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(url)).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("trainyard_job_events_total{"):
            labels, _, value = line.rpartition(" ")
            kind = labels.split('type="', 1)[1].split('"', 1)[0]
            out[kind] = float(value)
    return out


# ---------------------------------------------------------------------------------- the load


@dataclass
class Load:
    """Offers a job every ``1/rate`` seconds whatever happens, and submits the offers in order:
    over HTTP with an Idempotency-Key, every ``bus_every``-th over the bus intake with the same key
    as its Nats-Msg-Id. A submission that fails (refused connection, timeout, 5xx) is retried with
    the same key until it is answered, so a job is never offered twice under two keys."""

    stack: EmbeddedStack
    marker: Path
    rate: float = 2.0
    model_every: int = 10
    bus_every: int = 4
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    offers: dict[int, str | None] = field(default_factory=dict)
    specs: dict[int, dict[str, Any]] = field(default_factory=dict)
    accepted_at: dict[int, float] = field(default_factory=dict)
    model_seqs: set[int] = field(default_factory=set)
    failures: int = 0
    next_seq: int = 1
    _pending: list[int] = field(default_factory=list)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, spec_for: Callable[[int], dict[str, Any]] | None = None, *, model: bool = False) -> int:
        seq = self.next_seq
        self.next_seq += 1
        model = model or (spec_for is None and self.model_every > 0 and seq % self.model_every == 0)
        seconds = 0.3 + (seq % 5) * 0.2  # 0.3 .. 1.1 s of work
        spec = spec_for(seq) if spec_for else job_spec(seq, self.marker, seconds, model=model)
        if model:
            self.model_seqs.add(seq)
        self.specs[seq] = spec
        self.offers[seq] = None
        self._pending.append(seq)
        self._wakeup.set()
        return seq

    async def offer_steadily(self, stop: asyncio.Event) -> None:
        began = time.monotonic()
        offered = 0
        while not stop.is_set():
            self.offer()
            offered += 1
            delay = began + offered / self.rate - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, delay))  # pacing, not synchronisation

    async def submit_forever(self) -> None:
        async with httpx.AsyncClient(
            base_url=self.stack.api_url,
            headers={"Authorization": f"Bearer {self.stack.token()}"},
            timeout=5,
        ) as http:
            while True:
                if not self._pending:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                seq = self._pending[0]
                job_id = await self._submit(http, seq)
                if job_id is None:
                    self.failures += 1
                    await asyncio.sleep(0.25)  # the retry's pace; the offer keeps its key
                    continue
                self._pending.pop(0)
                self.offers[seq] = job_id
                self.accepted_at[seq] = time.time()

    def key(self, seq: int) -> str:
        return f"chaos-{self.run_id}-{seq}"

    async def _submit(self, http: httpx.AsyncClient, seq: int) -> str | None:
        spec = self.specs[seq]
        try:
            if self.bus_every and seq % self.bus_every == 0:
                reply = await submit_over_nats(
                    self.stack.nats_url,
                    spec,
                    prefix=self.stack.prefix,
                    msg_id=self.key(seq),
                    timeout=5,
                    **self.stack.nats_connect_options("client"),
                )
                return str(reply["job_id"]) if reply.get("accepted") else None
            response = await http.post("/v1/jobs", json=spec, headers={"Idempotency-Key": self.key(seq)})
            if response.status_code in (200, 201):
                return str(response.json()["job_id"])
            if response.status_code < 500:
                raise AssertionError(f"offer {seq} refused: {response.status_code} {response.text[:300]}")
            return None
        except (httpx.HTTPError, OSError, TimeoutError, nats.errors.Error):
            return None
        except Exception as exc:  # the bus client's errors while the broker is away
            if type(exc).__module__.startswith(("nats", "trainyard_client")):
                return None
            raise

    @property
    def pending(self) -> int:
        return len(self._pending)
