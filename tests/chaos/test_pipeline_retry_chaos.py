"""Chaos: ``pipeline retry`` of a run with step outputs, the workflow service ``kill -9``-ed twice
while the retry goes on (right after the retry was answered, and again while the retried array
step is half submitted), restarted on the same data dir and port each time.

Real parts only: the embedded stack (nats-server with its file store, the six services as
processes), every step a real local process that appends its runs to a marker file and writes
``outputs.json``. The run fails first (its ``flaky`` step finds no file it needs); the file is
made, the run retried. The audit (``audit.audit_pipeline_run`` and the marker rules): each (step,
index, step attempt) submitted once, the step that had succeeded never submitted again, every
``${{ steps.X.outputs.Y }}`` filled in with what the job the run names for X reported (``prepare``'s
from before the retry, ``flaky``'s from its retried job), no attempt run twice. Recovery times go
to ``tests/chaos/results_pipeline_retry.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from trainyard_client.stack import EmbeddedStack

from .audit import (
    TICK_SECONDS,
    attempts_run_twice,
    audit_pipeline_run,
    overlapping_runs,
    parse_markers,
    run_jobs,
)
from .harness import MARKING, PY, ChaosStack, Mirror, until

pytestmark = [pytest.mark.chaos, pytest.mark.local, pytest.mark.timeout(600)]

RESULTS = Path(__file__).parent / "results_pipeline_retry.json"
RECOVERY_TIMEOUT = 120.0
FAN = 4
# argv: marker, seconds of work, a file that must exist ('' = none), then what the step is handed
# (its ${{ steps.X.outputs.Y }} filled in: in argv so the audit compares it with the record)
STEP_CODE = (
    MARKING
    + f"""
seconds, needed = float(sys.argv[2]), sys.argv[3]
if needed and not os.path.exists(needed):
    sys.exit(3)
until = time.time() + seconds
while time.time() < until:
    time.sleep({TICK_SECONDS})
    mark('tick')
out = os.path.join(os.environ['TRAINYARD_OUTPUT_DIR'], 'outputs.json')
json.dump({{'token': 'token-' + job, 'own': job}}, open(out, 'w'))
mark('end')
"""
)


def step(
    name: str, marker: Path, seconds: float, *handed: str, needed: Path | None = None, **more: Any
) -> dict:
    command = [PY, "-c", STEP_CODE, str(marker), f"{seconds:.1f}", str(needed or ""), *handed]
    job = {"name": f"retry-chaos-{name}", "command": command, "resources": {"cpu": 0.25, "memory": 64}}
    return {"name": name, "job": job, **more}


def pipeline(marker: Path, needed: Path) -> dict[str, Any]:
    """prepare -> flaky (fails until ``needed`` exists) -> fan (an array of four, two at a time) ->
    report; each hand-over an output, the token of prepare's job reaching report past the retry."""
    token = "--token=${{ steps.prepare.outputs.token }}"
    return {
        "name": "retry-chaos",
        "steps": [
            step("prepare", marker, 0.5),
            step("flaky", marker, 1.0, token, needed=needed, depends=["prepare"]),
            step(
                "fan",
                marker,
                1.5,
                "--after=${{ steps.flaky.outputs.own }}",
                depends=["flaky"],
                array=f"0-{FAN - 1}%2",
            ),
            step(
                "report",
                marker,
                0.2,
                token,
                "--flaky=${{ steps.flaky.outputs.own }}",
                depends=["fan", "prepare", "flaky"],
            ),
        ],
    }


