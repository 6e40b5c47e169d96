"""Issue 23's five figures, shaped from what ``bench_e2e.py`` measured (a pure function),
and the table ``bench_e2e.py`` prints.

``summarize(results)`` reads the parts of an ``e2e.json`` (``runs``, ``parts.local``,
``parts.sustained``, ``parts.docker``, ``parts.podman``) and returns the five keys issue 23 names,
each an object: the figure, its unit, the target, whether it is met and how it was measured (the
path, the shortcut taken, the load average and machine speed before and after). A part not measured
(or skipped: an engine not reachable) gives a figure of None, ``met`` None and the reason.
"""

from __future__ import annotations

from typing import Any

PATH = "embedded stack, JetStream file storage, one replica per service, loopback"
SHORTCUT = "the executor advertises 4096 CPUs so placement never waits"

TARGETS: dict[str, dict[str, Any]] = {
    "local_drain_rate": {
        "unit": "jobs/s",
        "target": ">= 400",
        "what": "closed loop: 1,000 `true` jobs submitted at once over the bus, local backend (a real "
        "process per job); jobs / (last succeeded - first submitted)",
    },
    "docker_vs_engine": {
        "unit": "ratio (engine's own rate / Trainyard's rate; lower is better)",
        "target": "<= 1.2",
        "what": "N containers of the test image drained through the docker backend, and in the same "
        "run N `docker run --rm IMAGE true` one after another (compared) and concurrently (recorded)",
    },
    "podman_vs_engine": {
        "unit": "ratio (engine's own rate / Trainyard's rate; lower is better)",
        "target": "<= 1.2",
        "what": "as docker_vs_engine, through the podman backend (podman system service) and "
        "`podman run --rm` with the ulimits Podman needs here",
    },
    "sustained_60s_rate": {
        "unit": "jobs/s",
        "target": ">= 1000, lost 0, duplicated 0",
        "what": "open loop over the bus intake: 1,000 jobs/s offered for 60 s, noop backend; achieved "
        "= succeeded / (last succeeded - first submitted)",
    },
    "p99_ms_at_500": {
        "unit": "ms",
        "target": "<= 100",
        "what": "open loop over the bus at 500 jobs/s (10 s), noop backend: p99 of submitted -> running "
        "from the job records' state times (taken from `runs`)",
    },
}


def _entry(key: str, value: float | None, met: bool | None, measured: dict[str, Any]) -> dict[str, Any]:
    target = TARGETS[key]
    return {
        "value": value,
        "unit": target["unit"],
        "target": target["target"],
        "met": met,
        "what": target["what"],
        "measured": {"path": PATH, "shortcut": SHORTCUT} | measured,
    }


def _missing(key: str, reason: str) -> dict[str, Any]:
    return _entry(key, None, None, {"skipped": reason})


def _conditions(part: dict[str, Any]) -> dict[str, Any]:
    """The load average and machine speed around a part (``conditions``: before/after)."""
    conditions = part.get("conditions") or {}
    return {"conditions": conditions} if conditions else {}


def local_drain_rate(results: dict[str, Any]) -> dict[str, Any]:
    key = "local_drain_rate"
    part = (results.get("parts") or {}).get("local")
    if not part or not part.get("drain"):
        return _missing(key, (part or {}).get("skipped") or "not measured (--only local)")
    drain = part["drain"]
    rate = drain.get("drain_rate")
    clean = drain.get("lost") == 0 and drain.get("duplicated") == 0
    met = rate is not None and rate >= 400 and clean
    audit = {k: drain.get(k) for k in ("drain_jobs", "drain_seconds", "succeeded", "lost", "duplicated")}
    return _entry(key, rate, met, {"backend": "local", **audit, **_conditions(part)})


def engine_ratio(results: dict[str, Any], engine: str) -> dict[str, Any]:
    """Engine rate / Trainyard rate, against the sequential `run --rm` loop (the issue's "plain
    loop"); the concurrent loop's ratio is given beside it."""
    key = f"{engine}_vs_engine"
    part = (results.get("parts") or {}).get(engine)
    if not part or part.get("skipped") or not part.get("trainyard"):
        return _missing(key, (part or {}).get("skipped") or f"not measured (--only {engine})")
    trainyard = part["trainyard"]
    loops = part.get("engine") or {}
    # containers that succeeded per second, as the engine's loop counts its runs that exited 0
    jobs, succeeded, seconds = (trainyard.get(k) for k in ("drain_jobs", "succeeded", "drain_seconds"))
    ours = round(succeeded / seconds, 2) if succeeded and seconds else None
    sequential = (loops.get("sequential") or {}).get("rate")
    concurrent = (loops.get("concurrent") or {}).get("rate")

    def ratio(theirs: float | None) -> float | None:
        return round(theirs / ours, 2) if theirs and ours else None

    value = ratio(sequential)
    clean = trainyard.get("lost") == 0 and trainyard.get("duplicated") == 0 and succeeded == jobs
    met = None if value is None else value <= 1.2 and clean
    measured = {
        "backend": engine,
        "compared": "sequential",
        "trainyard_rate": ours,
        "engine_sequential_rate": sequential,
        "engine_concurrent_rate": concurrent,
        "ratio_to_concurrent": ratio(concurrent),
        "image": part.get("image"),
        "containers": jobs,
        "succeeded": succeeded,
        "not_succeeded": trainyard.get("not_succeeded"),
        "lost": trainyard.get("lost"),
        "duplicated": trainyard.get("duplicated"),
        **_conditions(part),
    }
    return _entry(key, value, met, measured)


