"""Decision time of one full planning pass of the scheduler policy (`make bench-scheduler`).

For pending x nodes in {1k, 10k, 100k} x {10, 1k, 5k}: builds one synthetic snapshot (not timed)
and times ``plan(snapshot, now)`` several times, reporting the median. The snapshot is meant to
look like a busy cluster, not a best case:

- nodes: 80% CPU nodes (32 cores, 128 GiB), 20% GPU nodes (64 cores, 512 GiB, 8 GPUs), each
  about 70% full with three running jobs (a third of them preemptible, half with a timeout);
- six queues of different weights, two of them with quotas in a cohort that lends;
- pending jobs of twelve shapes (1-16 cores, 0-8 GPUs), 10% gangs of 2-16 replicas, priorities
  0/1/5, 5% in retry backoff, most with a timeout.

Output: a JSON list of {"pending", "nodes", "seconds" (wall clock), "cpu_seconds" (this process's
CPU time: on a shared machine the wall clock also counts other processes), "passes", "assigned",
"waiting", "victims", "load_average" (the machine's 1-minute load average when the cell ended: on
this 2-core machine anything above ~1 means other processes competed for the CPU and its caches,
which slows even the CPU seconds)} to tests/bench/results/scheduler.json (or --out).

Usage: python tests/bench/bench_scheduler.py [--pending 1000,10000,100000] [--nodes 10,1000,5000]
       [--passes 5] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

from trainyard_contracts.queues import QueueConfig, Quota
from trainyard_scheduler.policy import Demand, ExecutorFree, PendingJob, RunningJob, Snapshot, plan

NOW = 1_000_000.0
SHAPES = [  # (cpu, memory MiB, gpu)
    (1, 2048, 0),
    (1, 4096, 0),
    (2, 4096, 0),
    (2, 8192, 0),
    (4, 8192, 0),
    (4, 16384, 0),
    (8, 32768, 0),
    (16, 65536, 0),
    (4, 32768, 1),
    (8, 65536, 2),
    (16, 131072, 4),
    (32, 262144, 8),
]
QUEUES = (
    QueueConfig(name="research", weight=4),
    QueueConfig(name="prod", weight=8),
    QueueConfig(name="batch", weight=1),
    QueueConfig(
        name="team-a",
        weight=2,
        quota=Quota(cpu=2000, gpu=64),
        cohort="teams",
        borrowing_limit=Quota(cpu=1000, gpu=32),
    ),
    QueueConfig(
        name="team-b",
        weight=2,
        quota=Quota(cpu=2000, gpu=64),
        cohort="teams",
        borrowing_limit=Quota(cpu=1000, gpu=32),
    ),
    QueueConfig(name="spot", weight=1, preemptible_by_default=True),
)


def synthetic_snapshot(pending: int, nodes: int, seed: int = 7) -> Snapshot:
    rng = random.Random(seed)
    names = [q.name for q in QUEUES]
    executors = []
    running = []
    for n in range(nodes):
        gpu_node = n % 5 == 0
        cap = (64.0, 524288, 8) if gpu_node else (32.0, 131072, 0)
        free = list(cap)
        for r in range(3):  # about 70% full
            cpu = cap[0] * rng.choice((0.2, 0.25, 0.25))
            mem = int(cap[1] * rng.choice((0.2, 0.25)))
            gpu = rng.choice((2, 3)) if gpu_node else 0
            free[0] -= cpu
            free[1] -= mem
            free[2] -= gpu
            running.append(
                RunningJob(
                    job_id=f"run-{n}-{r}",
                    attempt=1,
                    executor_id=f"node-{n:05d}",
                    used=Demand(cpu, mem, gpu),
                    queue=rng.choice(names),
                    priority=rng.choice((0, 0, 1)),
                    preemptible=rng.random() < 0.33,
                    started_at=NOW - rng.uniform(0, 3600),
                    timeout=rng.choice((None, 3600.0, 7200.0)),
                )
            )
        executors.append(ExecutorFree(f"node-{n:05d}", Demand(free[0], int(free[1]), int(free[2]))))
    jobs = []
    for j in range(pending):
        cpu, mem, gpu = rng.choice(SHAPES)
        jobs.append(
            PendingJob(
                job_id=f"job-{j:06d}",
                attempt=1,
                priority=rng.choice((0, 0, 0, 0, 1, 5)),
                submitted_at=NOW - rng.uniform(0, 86400),
                demand=Demand(cpu, mem, gpu),
                replicas=rng.choice((2, 4, 8, 16)) if rng.random() < 0.1 else 1,
                not_before=NOW + 60 if rng.random() < 0.05 else None,
                queue=rng.choice(names),
                timeout=rng.choice((None, 600.0, 3600.0, 3600.0, 14400.0)),
            )
        )
    return Snapshot(tuple(jobs), tuple(executors), tuple(running), QUEUES)


def measure(pending: int, nodes: int, passes: int) -> dict[str, object]:
    snapshot = synthetic_snapshot(pending, nodes)
    times = []
    cpu = []
    result = None
    for _ in range(passes):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = plan(snapshot, NOW)
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    assert result is not None
    return {
        "pending": pending,
        "nodes": nodes,
        "seconds": round(statistics.median(times), 4),
        "cpu_seconds": round(statistics.median(cpu), 4),  # this process only: the machine is shared
        "passes": passes,
        "assigned": len(result.assignments),
        "waiting": len(result.waiting),
        "victims": len(result.victims),
        "load_average": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", default="1000,10000,100000")
    parser.add_argument("--nodes", default="10,1000,5000")
    parser.add_argument("--passes", type=int, default=7, help="passes per size (3 for 100k pending)")
    parser.add_argument("--out", default="tests/bench/results/scheduler.json")
    args = parser.parse_args(argv)
    rows = []
    for pending in (int(p) for p in args.pending.split(",")):
        for nodes in (int(n) for n in args.nodes.split(",")):
            passes = min(args.passes, 3) if pending >= 100_000 else args.passes
            row = measure(pending, nodes, passes)
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
