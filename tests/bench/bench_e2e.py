"""End-to-end benchmark of the job path on the embedded stack (`make bench`, JSON out).

Real path: nats-server with JetStream file storage and the five services as processes, one replica
each, on loopback. Two executor backends, each figure labelled with the one it used:

- ``noop``: the executor's no-op backend completes an attempt at once without spawning a process
  (the whole job path: intake, records, events, commands, heartbeats — only the fork is skipped);
- ``local``: every job a real local process (``true``).

In both, the executor advertises 4096 CPUs and each job asks for 0.01, so placement never waits
(that override is named in the JSON).

Open loop: jobs are offered at fixed rates for a fixed time through the bus intake and through the
HTTP API, whether or not the system keeps up. Per job, the stage times come from the job record's
state times (submitted, scheduled, running, succeeded), all taken on this machine's clock.
Closed loop (drain): N jobs submitted at once, time from the first submit to all terminal.
Every run audits lost jobs (offered but never terminal) and duplicated runs (more than one started
attempt for a job that nothing requeued).

Issue 23's parts (each on a fresh stack): ``local``, a drain of 1,000 `true` jobs on the local
backend; ``sustained``, 1,000 jobs/s offered over the bus for 60 s, noop backend; ``docker`` and
``podman``, 200 containers of the test image drained through that backend and, in the same run, the
engine's own ``run --rm IMAGE true`` loop (e2e_engines.py). ``summary`` holds the five figures issue
23 names (e2e_summary.py), each with its target, whether met and the load average around it.
``--only`` runs some parts and merges them into the existing file (the other keys are kept).

Usage: python tests/bench/bench_e2e.py [--only runs,local,sustained,docker,podman]
       [--backends noop,local] [--rates 50,200,500,1000] [--channels bus,http] [--seconds 10]
       [--drain 1000,10000] [--local-jobs 1000] [--sustained-rate 1000] [--sustained-seconds 60]
       [--containers 200] [--engine-concurrency 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import nats

from trainyard_client.stack import EmbeddedStack
from trainyard_contracts import JobRecord, JobState

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repo's tests package
from tests.bench import e2e_engines
from tests.bench.e2e_summary import PATH, summarize, table

NOOP = {"name": "noop", "command": ["true"], "resources": {"cpu": 0.01, "memory": 1}}
OUT = Path(__file__).parent / "results" / "e2e.json"
EXECUTOR_CPUS = 4096
PUBLISH_ERRORS: Counter[str] = Counter()  # publishes to the intake not acked in time, by error


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


TERMINAL_TYPES = tuple(s.value for s in JobState if s.terminal)


class Outcomes:
    """Which jobs ended, from their terminal events; their records once all have ended.

    The load generator shares the 2 cores with what it measures, so it follows one message per
    job (a core subscription to the terminal events, no JetStream consumer) rather than every
    record update, and reads the records (for their state times) after the measured window: one
    ordered read of the bucket's newest values, parsing only the jobs asked for. An executor
    writes the outcome before it publishes the event, so the record read after it is terminal."""

    def __init__(self, stack: EmbeddedStack) -> None:
        self.stack = stack
        self.ended: set[str] = set()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Outcomes:
        self.nc = await nats.connect(
            self.stack.nats_url, pending_size=512 * 1024 * 1024, **self.stack.nats_connect_options("admin")
        )
        self.subs = [
            await self.nc.subscribe(
                f"{self.stack.prefix}.job.*.{kind}", cb=self._on_event, pending_msgs_limit=1_000_000
            )
            for kind in TERMINAL_TYPES
        ]
        return self

    async def _on_event(self, msg: Any) -> None:
        self.ended.add(msg.subject.split(".")[-2])
        self._changed.set()

    async def wait_for(self, job_ids: list[str], timeout: float) -> None:
        """Until every one of ``job_ids`` has ended, or ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wanted = set(job_ids)
        while not wanted <= self.ended and loop.time() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break

    async def records(self, job_ids: list[str]) -> list[JobRecord]:
        """The terminal records of ``job_ids`` (a job not ended is missing: lost)."""
        wanted = set(job_ids)
        kv = await self.nc.jetstream().key_value(f"{self.stack.prefix}_jobs")
        found: dict[str, JobRecord] = {}
        watcher = await kv.watchall(include_history=False)
        try:
            async for entry in watcher:
                if entry is None:  # the bucket's newest values are all delivered
                    break
                if entry.key in wanted and entry.value:
                    record = JobRecord.model_validate_json(entry.value)
                    if record.state.terminal:
                        found[record.job_id] = record
        finally:
            await watcher.stop()
        return [found[j] for j in job_ids if j in found]

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.drain()