def sustained_60s_rate(results: dict[str, Any]) -> dict[str, Any]:
    key = "sustained_60s_rate"
    part = (results.get("parts") or {}).get("sustained")
    if not part or not part.get("rate"):
        return _missing(key, (part or {}).get("skipped") or "not measured (--only sustained)")
    run = part["rate"]
    achieved = run.get("achieved_rate")
    met = achieved is not None and achieved >= 1000 and run.get("lost") == 0 and run.get("duplicated") == 0
    audit = {
        k: run.get(k)
        for k in (
            "via",
            "offered_rate",
            "seconds",
            "offered",
            "accepted",
            "publish_errors",
            "succeeded",
            "lost",
            "duplicated",
        )
    }
    return _entry(
        key, achieved, met, {"backend": "noop", **audit, "p99_ms": run.get("p99_ms"), **_conditions(part)}
    )


def p99_ms_at_500(results: dict[str, Any]) -> dict[str, Any]:
    key = "p99_ms_at_500"
    for run in results.get("runs") or []:
        if run.get("backend") != "noop":
            continue
        for rate in run.get("rates") or []:
            if rate.get("via") == "bus" and rate.get("offered_rate") == 500:
                p99 = rate.get("p99_ms")
                measured = {
                    "backend": "noop",
                    "via": "bus",
                    "seconds": rate.get("seconds"),
                    "p50_ms": rate.get("p50_ms"),
                    "achieved_rate": rate.get("achieved_rate"),
                    "lost": rate.get("lost"),
                    "conditions": run.get("conditions") or results.get("conditions"),
                }
                return _entry(key, p99, None if p99 is None else p99 <= 100, measured)
    return _missing(key, "no noop bus run at 500 jobs/s in `runs` (--only runs --backends noop --rates 500)")


def summarize(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The five keys of issue 23, in its order."""
    return {
        "local_drain_rate": local_drain_rate(results),
        "docker_vs_engine": engine_ratio(results, "docker"),
        "podman_vs_engine": engine_ratio(results, "podman"),
        "sustained_60s_rate": sustained_60s_rate(results),
        "p99_ms_at_500": p99_ms_at_500(results),
    }


def table(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    rows = [
        f"machine speed (ms for a fixed Python loop, lower is faster): "
        f"{machine.get('speed_ms_before')} before, {machine.get('speed_ms_after')} after"
    ]
    for run in results.get("runs") or []:
        rows.append(f"backend {run['backend']}")
        rows.append(
            "  via   offered  achieved  p50_ms  p90_ms  p99_ms  refused  lost  dup   "
            "cpu ms/job: sub sched exec reg tel nats = total"
        )
        for r in run["rates"]:
            rows.append(
                f"  {r['via']:<5} {r['offered_rate']:>7g} {r['achieved_rate']:>9} {r['p50_ms']!s:>7} "
                f"{r['p90_ms']!s:>7} {r['p99_ms']!s:>7} {r['refused']:>8} {r['lost']:>5} {r['duplicated']:>4}"
                f"   {cpu_row(r['cpu_ms_per_job'])}"
            )
        for d in run["drains"]:
            rows.append(
                f"  drain {d['drain_jobs']} jobs: {d['drain_seconds']} s ({d['drain_rate']} jobs/s), "
                f"lost {d['lost']}, duplicated {d['duplicated']}; cpu ms/job {cpu_row(d['cpu_ms_per_job'])}"
            )
    for key, figure in (results.get("summary") or {}).items():
        skipped = figure["measured"].get("skipped")
        rows.append(
            f"{key}: {figure['value']} {figure['unit']}, target {figure['target']}, met {figure['met']}"
            + (f" (skipped: {skipped})" if skipped else "")
        )
    return "\n".join(rows)


def cpu_row(cpu: dict[str, float]) -> str:
    names = ("submission", "scheduler", "executor", "registry", "telemetry", "nats-server")
    return " ".join(f"{cpu.get(n, 0):.2f}" for n in names) + f" = {cpu.get('total', 0):.2f}"
