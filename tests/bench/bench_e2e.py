"""End-to-end benchmark of the job path on the embedded stack (`make bench`, JSON out).

Real path: nats-server with file storage, the five services as processes, and every job a real
local process (`true`) — no shortcut backend. The executor advertises 512 CPUs so placement never
waits (each job asks for 0.01 CPU); that override is the one shortcut, and it is named in the JSON.

Open loop: jobs are offered at a fixed rate for a fixed time through the bus intake (and through
the HTTP API at the lowest rate), whether or not the system keeps up. Per job, the stage times come
from the job record's state times (submitted, scheduled, running, succeeded), all taken on this
machine's clock. Closed loop: N jobs submitted at once, time until all are terminal.

Usage: python tests/bench/bench_e2e.py [--rates 50,200,500] [--seconds 10] [--drain 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats

from trainyard_client.stack import EmbeddedStack
from trainyard_contracts import JobRecord

NOOP = {"name": "noop", "command": ["true"], "resources": {"cpu": 0.01, "memory": 1}}
OUT = Path(__file__).parent / "results" / "e2e.json"


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


async def offer_over_bus(stack: EmbeddedStack, rate: float, seconds: float) -> list[str]:
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    inbox = nc.new_inbox()
    job_ids: list[str] = []
    sub = await nc.subscribe(inbox, cb=None)
    total = int(rate * seconds)
    body = json.dumps(NOOP).encode()
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
                )
            )
        )
    await asyncio.gather(*pending)
    deadline = time.perf_counter() + 120
    while len(job_ids) < total and time.perf_counter() < deadline:
        try:
            msg = await sub.next_msg(timeout=5)
        except nats.errors.TimeoutError:
            continue
        reply = json.loads(msg.data)
        if reply.get("accepted"):
            job_ids.append(reply["job_id"])
    await nc.drain()
    return job_ids


async def offer_over_http(stack: EmbeddedStack, rate: float, seconds: float) -> list[str]:
    headers = {"Authorization": f"Bearer {stack.token()}", "Content-Type": "application/json"}
    body = json.dumps(NOOP)
    total = int(rate * seconds)
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=60) as client:
        start = time.perf_counter()
        tasks = []
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(client.post("/v1/jobs", content=body)))
        responses = await asyncio.gather(*tasks)
    return [r.json()["job_id"] for r in responses if r.status_code == 201]


async def records(stack: EmbeddedStack, job_ids: list[str], timeout: float) -> list[JobRecord]:
    nc = await nats.connect(stack.nats_url)
    kv = await nc.jetstream().key_value(f"{stack.prefix}_jobs")
    deadline = time.perf_counter() + timeout
    done: dict[str, JobRecord] = {}
    while time.perf_counter() < deadline and len(done) < len(job_ids):
        for job_id in job_ids:
            if job_id in done:
                continue
            entry = await kv.get(job_id)
            record = JobRecord.model_validate_json(entry.value)
            if record.state.terminal:
                done[job_id] = record
        if len(done) < len(job_ids):
            await asyncio.sleep(1.0)  # polling the records for completion, with a deadline
    await nc.drain()
    return list(done.values())


def stage_stats(recs: list[JobRecord]) -> dict[str, Any]:
    def span(r: JobRecord, a: str, b: str) -> float | None:
        t = r.state_times
        return (t[b] - t[a]).total_seconds() if a in t and b in t else None

    out: dict[str, Any] = {}
    for name, a, b in [
        ("submitted_to_scheduled", "submitted", "scheduled"),
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
    """User + system CPU seconds of each service process (from /proc; jobs are not included)."""
    tick = os.sysconf("SC_CLK_TCK")
    usage = {}
    for name, service in stack.services.items():
        if service.process is None:
            continue
        try:
            fields = Path(f"/proc/{service.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        usage[name] = (int(fields[11]) + int(fields[12])) / tick
    return usage


def audit(recs: list[JobRecord], offered: int) -> dict[str, int]:
    duplicated = sum(1 for r in recs if len([a for a in r.attempts if a.started_at]) > 1)
    succeeded = sum(1 for r in recs if r.state.value == "succeeded")
    return {"offered": offered, "succeeded": succeeded, "lost": offered - len(recs), "duplicated": duplicated}


async def run_rate(stack: EmbeddedStack, rate: float, seconds: float, via: str) -> dict[str, Any]:
    before = cpu_seconds(stack)
    t0 = time.perf_counter()
    offer = offer_over_bus if via == "bus" else offer_over_http
    job_ids = await offer(stack, rate, seconds)
    recs = await records(stack, job_ids, timeout=300)
    wall = time.perf_counter() - t0
    after = cpu_seconds(stack)
    ends = [r.state_times["succeeded"] for r in recs if "succeeded" in r.state_times]
    starts = [r.state_times["submitted"] for r in recs]
    achieved = (len(ends) / (max(ends) - min(starts)).total_seconds()) if ends else 0.0
    stats = stage_stats(recs)
    return {
        "via": via,
        "offered_rate": rate,
        "seconds": seconds,
        "achieved_rate": round(achieved, 1),
        "p50_ms": stats["submitted_to_running"]["p50_ms"],
        "p99_ms": stats["submitted_to_running"]["p99_ms"],
        "stages": stats,
        **audit(recs, int(rate * seconds)),
        "wall_seconds": round(wall, 1),
        "cpu_ms_per_job": {
            k: round((after.get(k, 0) - before.get(k, 0)) * 1000 / max(len(recs), 1), 3) for k in after
        },
    }


async def run_drain(stack: EmbeddedStack, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    job_ids = await offer_over_bus(stack, rate=1e9, seconds=n / 1e9)
    recs = await records(stack, job_ids, timeout=600)
    ends = [r.state_times.get("succeeded") or r.updated_at for r in recs]
    starts = [r.state_times["submitted"] for r in recs]
    seconds = (max(ends) - min(starts)).total_seconds() if recs else None
    return {
        "drain_jobs": n,
        "drain_seconds": round(seconds, 2) if seconds else None,
        "drain_wall_seconds": round(time.perf_counter() - t0, 2),
        **{k: v for k, v in audit(recs, n).items() if k in ("lost", "duplicated", "succeeded")},
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="trainyard-bench-"))
    env = {
        "TRAINYARD_LOG_LEVEL": "WARNING",
        "TRAINYARD_EXECUTOR_CPU": "512",
        "TRAINYARD_EXECUTOR_MEMORY": str(1024 * 1024),
    }
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "path": "embedded stack, JetStream file storage, one replica per service, local-process "
        "`true` jobs; shortcut: executor advertises 512 CPUs so placement never waits",
        "rates": [],
    }
    with EmbeddedStack(data, api_port=None, nats_port=None, env=env, ready_timeout=180) as stack:
        # warm-up: first job pays for imports and consumer creation
        await run_rate(stack, 5, 1, "bus")
        for rate in args.rates:
            results["rates"].append(await run_rate(stack, rate, args.seconds, "bus"))
            print(json.dumps(results["rates"][-1]), flush=True)
        results["rates"].append(await run_rate(stack, min(args.rates), args.seconds, "http"))
        print(json.dumps(results["rates"][-1]), flush=True)
        results.update(await run_drain(stack, args.drain))
    return results


def table(results: dict[str, Any]) -> str:
    rows = ["via   offered  achieved  p50_ms  p99_ms  lost  dup"]
    for r in results["rates"]:
        rows.append(
            f"{r['via']:<5} {r['offered_rate']:>7} {r['achieved_rate']:>9} "
            f"{r['p50_ms']!s:>7} {r['p99_ms']!s:>7} {r['lost']:>5} {r['duplicated']:>4}"
        )
    rows.append(
        f"drain {results['drain_jobs']} jobs: {results['drain_seconds']} s, "
        f"lost {results['lost']}, duplicated {results['duplicated']}"
    )
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", type=lambda s: [float(x) for x in s.split(",")], default=[50.0, 200.0, 500.0]
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--drain", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=OUT)
    arguments = parser.parse_args()
    outcome = asyncio.run(main(arguments))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(outcome, indent=2) + "\n")
    print(table(outcome))
    print(f"wrote {arguments.out}")
