"""Benchmark of job arrays on the embedded stack (`make bench-workflow`, JSON out).

Real path: nats-server with JetStream file storage and the six services as processes (`trainyard
up`'s EmbeddedStack), on loopback; the executor's backend is ``noop`` (its attempts complete at once
without a process: named in the JSON), which does not change what is timed here.

``array_accept_seconds``: from sending ``POST /v1/jobs`` with ``array: "0-9999"`` (10,000 indices,
no ``%N`` limit: every submission is recorded before the answer) over HTTP with the admin token
until its 201 arrives with the array's id. What it includes: the API's checks, its NATS request to
the workflow service, the run created and its 10,000 submissions recorded (a head and 20 chunks,
compare-and-set) and the answer. What it leaves out, by design: sending the 10,000 jobs to the
intake goes on after the answer (the workflow service resends whatever is recorded and
unanswered after a restart). ``array_all_ended_seconds``: for the last array sent, from its send
until it ended (all 10,000 jobs run, on noop), capped by ``--ended-timeout`` (null: not in time).

``step_overhead_p50_ms`` / ``_p99_ms``: over a 500-step DAG (50 layers of 10 steps, each step
depending on two of the layer before), for every step with dependencies, from the moment its last
dependency's job ended (that job record's ``succeeded`` time, written by the scheduler when the
executor's end report is applied) to the moment its own job was submitted (its record's
``submitted_at``, written by the submission service when the workflow's submission reached the
intake). What is in between: the job event reaching the workflow service, its decision and
compare-and-set on the run, and the bus intake. Both times are on this one machine's clock.

Usage: python tests/bench/bench_workflow.py [--size 10000] [--repeat 3] [--ended-timeout 300]
       [--dag-layers 50] [--dag-width 10] [--dag-timeout 900] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from trainyard_client.stack import EmbeddedStack

OUT = Path(__file__).parent / "results" / "workflow.json"


def accept_once(http: httpx.Client, size: int, name: str) -> tuple[float, str]:
    body = {"name": name, "array": f"0-{size - 1}", "command": ["true"], "resources": {"cpu": 0.01}}
    started = time.perf_counter()
    response = http.post("/v1/jobs", json=body)
    elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise SystemExit(f"the array was not accepted: {response.status_code} {response.text[:500]}")
    return elapsed, response.json()["array_id"]


def all_ended(http: httpx.Client, array_id: str, started: float, timeout: float) -> float | None:
    """Seconds until the array ended, every job of it run (None: not within ``timeout``)."""
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if http.get(f"/v1/arrays/{array_id}").json()["state"] != "running":
            return time.perf_counter() - started
        time.sleep(1.0)
    return None


def layered_dag(layers: int, width: int) -> dict[str, Any]:
    steps = []
    for layer in range(layers):
        for i in range(width):
            before = [f"s{layer - 1}-{i}", f"s{layer - 1}-{(i + 1) % width}"] if layer else []
            job = {"name": "step", "command": ["true"], "resources": {"cpu": 0.01}}
            steps.append({"name": f"s{layer}-{i}", "depends": sorted(set(before)), "job": job})
    return {"name": "bench-dag", "steps": steps}


def step_overheads(http: httpx.Client, layers: int, width: int, timeout: float) -> list[float]:
    """Milliseconds from each step's last dependency ending to its own job's submission."""
    pipeline = layered_dag(layers, width)
    created = http.post("/v1/pipelines", json={"pipeline": pipeline})
    if created.status_code != 201:
        raise SystemExit(f"the DAG was not accepted: {created.status_code} {created.text[:500]}")
    run_id = created.json()["run_id"]
    deadline = time.perf_counter() + timeout
    while True:
        answer = http.get(f"/v1/pipelines/{run_id}")
        # a status not answered in time (the workflow service busy with the arrays' 30,000 jobs)
        # is asked again; it is not the run's state
        run = answer.json() if answer.status_code == 200 else {"state": "running"}
        if run["state"] != "running":
            break
        if time.perf_counter() > deadline:
            raise SystemExit(f"the {layers * width}-step DAG did not end in {timeout} s")
        time.sleep(1.0)
    if run["state"] != "succeeded":
        raise SystemExit(f"the DAG ended {run['state']}")
    records = {
        name: http.get(f"/v1/jobs/{step['jobs']['0']['job_id']}").json()
        for name, step in run["steps"].items()
    }

    def at(text: str) -> datetime:
        return datetime.fromisoformat(text)

    overheads = []
    for step in pipeline["steps"]:
        if not step["depends"]:
            continue
        last_end = max(at(records[dep]["state_times"]["succeeded"]) for dep in step["depends"])
        submitted = at(records[step["name"]]["submitted_at"])
        overheads.append((submitted - last_end).total_seconds() * 1000)
    return overheads


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="trainyard-bench-workflow-"))
    env = {
        "TRAINYARD_LOG_LEVEL": "WARNING",
        "TRAINYARD_EXECUTOR_BACKEND": "noop",
        "TRAINYARD_EXECUTOR_CPU": "4096",
        "TRAINYARD_EXECUTOR_MEMORY": str(1024 * 1024 * 16),
    }
    from bench_e2e import machine_speed  # this script's folder is on the path

    speed_before = machine_speed()
    accepts: list[float] = []
    ended: float | None = None
    with EmbeddedStack(data, api_port=None, nats_port=None, env=env, ready_timeout=180) as stack:
        headers = {"Authorization": f"Bearer {stack.token()}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=120) as http:
            accept_once(http, 10, "warm-up")  # imports, connections, the workflow's first run
            for i in range(args.repeat):
                t0 = time.perf_counter()
                elapsed, array_id = accept_once(http, args.size, f"bench-{i}")
                accepts.append(elapsed)
                print(
                    json.dumps({"array_accept_seconds": round(elapsed, 3), "array_id": array_id}), flush=True
                )
                if i == args.repeat - 1 and args.ended_timeout > 0:
                    ended = all_ended(http, array_id, t0, args.ended_timeout)
            overheads = (
                step_overheads(http, args.dag_layers, args.dag_width, args.dag_timeout)
                if args.dag_layers
                else []
            )
    return {
        "array_size": args.size,
        "array_accept_seconds": round(statistics.median(accepts), 3),
        "array_accept_seconds_each": [round(a, 3) for a in accepts],
        "array_accept_goal_seconds": 2.0,
        "array_all_ended_seconds": None if ended is None else round(ended, 2),
        "array_all_ended_timeout_seconds": args.ended_timeout,
        "step_overhead_dag": f"{args.dag_layers} layers of {args.dag_width} steps" if overheads else None,
        "step_overhead_p50_ms": round(_percentile(overheads, 0.5), 1) if overheads else None,
        "step_overhead_p99_ms": round(_percentile(overheads, 0.99), 1) if overheads else None,
        "step_overhead_goal_p50_ms": 20.0,
        "path": "HTTP POST /v1/jobs with array: on the embedded stack (six services as processes, "
        "nats-server with file storage, loopback)",
        "shortcuts": "executor backend noop (no process per attempt); the 10,000 jobs are sent to the "
        "intake after the answer, as the service always does; repeats after the first run while the "
        "earlier arrays' jobs are still being sent; the DAG runs after the arrays ended (or their "
        "timeout), its steps on noop",
        "machine": {
            "cpus": _cpus(),
            "python": sys.version.split()[0],
            "speed_ms_before": speed_before,  # a fixed Python loop (bench_e2e): lower is faster
            "speed_ms_after": machine_speed(),
        },
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ended-timeout", type=float, default=300.0)
    parser.add_argument("--dag-layers", type=int, default=50, help="layers of the DAG (0: no DAG)")
    parser.add_argument("--dag-width", type=int, default=10, help="steps in each layer")
    parser.add_argument("--dag-timeout", type=float, default=900.0, help="seconds the DAG may take")
    parser.add_argument("--out", type=Path, default=OUT)
    arguments = parser.parse_args()
    result = main(arguments)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
