"""Chaos: kill every process of the embedded stack under a steady load, and audit what happened.

Real parts only: nats-server with its file store, the six services as processes, every job a real
local process that appends its runs to a marker file. In turn: ``kill -9`` of each service and a
restart on the same data dir and ports (the workflow service while an array of six is half
submitted: afterwards each index has exactly one job and the run succeeds); ``kill -9`` of
nats-server and a restart on its store; a second executor, then one of the two frozen (SIGSTOP, with its
jobs) until its attempts moved to the other, then thawed; the same events published twice. A
consumer that dies before its ack is what every ``kill -9`` under load does (the batch in hand is
redelivered to the restarted service).

Then the audit (``audit.py``) over the whole jobs stream, the job records, the marker file and
MLflow's store: every offered job exists once and ended once, no attempt ran twice, no two runs of
a job executed at once, a succeeded model job has exactly one model version. Recovery times go to
``tests/chaos/results.json`` and a printed table. See docs/chaos.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from trainyard_client.stack import SERVICES, EmbeddedStack
from trainyard_contracts import ExecutorHeartbeat, JobRecord
from trainyard_registry.app import ACK_WAIT_SECONDS as REGISTRY_ACK_WAIT_SECONDS

from .audit import audit, audit_events, parse_markers
from .harness import (
    ChaosStack,
    Load,
    Mirror,
    job_spec,
    model_versions_by_job,
    process_alive,
    telemetry_counts,
    until,
)

pytestmark = [pytest.mark.chaos, pytest.mark.local, pytest.mark.timeout(900)]

RESULTS = Path(__file__).parent / "results.json"
MAIN_EXECUTOR = "chaos-a"
SECOND_EXECUTOR = "chaos-b"
# short leases so that a lost executor is noticed in seconds, not the default 15 s
STACK_ENV = {
    "TRAINYARD_EXECUTOR_ID": MAIN_EXECUTOR,
    "TRAINYARD_EXECUTOR_HEARTBEAT_SECONDS": "1",
    "TRAINYARD_EXECUTOR_LEASE_SECONDS": "5",
    "TRAINYARD_EXECUTOR_GRACE_SECONDS": "2",
}
RATE = 2.0  # jobs offered per second
PROBES = 4  # long-running jobs for the frozen-executor scenario
RECOVERY_TIMEOUT = 120.0
REGISTRY_ACK_WAIT = REGISTRY_ACK_WAIT_SECONDS  # a killed registry's event comes back after it


def phase(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", flush=True)


@dataclass
class Recovery:
    fault: str
    target: str
    fault_at: float
    healthy_s: float | None = None
    progress_s: float | None = None
    progress: str = ""
    note: str = ""
    in_hand: list[str] = field(default_factory=list)
    """jobs whose work the killed service held (registry: succeeded, model not yet registered)"""


def since(t0: float, t1: float | None) -> float | None:
    return None if t1 is None else round(t1 - t0, 2)


async def settle(mirror: Mirror, jobs: int = 3) -> None:
    """The pipeline works again: a few jobs succeeded after now."""
    now = time.time()
    await until(lambda: mirror.count("succeeded", now) >= jobs, RECOVERY_TIMEOUT, "jobs succeed again")


async def kill_and_restart(chaos: ChaosStack, mirror: Mirror, load: Load, name: str) -> Recovery:
    """``kill -9`` one service while it has work in hand, restart it, time its recovery."""
    in_hand: list[str] = []
    if name == "executor":  # while its attempts' processes run (started, not ended)

        def processes_running() -> bool:
            records = mirror.records()
            runs = parse_markers(load.marker.read_text().splitlines()) if load.marker.exists() else []
            live = [
                r
                for r in runs
                if not r.ended
                and (rec := records.get(r.job_id)) is not None
                and rec.state.value == "running"
                and rec.executor_id == MAIN_EXECUTOR
            ]
            return len(live) >= 2

        await until(processes_running, 60, "the executor runs attempts", poll=0.05)
    if name == "registry":  # while it registers a model (a succeeded model job not yet registered)
        seqs = [load.offer(model=True) for _ in range(3)]

        def unregistered() -> bool:
            records = mirror.records()
            return any(
                (job := load.offers.get(s)) in records
                and records[job].state.value == "succeeded"
                and records[job].model is None
                for s in seqs
            )

        await until(unregistered, 60, "a model job succeeded, its model not yet registered", poll=0.02)
    in_hand = [
        j
        for j, r in mirror.records().items()
        if r.state.value == "succeeded" and r.spec.outputs and r.spec.outputs.model and r.model is None
    ]
    before = await telemetry_counts(chaos.stack.metrics_urls["telemetry"]) if name == "telemetry" else {}
    killed = chaos.kill(name)
    restarted = chaos.restart(name)
    rec = Recovery(fault="kill -9 + restart", target=name, fault_at=killed)
    if name == "registry":
        rec.in_hand = in_hand
    await until(lambda: chaos.healthy(name), RECOVERY_TIMEOUT, f"{name} healthy again", poll=0.1)
    rec.healthy_s = since(killed, time.time())

    async def progressed() -> float | None:
        if name == "submission":
            times = [t for t in load.accepted_at.values() if t > killed]
            return min(times) if times else None
        if name == "scheduler":
            obs = mirror.first("scheduled", restarted)
        elif name == "executor":
            obs = mirror.first("running", restarted, MAIN_EXECUTOR)
        elif name == "registry":
            obs = mirror.first("model", restarted)
        else:  # telemetry: its counters start again at zero and count what it consumes
            counts = await telemetry_counts(chaos.stack.metrics_urls["telemetry"])
            return time.time() if sum(counts.values()) > 0 else None
        return obs.at if obs else None

    what = {
        "submission": "a job accepted",
        "scheduler": "a job scheduled",
        "executor": "an attempt running on the restarted executor",
        "registry": "a model version registered",
        "telemetry": "events counted again",
    }[name]
    rec.progress = what
    rec.progress_s = since(killed, await until(progressed, RECOVERY_TIMEOUT, f"after {name}: {what}"))
    if name == "telemetry":
        rec.note = f"event counters before the kill: {int(sum(before.values()))} (in memory, start at 0)"
    return rec


ARRAY_SIZE = 6


def pipeline_under_fault(marker: Path) -> dict[str, Any]:
    """One array step (six children, two at a time): the workflow service is killed while it is
    between children; each child is a marker-writing job, audited like every other job."""
    job = job_spec(0, marker, 1.5)
    job.update(name="chaos-array", labels={"chaos-pipeline": "1"})
    return {"name": "chaos-array", "steps": [{"name": "work", "array": f"0-{ARRAY_SIZE - 1}%2", "job": job}]}


async def kill_workflow_mid_array(
    chaos: ChaosStack, mirror: Mirror, marker: Path
) -> tuple[Recovery, list[str]]:
    """``kill -9`` the workflow service mid-array (some children submitted, some not yet), restart
    it, wait for the run to finish. Findings: an index with no job or more than one, a run that did
    not succeed (the audit of the job records covers each child's runs)."""
    with chaos.stack.client() as api:
        run_id = (await asyncio.to_thread(api.run_pipeline, pipeline_under_fault(marker))).run_id

        def children() -> dict[str, list[str]]:
            by_index: dict[str, list[str]] = {}
            for job_id, record in mirror.records().items():
                labels = record.spec.labels or {}
                if labels.get("trainyard.dev/pipeline-run") == run_id:
                    by_index.setdefault(labels.get("trainyard.dev/array-index", "?"), []).append(job_id)
            return by_index

        await until(lambda: 1 <= len(children()) < ARRAY_SIZE, 60, "the array half submitted", poll=0.05)
        killed = chaos.kill("workflow")
        chaos.restart("workflow")
        rec = Recovery(fault="kill -9 + restart (mid-array)", target="workflow", fault_at=killed)
        await until(lambda: chaos.healthy("workflow"), RECOVERY_TIMEOUT, "workflow healthy again", poll=0.1)
        rec.healthy_s = since(killed, time.time())

        async def finished() -> float | None:
            run = await asyncio.to_thread(api.pipeline, run_id)
            return time.time() if run.state.value != "running" else None

        rec.progress = "the array in flight finished"
        rec.progress_s = since(
            killed, await until(finished, RECOVERY_TIMEOUT, "the pipeline run finished", 0.2)
        )
        run = await asyncio.to_thread(api.pipeline, run_id)
    by_index = children()
    findings = [f"pipeline {run_id}: ended {run.state.value}"] if run.state.value != "succeeded" else []
    for index in map(str, range(ARRAY_SIZE)):
        jobs = by_index.get(index, [])
        if len(jobs) != 1:
            findings.append(f"pipeline {run_id}: array index {index} has {len(jobs)} jobs {sorted(jobs)}")
    rec.note = f"{sum(map(len, by_index.values()))} child jobs for {ARRAY_SIZE} indices"
    return rec, findings


def settled(record: JobRecord) -> dict[str, Any]:
    """The record as a fenced attempt must leave it: all of it but the attempts' ``stopping``
    marks, which the scheduler clears once the thawed executor reports their processes gone (it
    holds their room until then; a stale attempt's end report does nothing else), without
    recording anything of what they did."""
    data = record.model_dump(mode="json")
    data.pop("model", None)  # the registry's, for the attempt that succeeded elsewhere
    for info in data.get("attempts", []):
        info.pop("stopping", None)
    return data


async def kill_broker(chaos: ChaosStack, mirror: Mirror) -> Recovery:
    killed = chaos.kill_nats()

    async def noticed() -> bool:  # every service lost the broker (its /healthz pings it)
        health = await asyncio.gather(*(chaos.healthy(name) for name in SERVICES))
        return not any(health)

    with contextlib.suppress(AssertionError):  # a service that never notices is no reason to stop
        await until(noticed, 10, "every service noticed the broker is gone", poll=0.2)
    health = await asyncio.gather(*(chaos.healthy(name) for name in SERVICES))
    still_healthy = [name for name, ok in zip(SERVICES, health, strict=True) if ok]
    restarted = chaos.restart_nats()
    rec = Recovery(fault="kill -9 + restart (store kept)", target="nats-server", fault_at=killed)
    await until(chaos.all_healthy, RECOVERY_TIMEOUT, "every service healthy after the broker came back")
    rec.healthy_s = since(killed, time.time())
    await mirror.restart()
    rec.progress = "a job succeeded"
    obs = await until(lambda: mirror.first("succeeded", restarted), RECOVERY_TIMEOUT, "a job succeeds again")
    rec.progress_s = since(killed, obs.at)
    rec.note = f"broker down {restarted - killed:.1f}s" + (
        f"; /healthz still 2xx without the broker: {', '.join(still_healthy)}" if still_healthy else ""
    )
    return rec


async def heartbeat_of(mirror: Mirror, executor_id: str) -> ExecutorHeartbeat | None:
    kv = await mirror.js.key_value(mirror.subjects.buckets.executors)
    try:
        entry = await kv.get(executor_id)
    except Exception:
        return None
    return ExecutorHeartbeat.model_validate_json(entry.value or b"{}")


async def freeze_an_executor(
    chaos: ChaosStack, mirror: Mirror, load: Load, marker: Path, release: Path, fenced: dict[str, int]
) -> list[Recovery]:
    """Two executors; the one running the most long attempts freezes (with its jobs), its attempts
    move to the other with a new attempt number, then it comes back: the old attempts are killed
    and what they did is not recorded."""
    chaos.start_executor(SECOND_EXECUTOR, STACK_ENV)
    await until(lambda: chaos.healthy(SECOND_EXECUTOR), RECOVERY_TIMEOUT, "the second executor healthy")
    # the scheduler packs jobs (best fit), so an idle second executor may get none: wait for its lease
    await until(
        lambda: heartbeat_of(mirror, SECOND_EXECUTOR), 60, "the second executor's heartbeat in the bucket"
    )
    probes = [load.offer(lambda seq: job_spec(seq, marker, 0.5, release=release)) for _ in range(PROBES)]

    def probes_running() -> dict[str, str] | None:
        records = mirror.records()
        found = {load.offers[s]: records[load.offers[s]] for s in probes if load.offers.get(s) in records}
        if len(found) < PROBES or any(r.state.value != "running" for r in found.values()):
            return None
        started = {r.job_id for r in parse_markers(marker.read_text().splitlines()) if r.job_id in found}
        if len(started) < PROBES:  # "running" is recorded just before the process is spawned
            return None
        return {job: r.executor_id for job, r in found.items()}  # type: ignore[misc]

    placed = await until(probes_running, 60, "every long attempt running")
    victim = max((MAIN_EXECUTOR, SECOND_EXECUTOR), key=lambda e: sum(1 for x in placed.values() if x == e))
    survivor = SECOND_EXECUTOR if victim == MAIN_EXECUTOR else MAIN_EXECUTOR
    name = victim if victim == SECOND_EXECUTOR else "executor"
    victim_process = chaos.process(name).process
    assert victim_process is not None
    frozen_probes = {job for job, e in placed.items() if e == victim}

    frozen = chaos.freeze(victim_process.pid)
    frozen_at = time.time()
    on_victim = {
        job: r.attempt
        for job, r in mirror.records().items()
        if r.executor_id == victim and r.state.value in ("scheduled", "running")
    }
    rec = Recovery(
        fault="SIGSTOP (with its jobs), then SIGCONT", target=f"executor {victim}", fault_at=frozen_at
    )
    requeued = await until(
        lambda: mirror.first("requeued", frozen_at),
        RECOVERY_TIMEOUT,
        "the frozen executor's attempt requeued",
    )
    rec.healthy_s = since(frozen_at, requeued.at)

    def moved_on() -> bool:
        records = mirror.records()
        for job in frozen_probes:
            r = records[job]
            if not (
                r.state.value == "succeeded"
                and r.attempt > on_victim.get(job, 1)
                and r.executor_id == survivor
            ):
                return False
        # the load's attempts caught by the freeze: done elsewhere (or they had ended just before it),
        # so that the thaw below cannot make two runs of one job execute at once
        return all(records[j].state.terminal for j in on_victim)

    await until(moved_on, RECOVERY_TIMEOUT, f"the frozen executor's attempts done on {survivor}")
    rec.progress = f"its long attempts succeeded on {survivor} as new attempts"
    rec.progress_s = since(frozen_at, time.time())
    records = mirror.records()
    for job, attempt in on_victim.items():
        if records[job].attempt > attempt:
            fenced[job] = attempt
    # the mirror may have lagged at the freeze: an attempt placed on the victim before it froze and
    # ended by the scheduler after is fenced too (only settled jobs: their records must not change)
    for job, r in records.items():
        for info in r.attempts:
            if (
                r.state.terminal
                and info.executor_id == victim
                and info.number < r.attempt
                and info.scheduled_at is not None
                and info.scheduled_at.timestamp() < frozen_at
                and (info.ended_at is None or info.ended_at.timestamp() >= frozen_at)
            ):
                fenced.setdefault(job, info.number)
    assert frozen_probes <= set(fenced), "a frozen long attempt was not superseded"
    before = {job: settled(records[job]) for job in fenced}

    # back from the dead: the old attempts must be killed, and nothing they do recorded
    chaos.thaw(frozen)
    thawed_at = time.time()
    zombies = [
        r
        for r in parse_markers(marker.read_text().splitlines())
        if r.job_id in frozen_probes and r.attempt == fenced[r.job_id]
    ]
    assert len(zombies) == len(frozen_probes), "every frozen long attempt left its start in the marker"
    await until(
        lambda: not any(process_alive(z.pid) for z in zombies), 60, "the fenced attempts' processes killed"
    )
    killed_after = time.time() - thawed_at

    async def forgotten() -> bool:
        beat = await heartbeat_of(mirror, victim)
        return (
            beat is not None
            and beat.time.timestamp() > thawed_at
            and not any(ref.job_id in fenced and ref.attempt == fenced[ref.job_id] for ref in beat.running)
        )

    await until(forgotten, 60, f"{victim} no longer holds the fenced attempts")
    after = mirror.records()
    changed = {
        job: {
            k: (v, settled(after[job]).get(k))
            for k, v in before[job].items()
            if settled(after[job]).get(k) != v
        }
        for job in fenced
        if settled(after[job]) != before[job]
    }
    assert not changed, f"a fenced attempt changed a record after it came back: {changed}"
    release.touch()  # now the long attempts on the survivor may end
    rec.note = (
        f"{len(fenced)} attempts fenced ({len(frozen_probes)} long); after SIGCONT their processes"
        f" were killed within {killed_after:.1f}s and no record changed"
    )
    return [rec]


async def duplicate_deliveries(
    chaos: ChaosStack, mirror: Mirror, marker: Path, after: float
) -> tuple[Recovery, dict[str, Any]]:
    """Publish the events of finished jobs again (fresh Nats-Msg-Id): nothing may change."""
    events = await mirror.job_events()
    records = mirror.records()
    chosen = [
        job
        for job, r in records.items()
        if r.state.value == "succeeded" and r.submitted_at.timestamp() > after
    ]
    chosen.sort(key=lambda j: (records[j].model is None, j))  # model jobs first
    chosen = chosen[:12]
    assert chosen, "no succeeded job to replay"
    again = [e for e in events if e.get("job_id") in set(chosen)]
    runs_before = len(parse_markers(marker.read_text().splitlines()))
    revisions = {job: mirror.view.revisions[job] for job in chosen}  # type: ignore[union-attr]
    counts = await telemetry_counts(chaos.stack.metrics_urls["telemetry"])
    versions = model_versions_by_job(chaos.stack.data_dir / "mlflow" / "mlflow.db")
    published_at = time.time()
    await mirror.republish(again)
    rec = Recovery(fault="events published twice", target="jobs stream", fault_at=published_at)
    await until(mirror.consumers_caught_up, 60, "every consumer took the republished events", poll=0.2)
    rec.healthy_s = since(published_at, time.time())
    rec.progress = "consumers caught up, nothing changed"
    checks = {
        "republished_events": len(again),
        "jobs": len(chosen),
        "model_jobs": sum(1 for j in chosen if records[j].model is not None),
        "records_changed": sorted(
            j
            for j in chosen
            if mirror.view.revisions[j] != revisions[j]  # type: ignore[union-attr]
        ),
        "new_runs": len(parse_markers(marker.read_text().splitlines())) - runs_before,
        "telemetry_delta": {
            k: v - counts.get(k, 0)
            for k, v in (await telemetry_counts(chaos.stack.metrics_urls["telemetry"])).items()
            if v != counts.get(k, 0)
        },
        "model_versions_changed": sorted(
            j
            for j, n in model_versions_by_job(chaos.stack.data_dir / "mlflow" / "mlflow.db").items()
            if j in chosen and versions.get(j) != n
        ),
    }
    rec.note = f"{len(again)} events of {len(chosen)} jobs ({checks['model_jobs']} with a model)"
    return rec, checks


def table(recoveries: list[Recovery]) -> str:
    head = f"{'fault':<38} {'target':<22} {'healthy s':>9} {'progress s':>10}  progress / note"
    lines = [head, "-" * len(head)]
    for r in recoveries:
        lines.append(
            f"{r.fault:<38} {r.target:<22} {r.healthy_s!s:>9} {r.progress_s!s:>10}  {r.progress}"
            + (f" ({r.note})" if r.note else "")
        )
    return "\n".join(lines)


async def test_no_job_is_lost_or_run_twice_when_every_process_is_killed(tmp_path_factory):
    data = tmp_path_factory.mktemp("chaos")
    marker, release = data / "runs.marker", data / "release-long-attempts"
    stack = EmbeddedStack(
        data,
        api_port=None,
        nats_port=None,
        executor_cpu=4,
        executor_memory=8192,
        env=STACK_ENV,
        ready_timeout=180,
        more_executor_ids=[SECOND_EXECUTOR],
        cohost=False,  # each service killed and restarted alone (the co-hosted three die together)
    )
    began = time.time()
    stack.start()  # blocking, and nothing else runs yet; it stops what it started if it fails
    chaos = ChaosStack(stack)
    mirror = Mirror(stack.nats_url, stack.prefix, **stack.nats_connect_options("admin"))
    load = Load(stack, marker, rate=RATE)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    recoveries: list[Recovery] = []
    fenced: dict[str, int] = {}
    workflow_findings: list[str] = []
    try:
        await mirror.start()
        tasks = [
            asyncio.create_task(load.offer_steadily(stop)),
            asyncio.create_task(load.submit_forever()),
        ]
        await settle(mirror, jobs=5)
        telemetry_back = time.time()
        for name in SERVICES:
            phase(f"kill -9 {name}")
            if name == "workflow":
                recovery, workflow_findings = await kill_workflow_mid_array(chaos, mirror, marker)
                recoveries.append(recovery)
                continue
            recoveries.append(await kill_and_restart(chaos, mirror, load, name))
            if name == "telemetry":
                telemetry_back = time.time()
            await settle(mirror)
        phase("kill -9 nats-server")
        recoveries.append(await kill_broker(chaos, mirror))
        await settle(mirror)
        phase("a second executor; freeze one")
        recoveries += await freeze_an_executor(chaos, mirror, load, marker, release, fenced)
        await settle(mirror)

        phase("stop the load, drain")
        stop.set()
        await until(lambda: load.pending == 0, RECOVERY_TIMEOUT, "every offer answered")
        offered = set(load.offers.values())

        def all_ended() -> bool:
            records = mirror.records()
            return all(j in records and records[j].state.terminal for j in offered)

        await until(all_ended, 180, "every job ended", poll=0.5)
        phase("every job ended")

        def models_in() -> bool:
            records = mirror.records()
            return all(
                records[load.offers[s]].model is not None
                for s in load.model_seqs
                if records[load.offers[s]].state.value == "succeeded"  # type: ignore[index]
            )

        # a "succeeded" the registry held when it was killed comes back after the consumer's
        # ack_wait: wait that long past the kill rather than call the model lost
        registry_killed = next(r.fault_at for r in recoveries if r.target == "registry")
        wait_models = max(120.0, registry_killed + REGISTRY_ACK_WAIT + 60 - time.time())
        with contextlib.suppress(AssertionError):  # what is missing, the audit reports
            await until(models_in, wait_models, "every succeeded model job has its model", poll=0.5)
        phase("models registered")
        registry = next(r for r in recoveries if r.target == "registry")
        for job in registry.in_hand:
            seen = next((o for o in mirror.observations if o.kind == "model" and o.job_id == job), None)
            recoveries.append(
                Recovery(
                    fault="kill -9 during a registration",
                    target="registry (event in hand)",
                    fault_at=registry.fault_at,
                    progress="its model registered (redelivery after ack_wait)",
                    progress_s=since(registry.fault_at, seen.at if seen else None),
                    note=f"job {job}",
                )
            )
        phase("publish events twice")
        dup, dup_checks = await duplicate_deliveries(chaos, mirror, marker, telemetry_back)
        recoveries.append(dup)

        phase("audit")
        events = await mirror.job_events()
        records = {job: json.loads(r.model_dump_json()) for job, r in mirror.records().items()}
        runs = parse_markers(marker.read_text().splitlines())
        versions = model_versions_by_job(stack.data_dir / "mlflow" / "mlflow.db")
        findings = audit(
            offered=load.offers,
            records=records,
            events=audit_events(events),
            runs=runs,
            model_versions=versions,
            model_jobs=load.model_seqs,
            fenced=fenced,
            frozen_at=next((r.fault_at for r in recoveries if r.fault.startswith("SIGSTOP")), None),
        )
    except BaseException:
        print(chaos.log_tails())
        print(f"data dir (logs, marker): {data}")
        raise
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await mirror.stop()
        chaos.stop_extra_executors()
        await asyncio.to_thread(stack.stop)

    summary = findings.summary()
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "duration_s": round(time.time() - began, 1),
        "load": {
            "rate_per_s": RATE,
            "offered": len(load.offers),
            "model_jobs": len(load.model_seqs),
            "submit_retries": load.failures,
        },
        "events": len(events),
        "runs": len(runs),
        "fenced_attempts": len(fenced),
        "duplicate_deliveries": dup_checks,
        "audit": summary,
        "workflow_mid_array": workflow_findings,
        "recoveries": [asdict(r) for r in recoveries],
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(recoveries))
    print(
        f"jobs {summary['jobs']} (offered {summary['offered']}, succeeded {summary['succeeded']}),"
        f" runs {summary['runs']}, events {len(events)}, submit retries {load.failures};"
        f" lost {summary['lost']}, duplicated {summary['duplicated']}"
    )
    for line in findings.lost + findings.duplicated + workflow_findings:
        print("  ", line)
    for line in findings.notes:
        print("   note:", line)
    assert summary["succeeded"] == summary["jobs"], "every chaos job should succeed"
    assert not dup_checks["records_changed"] and dup_checks["new_runs"] == 0
    assert not dup_checks["telemetry_delta"]
    assert not dup_checks["model_versions_changed"]
    assert findings.lost == [] and findings.duplicated == []
    assert workflow_findings == [], "the array the workflow service was killed in: one job per index"
