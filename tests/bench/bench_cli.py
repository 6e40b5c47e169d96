"""Start-up time of the ``trainyard`` CLI (`make bench-cli`): ``trainyard --help`` and
``trainyard status -o json`` against a running embedded stack holding a few finished jobs.

Each command runs as a whole process, as a user runs it: a few warm-up runs (which also let Python
write its bytecode cache, as any user's first run does; this bench clears PYTHONDONTWRITEBYTECODE
for its children), then --runs counted runs. Reported per command: the median, minimum and maximum
wall-clock seconds and the median CPU seconds of the child (user + system), and the machine's
1-minute load average when it ended; and, for reference, the API's own answer time for the listing
measured in process (on this 2-core machine anything above ~1 means other processes
competed for the CPU). The budget is a median wall time of 0.150 s for each.

Two floors are timed the same way beside them, so a loaded run still says what is the CLI's own:
the interpreter's start-up (``python -c pass``) and typer's import (``python -c "import typer"``).

The machine is shared, so three ways to a figure other processes cannot move (each row names the
one used):
- ``--idle-load 1.0 --idle-wait 600``: before each command, wait (at most that many seconds) until
  the 1-minute load average is below 1.0; the row says whether it got there (``idle``).
- ``--realtime``: each timed process runs under SCHED_FIFO (``chrt -f 10``, root only), so no other
  process takes its CPU: what an idle machine gives the CLI's own process (the API answering
  ``status`` still runs at normal priority). A shortcut: the row says so (``scheduling``).
- ``--instructions``: each command once under valgrind (callgrind), its instructions executed.

Output: JSON to tests/bench/results/cli.json (or --out).
Usage: python tests/bench/bench_cli.py [--runs 15] [--warmup 3] [--idle-load L --idle-wait S]
       [--realtime] [--instructions] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainyard_client.stack import EmbeddedStack

BUDGET_SECONDS = 0.150


def trainyard_command() -> str:
    beside = Path(sys.executable).parent / "trainyard"
    return str(beside) if beside.exists() else "trainyard"


def wait_for_idle(load: float | None, seconds: float) -> bool | None:
    """Until the 1-minute load average is below ``load`` (None: not asked), at most ``seconds``."""
    if load is None:
        return None
    deadline = time.monotonic() + seconds
    while os.getloadavg()[0] >= load:
        if time.monotonic() >= deadline:
            return False
        time.sleep(5)  # the load average itself moves on a 5 s tick
    return True


def instructions(argv: list[str], env: dict[str, str]) -> int:
    """Instructions executed by one run (valgrind's callgrind, "Collected : N")."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    return int(done.stderr.rpartition("Collected : ")[2].split()[0])


def time_runs(
    argv: list[str], env: dict[str, str], runs: int, warmup: int, shown: str, budgeted: bool
) -> dict[str, object]:
    walls, cpus = [], []
    load_before = os.getloadavg()[0]
    for index in range(warmup + runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{argv} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
        if index >= warmup:
            walls.append(wall)
            cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    median = statistics.median(walls)
    budget = {"within_budget": median <= BUDGET_SECONDS} if budgeted else {}  # the floors have none
    return {
        "command": shown,
        "runs": runs,
        "median_seconds": round(median, 4),
        "min_seconds": round(min(walls), 4),
        "max_seconds": round(max(walls), 4),
        "median_cpu_seconds": round(statistics.median(cpus), 4),
        **budget,
        "load_average_before": round(load_before, 2),
        "load_average": round(os.getloadavg()[0], 2),
    }


def time_api(url: str, token: str, runs: int) -> dict[str, object]:
    """The API's own answer time for the listing (no process start): what `status` cannot go below."""
    from trainyard_client.connection import get_json

    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        get_json(url, "/v1/jobs", token, [("limit", "50")])
        walls.append(time.perf_counter() - started)
    return {
        "command": "GET /v1/jobs?limit=50 (in process)",
        "runs": runs,
        "median_seconds": round(statistics.median(walls), 4),
        "min_seconds": round(min(walls), 4),
        "max_seconds": round(max(walls), 4),
        "load_average": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5, help="finished jobs the listing shows")
    parser.add_argument("--out", type=Path, default=Path("tests/bench/results/cli.json"))
    parser.add_argument("--idle-load", type=float, default=None, help="wait for a load average below this")
    parser.add_argument("--idle-wait", type=float, default=600, help="at most this many seconds each")
    parser.add_argument("--instructions", action="store_true", help="count each one's under valgrind")
    parser.add_argument("--realtime", action="store_true", help="time each under SCHED_FIFO (chrt -f 10)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    command = trainyard_command()
    with (
        tempfile.TemporaryDirectory() as data,
        EmbeddedStack(Path(data), api_port=None, nats_port=None) as stack,
    ):
        client = stack.client()
        for number in range(args.jobs):
            job = client.submit({"name": f"bench-{number}", "command": ["true"], "labels": {"bench": "cli"}})
            client.wait(job.job_id, timeout=120)
        env.update(TRAINYARD_URL=stack.api_url, TRAINYARD_TOKEN=stack.token())
        timed = [
            ([command, "--help"], None),
            ([command, "status", "-o", "json"], None),
            ([sys.executable, "-c", "pass"], "python -c pass (the interpreter's start-up)"),
            ([sys.executable, "-c", "import typer"], "python -c 'import typer' (typer's import)"),
        ]
        results = []
        for argv, shown in timed:
            idle = wait_for_idle(args.idle_load, args.idle_wait)
            prefix = ["chrt", "-f", "10"] if args.realtime else []
            name = shown or " ".join(["trainyard", *argv[1:]])
            row = time_runs([*prefix, *argv], env, args.runs, args.warmup, name, budgeted=shown is None)
            if args.realtime:
                row["scheduling"] = "SCHED_FIFO (chrt -f 10): as on an idle machine"
            if idle is not None:
                row["idle"] = idle
            if args.instructions:
                row["instructions"] = instructions(argv, env)
            results.append(row)
        results.append(time_api(stack.api_url, stack.token(), args.runs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