async def offer_over_bus(
    stack: EmbeddedStack, rate: float, seconds: float, spec: dict[str, Any] = NOOP
) -> list[str]:
    """Publish ``spec`` to the intake at ``rate``; the accepted job ids come back on a reply subject."""
    nc = await nats.connect(stack.nats_url, **stack.nats_connect_options("client"))
    js = nc.jetstream()
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []
    total = max(1, int(rate * seconds))
    all_replied = asyncio.Event()

    async def on_reply(msg: Any) -> None:
        replies.append(json.loads(msg.data))
        if len(replies) >= total:
            all_replied.set()

    await nc.subscribe(inbox, cb=on_reply)
    body = json.dumps(spec).encode()
    start = time.perf_counter()
    pending: list[asyncio.Future[Any]] = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the offered load, not synchronisation
        pending.append(
            asyncio.ensure_future(
                js.publish(
                    stack.prefix + ".intake.submit",
                    body,
                    headers={"Nats-Msg-Id": uuid.uuid4().hex, "Trainyard-Reply-To": inbox},
                    timeout=10,
                )
            )
        )
    # a publish not acked in time is counted, not fatal: the intake may still take it (its reply
    # then counts it as accepted); past the load it can absorb, acks come late
    acks = await asyncio.gather(*pending, return_exceptions=True)
    failed = [a for a in acks if isinstance(a, BaseException)]
    PUBLISH_ERRORS.update(type(a).__name__ for a in failed)
    total -= len(failed)
    if len(replies) >= total:
        all_replied.set()
    try:
        await asyncio.wait_for(all_replied.wait(), 300)
    except TimeoutError:
        pass
    await nc.drain()
    return [r["job_id"] for r in replies if r.get("accepted")]


async def offer_over_http(stack: EmbeddedStack, rate: float, seconds: float) -> list[str]:
    """POST /v1/jobs at ``rate``. The client is aiohttp: httpx cost ~5.5 ms of CPU a request here,
    more than the server's handling, so the HTTP figures measured the load generator."""
    headers = {"Authorization": f"Bearer {stack.token()}", "Content-Type": "application/json"}
    body = json.dumps(NOOP)
    total = max(1, int(rate * seconds))
    # an open loop: as many connections as requests in flight, none waits for a free one
    connector = aiohttp.TCPConnector(limit=1000)
    timeout = aiohttp.ClientTimeout(total=120)

    async def post(session: aiohttp.ClientSession) -> tuple[int, Any]:
        async with session.post("/v1/jobs", data=body) as response:
            return response.status, await response.json(content_type=None)

    async with aiohttp.ClientSession(
        base_url=stack.api_url, headers=headers, connector=connector, timeout=timeout
    ) as session:
        start = time.perf_counter()
        tasks = []
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(post(session)))
        responses = await asyncio.gather(*tasks, return_exceptions=True)
    refusals = Counter(
        str(r[0]) if isinstance(r, tuple) else type(r).__name__
        for r in responses
        if not (isinstance(r, tuple) and r[0] == 201)
    )
    if refusals:
        print(f"HTTP refusals at {rate}/s: {dict(refusals)}", file=sys.stderr, flush=True)
    return [r[1]["job_id"] for r in responses if isinstance(r, tuple) and r[0] == 201]


def stage_stats(recs: list[JobRecord]) -> dict[str, Any]:
    def span(r: JobRecord, a: str, b: str) -> float | None:
        t = r.state_times
        return (t[b] - t[a]).total_seconds() if a in t and b in t else None

    out: dict[str, Any] = {}
    for name, a, b in [
        ("submitted_to_scheduled", "submitted", "scheduled"),
        ("scheduled_to_running", "scheduled", "running"),
        ("submitted_to_running", "submitted", "running"),
        ("running_to_succeeded", "running", "succeeded"),
        ("submitted_to_succeeded", "submitted", "succeeded"),
    ]:
        values = [v for r in recs if (v := span(r, a, b)) is not None]
        out[name] = {
            "p50_ms": ms(pct(values, 50)),
            "p90_ms": ms(pct(values, 90)),
            "p99_ms": ms(pct(values, 99)),
            "n": len(values),
        }
    return out