async def test_a_retry_with_step_outputs_survives_kill_9_of_the_workflow_service(tmp_path_factory):
    data = tmp_path_factory.mktemp("retry-chaos")
    marker, needed = data / "runs.marker", data / "flaky-may-succeed"
    stack = EmbeddedStack(
        data, api_port=None, nats_port=None, executor_cpu=4, executor_memory=8192, ready_timeout=180
    )
    began = time.time()
    stack.start()
    chaos = ChaosStack(stack)
    mirror = Mirror(stack.nats_url, stack.prefix, **stack.nats_connect_options("admin"))
    document = pipeline(marker, needed)
    kills: list[dict[str, Any]] = []

    def records() -> dict[str, dict[str, Any]]:
        return {job: r.model_dump(mode="json") for job, r in mirror.records().items()}

    try:
        await mirror.start()
        with stack.client() as api:
            run_id = (await asyncio.to_thread(api.run_pipeline, document)).run_id

            async def ended() -> Any:
                run = await asyncio.to_thread(api.pipeline, run_id)
                return run if run.state.value != "running" else None

            failed = await until(ended, RECOVERY_TIMEOUT, "the first attempt ended")
            assert failed.state.value == "failed", failed.steps["flaky"]
            assert failed.steps["prepare"].state.value == "succeeded"
            prepared = failed.steps["prepare"].jobs[0].job_id

            needed.touch()  # what failed flaky is fixed
            await asyncio.to_thread(api.retry_pipeline, run_id, 1)

            async def kill_and_restart(when: str) -> None:
                at_kill = sorted(f"{s}[{i}]" for s, i, a in run_jobs(run_id, records()) if a == 2)
                killed = chaos.kill("workflow")
                chaos.restart("workflow")
                await until(lambda: chaos.healthy("workflow"), RECOVERY_TIMEOUT, "workflow healthy", poll=0.1)
                kills.append(
                    {
                        "when": when,
                        "retried_jobs_at_kill": at_kill,
                        "healthy_s": round(time.time() - killed, 2),
                    }
                )

            await kill_and_restart("right after the retry was answered")

            def fan_half_submitted() -> bool:
                fan = [k for k in run_jobs(run_id, records()) if k[0] == "fan" and k[2] == 2]
                return 1 <= len(fan) < FAN

            await until(fan_half_submitted, RECOVERY_TIMEOUT, "the retried fan half submitted", poll=0.05)
            await kill_and_restart("the retried array step half submitted")
            done = await until(ended, RECOVERY_TIMEOUT, "the retried run ended")
            retried = await asyncio.to_thread(api.pipeline, run_id)

        def settled() -> bool:  # the run's every job record ended (the run ends on their events)
            mine = [j for jobs in run_jobs(run_id, records()).values() for j in jobs]
            return all(records()[j].get("state") in ("succeeded", "failed") for j in mine)

        await until(settled, 60, "the run's job records ended")
        everything = records()
    except BaseException:
        print(chaos.log_tails())
        print(f"data dir (logs, marker): {data}")
        raise
    finally:
        await mirror.stop()
        await asyncio.to_thread(stack.stop)

    runs = parse_markers(marker.read_text().splitlines())
    findings = audit_pipeline_run(
        run=retried.model_dump(mode="json"), pipeline=document, records=everything, kept=["prepare"]
    )
    findings += [
        f"job {job}: attempt {attempt} ran in two processes" for job, attempt in attempts_run_twice(runs)
    ]
    findings += [f"job {a.job_id}: two runs at once" for a, _ in overlapping_runs(runs)]
    submitted = run_jobs(run_id, everything)
    RESULTS.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "duration_s": round(time.time() - began, 1),
                "kills": kills,
                "run": {"state": done.state.value, "attempt": done.attempt},
                "submitted": {f"{s}[{i}]@{a}": jobs for (s, i, a), jobs in sorted(submitted.items())},
                "findings": findings,
            },
            indent=2,
        )
        + "\n"
    )
    for line in findings:
        print("  ", line)
    assert done.state.value == "succeeded" and done.attempt == 2
    assert retried.steps["prepare"].jobs[0].job_id == prepared  # kept, its outputs handed on
    assert sorted(k for k in submitted if k[2] == 2) == sorted(
        [("flaky", 0, 2), ("report", 0, 2), *(("fan", i, 2) for i in range(FAN))]
    )
    assert findings == [], "a step submitted twice, or an output handed on wrongly"