def cpu_seconds(stack: EmbeddedStack) -> dict[str, float]:
    """User + system CPU seconds of each service process (from /proc; the jobs are not included)."""
    tick = os.sysconf("SC_CLK_TCK")
    usage = {}
    processes = {name: s.process for name, s in stack.processes.items()}  # co-hosted: once
    processes["nats-server"] = getattr(stack.nats, "process", None)
    for name, process in processes.items():
        if process is None:
            continue
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        usage[name] = (int(fields[11]) + int(fields[12])) / tick
    return usage


def cpu_ms_per_job(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    """CPU milliseconds per job of each process, and their sum as ``total``."""
    per = {k: round((after[k] - before.get(k, 0)) * 1000 / max(jobs, 1), 3) for k in after}
    per["total"] = round(sum(per.values()), 3)
    return per


def audit(recs: list[JobRecord], offered: int, accepted: int) -> dict[str, int]:
    """Refused: offered but not accepted (an HTTP error or a rejected reply: the caller knows).
    Lost: accepted, never terminal. Duplicated: started more than once (a no-op job has no
    reason to: nothing fails and no executor is lost during the benchmark)."""
    duplicated = sum(1 for r in recs if len([a for a in r.attempts if a.started_at]) > 1)
    succeeded = sum(1 for r in recs if r.state.value == "succeeded")
    return {
        "offered": offered,
        "refused": offered - accepted,
        "succeeded": succeeded,
        "lost": accepted - len(recs),
        "duplicated": duplicated,
    }


async def run_rate(
    stack: EmbeddedStack, outcomes: Outcomes, rate: float, seconds: float, via: str
) -> dict[str, Any]:
    before = cpu_seconds(stack)
    publish_errors_before = sum(PUBLISH_ERRORS.values())
    generator_before = time.process_time()
    t0 = time.perf_counter()
    offer = offer_over_bus if via == "bus" else offer_over_http
    job_ids = await offer(stack, rate, seconds)
    await outcomes.wait_for(job_ids, timeout=300)
    wall = time.perf_counter() - t0
    after = cpu_seconds(stack)
    generator = time.process_time() - generator_before
    recs = await outcomes.records(job_ids)  # after the measured window
    ends = [r.state_times["succeeded"] for r in recs if "succeeded" in r.state_times]
    starts = [r.state_times["submitted"] for r in recs]
    achieved = (len(ends) / (max(ends) - min(starts)).total_seconds()) if len(ends) > 1 else 0.0
    stats = stage_stats(recs)
    offered = max(1, int(rate * seconds))
    return {
        "via": via,
        "offered_rate": rate,
        "seconds": seconds,
        "achieved_rate": round(achieved, 1),
        "p50_ms": stats["submitted_to_running"]["p50_ms"],
        "p90_ms": stats["submitted_to_running"]["p90_ms"],
        "p99_ms": stats["submitted_to_running"]["p99_ms"],
        "stages": stats,
        **audit(recs, offered, len(job_ids)),
        "accepted": len(job_ids),
        "publish_errors": sum(PUBLISH_ERRORS.values()) - publish_errors_before,
        "wall_seconds": round(wall, 1),
        "cpu_ms_per_job": cpu_ms_per_job(before, after, len(recs)),
        # this process (offering the load, following the records) on the same 2 cores; not in total
        "load_generator_cpu_ms_per_job": round(generator * 1000 / max(len(recs), 1), 3),
    }


async def run_drain(
    stack: EmbeddedStack, outcomes: Outcomes, n: int, spec: dict[str, Any] = NOOP
) -> dict[str, Any]:
    before = cpu_seconds(stack)
    t0 = time.perf_counter()
    job_ids = await offer_over_bus(stack, rate=1e9, seconds=n / 1e9, spec=spec)
    await outcomes.wait_for(job_ids, timeout=900)
    after = cpu_seconds(stack)
    recs = await outcomes.records(job_ids)
    ends = [r.state_times.get("succeeded") or r.updated_at for r in recs]
    starts = [r.state_times["submitted"] for r in recs]
    seconds = (max(ends) - min(starts)).total_seconds() if recs else None
    return {
        "drain_jobs": n,
        "drain_seconds": round(seconds, 2) if seconds else None,
        "drain_rate": round(len(recs) / seconds, 1) if seconds else None,
        "drain_wall_seconds": round(time.perf_counter() - t0, 2),
        **{
            k: v
            for k, v in audit(recs, n, len(job_ids)).items()
            if k in ("refused", "lost", "duplicated", "succeeded")
        },
        "cpu_ms_per_job": cpu_ms_per_job(before, after, len(recs)),
        "not_succeeded": not_succeeded(recs),
    }


def not_succeeded(recs: list[JobRecord]) -> dict[str, int]:
    """How many jobs ended otherwise than succeeded, by state and reason (first 120 characters)."""
    return dict(
        Counter(f"{r.state.value}: {(r.reason or '')[:120]}" for r in recs if r.state.value != "succeeded")
    )


def stack_env(backend: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "TRAINYARD_LOG_LEVEL": "WARNING",
        "TRAINYARD_EXECUTOR_BACKEND": backend,
        "TRAINYARD_EXECUTOR_CPU": str(EXECUTOR_CPUS),
        "TRAINYARD_EXECUTOR_MEMORY": str(1024 * 1024 * 16),
    } | (extra or {})


@contextlib.asynccontextmanager
async def warm_stack(
    backend: str, extra_env: dict[str, str] | None = None
) -> AsyncIterator[tuple[EmbeddedStack, Outcomes]]:
    """A fresh embedded stack on ``backend``, warmed by 5 jobs (imports, consumers, connections)."""
    with tempfile.TemporaryDirectory(
        prefix=f"trainyard-bench-{backend}-", ignore_cleanup_errors=True
    ) as data:
        env = stack_env(backend, extra_env)
        with EmbeddedStack(Path(data), api_port=None, nats_port=None, env=env, ready_timeout=180) as stack:
            async with Outcomes(stack) as outcomes:
                await run_rate(stack, outcomes, 5, 1, "bus")
                yield stack, outcomes


async def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": backend, "rates": [], "drains": []}
    async with warm_stack(backend) as (stack, outcomes):
        for rate in args.rates:
            for via in args.channels:
                result = await run_rate(stack, outcomes, rate, args.seconds, via)
                out["rates"].append(result)
                shown = {k: v for k, v in result.items() if k != "stages"}
                print(json.dumps({"backend": backend, **shown}), flush=True)
        for n in args.drain:
            result = await run_drain(stack, outcomes, n)
            out["drains"].append(result)
            print(json.dumps({"backend": backend, **result}), flush=True)
    return out


def machine_speed() -> float:
    """Milliseconds one core takes for a fixed pure-Python workload (best of 5).

    This (virtual) machine's speed drifts: the same code measured 2.7 and 3.6 ms of CPU per job
    an hour apart. Runs compare fairly only next to this figure."""

    def work() -> int:
        total = 0
        for i in range(300_000):
            total += i % 7
        return total

    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        work()
        best = min(best, time.process_time() - t0)
    return round(best * 1000, 2)


def conditions_now() -> dict[str, Any]:
    """When, at which commit, the load average (1, 5, 15 min) and the machine's speed, now."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, cwd=OUT.parent
    ).stdout.strip()
    return {
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit or None,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "speed_ms": machine_speed(),
    }


async def part_runs(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The open-loop rates and drains per backend (``runs``, issue 6's headline fields).

    A backend measured now replaces its entry in ``runs``; the other backends' entries are kept.
    Each new entry carries its own ``conditions`` (load average and machine speed around it, the
    arguments); an entry without them is described by the file's prose ``conditions``."""
    fresh = []
    for backend in args.backends:
        before = conditions_now()
        run = await run_backend(backend, args)
        arguments = {k: getattr(args, k) for k in ("rates", "channels", "seconds", "drain")}
        fresh.append(run | {"conditions": {"before": before, "after": conditions_now(), "args": arguments}})
    kept = [run for run in results.get("runs") or [] if run.get("backend") not in args.backends]
    results.update(
        {
            "path": f"{PATH}; shortcut: the executor advertises {EXECUTOR_CPUS} CPUs, placement never waits",
            "backends": {
                "noop": "the executor's no-op backend: an attempt completes at once, no process is spawned",
                "local": "a real local process per job (`true`)",
                "docker": "a container per job (the test image), through the Docker API",
                "podman": "a container per job (the test image), through Podman's Docker-compatible API",
            },
            "runs": fresh + kept,
        }
    )
    # the headline fields (issue 6) from the first backend measured
    headline = results["runs"][0]
    results["rates"] = [
        {k: r[k] for k in ("via", "offered_rate", "achieved_rate", "p50_ms", "p99_ms", "lost", "duplicated")}
        | {"backend": headline["backend"]}
        for r in headline["rates"]
    ]
    if headline["drains"]:
        last = headline["drains"][-1]
        results.update({k: last[k] for k in ("drain_jobs", "drain_seconds", "lost", "duplicated")})
        results["drain_backend"] = headline["backend"]


async def part_local(args: argparse.Namespace) -> dict[str, Any]:
    """A drain of ``--local-jobs`` `true` jobs on a fresh local-backend stack (issue 23)."""
    async with warm_stack("local") as (stack, outcomes):
        return {"drain": await run_drain(stack, outcomes, args.local_jobs)}


async def part_sustained(args: argparse.Namespace) -> dict[str, Any]:
    """``--sustained-rate`` jobs/s offered over the bus for ``--sustained-seconds``, noop backend."""
    async with warm_stack("noop") as (stack, outcomes):
        return {"rate": await run_rate(stack, outcomes, args.sustained_rate, args.sustained_seconds, "bus")}


async def part_engine(engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """N containers through Trainyard's backend, then the engine's own `run --rm` loops, same run."""
    reason = e2e_engines.engine_unavailable(engine)
    if reason:
        return {"skipped": reason}
    n = args.containers
    spec = {
        "name": f"bench-{engine}",
        "command": ["true"],
        "image": e2e_engines.IMAGE,
        "resources": {"cpu": 1.0, "memory": 64},
    }
    async with warm_stack(engine, {"TRAINYARD_EXECUTOR_DEFAULT_IMAGE": e2e_engines.IMAGE}) as (
        stack,
        outcomes,
    ):
        trainyard = await run_drain(stack, outcomes, n, spec)
    print(json.dumps({"backend": engine, **trainyard}), flush=True)
    # placement never waits, the executor makes and starts TRAINYARD_EXECUTOR_CONTAINER_ENGINE_CALLS
    # (4) at a time (docs/executors.md): the concurrent loop runs --engine-concurrency at a time
    concurrency = min(n, args.engine_concurrency)
    loops = {
        "sequential": await e2e_engines.run_loop(engine, n, 1),
        "concurrent": await e2e_engines.run_loop(engine, n, concurrency),
    }
    print(json.dumps({"engine": engine, **loops}), flush=True)
    return {"image": e2e_engines.IMAGE, "job_spec": spec, "trainyard": trainyard, "engine": loops}


PARTS = ("runs", "local", "sustained", "docker", "podman")


async def main(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """Run the parts in ``args.only`` and merge them into ``results`` (the file's previous keys)."""
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]} | {
        k: v for k, v in (results.get("machine") or {}).items() if k not in ("cpus", "python")
    }
    parts = results.setdefault("parts", {})
    for name in args.only:
        print(f"== part {name}", file=sys.stderr, flush=True)
        if name == "runs":
            speed_before = machine_speed()
            await part_runs(args, results)
            results["machine"].update(speed_ms_before=speed_before, speed_ms_after=machine_speed())
            write(args.out, results)
            continue
        before = conditions_now()
        if name in ("docker", "podman"):
            part = await part_engine(name, args)
        else:
            part = await (part_local(args) if name == "local" else part_sustained(args))
        parts[name] = part | {"conditions": {"before": before, "after": conditions_now()}}
        write(args.out, results)  # after each part: a later part that fails loses only itself
    return results


def write(out: Path, results: dict[str, Any]) -> None:
    results["summary"] = summarize(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _parts(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    return names


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", type=_parts, default=list(PARTS), help=f"parts to run, of {','.join(PARTS)}"
    )
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["noop", "local"])
    parser.add_argument("--rates", type=_floats, default=[50.0, 200.0, 500.0, 1000.0])
    parser.add_argument("--channels", type=lambda s: s.split(","), default=["bus", "http"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--drain", type=lambda s: [int(x) for x in s.split(",") if x], default=[1000, 10000])
    parser.add_argument("--local-jobs", type=int, default=1000, help="part local: jobs drained")
    parser.add_argument("--sustained-rate", type=float, default=1000.0, help="part sustained: jobs/s offered")
    parser.add_argument("--sustained-seconds", type=float, default=60.0, help="part sustained: for how long")
    parser.add_argument("--containers", type=int, default=200, help="parts docker/podman: containers drained")
    parser.add_argument(
        "--engine-concurrency", type=int, default=200, help="parts docker/podman: the concurrent loop's width"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    arguments = parser.parse_args()
    previous = json.loads(arguments.out.read_text()) if arguments.out.exists() else {}
    outcome = asyncio.run(main(arguments, previous))
    write(arguments.out, outcome)
    print(table(outcome))
    print(f"wrote {arguments.out}")
