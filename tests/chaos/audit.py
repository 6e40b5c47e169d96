"""The chaos audit, pure: marker lines, job events, job records and model versions in, findings out.

Nothing here touches NATS or a process, so every rule is unit-tested on hand-written inputs
(``test_audit.py``) and the chaos run only gathers the inputs.

The marker file: every run of a chaos job (one process of one attempt) appends lines
``<kind> <job_id> <attempt> <pid> <unix time>`` with kind ``start``, ``tick`` (every
``TICK_SECONDS`` while it works) and ``end`` (it finished its work). A run's *execution* is the
time between its lines; a gap much longer than a tick means the process was frozen (SIGSTOP), so
it is split there: a frozen process does not execute.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TICK_SECONDS = 0.2
FROZEN_GAP_SECONDS = 1.5
"""Two lines of one run further apart than this: the process did not run in between."""

TERMINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled", "rejected"})
STATE_CHANGES = frozenset({"queued", "scheduled", "running", "requeued", "model_registered", *TERMINAL})
"""Events that announce a change: one event (one event id) per (job, attempt, type), ever. A repeat
with the same event id (a redelivery, a replay) is the same event."""


@dataclass
class Run:
    job_id: str
    attempt: int
    pid: int
    times: list[float] = field(default_factory=list)
    ended: bool = False

    @property
    def start(self) -> float:
        return min(self.times)

    def intervals(self, gap: float = FROZEN_GAP_SECONDS) -> list[tuple[float, float]]:
        """When the process executed: its lines, split where it was frozen."""
        out: list[tuple[float, float]] = []
        ordered = sorted(self.times)
        begin = prev = ordered[0]
        for t in ordered[1:]:
            if t - prev > gap:
                out.append((begin, prev))
                begin = t
            prev = t
        out.append((begin, prev))
        return out


def parse_markers(lines: Iterable[str]) -> list[Run]:
    runs: dict[tuple[str, int, int], Run] = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 5 or parts[0] not in ("start", "tick", "end"):
            continue  # a torn line cannot happen with O_APPEND writes this small; skip, don't guess
        kind, job_id, attempt, pid, when = parts
        key = (job_id, int(attempt), int(pid))
        run = runs.setdefault(key, Run(job_id, int(attempt), int(pid)))
        run.times.append(float(when))
        run.ended = run.ended or kind == "end"
    return list(runs.values())


def attempts_run_twice(runs: Iterable[Run]) -> list[tuple[str, int]]:
    """(job, attempt) pairs that more than one process ran."""
    pids: dict[tuple[str, int], set[int]] = defaultdict(set)
    for run in runs:
        pids[(run.job_id, run.attempt)].add(run.pid)
    return sorted(key for key, found in pids.items() if len(found) > 1)


def overlapping_runs(runs: Iterable[Run], slack: float = 0.0) -> list[tuple[Run, Run]]:
    """Pairs of runs of one job that executed at the same time."""
    by_job: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_job[run.job_id].append(run)
    found = []
    for job_runs in by_job.values():
        for a, b in itertools.combinations(sorted(job_runs, key=lambda r: r.start), 2):
            if any(
                x0 < y1 - slack and y0 < x1 - slack for x0, x1 in a.intervals() for y0, y1 in b.intervals()
            ):
                found.append((a, b))
    return found


def ran_after_completing(runs: Iterable[Run]) -> list[tuple[Run, Run]]:
    """(completed, again): a run that did the job's work to its end, and another process of the
    same job that either completed it too or started after it had completed. The work ran twice.

    A run stopped before its end (a Ctrl-C, a preemption, a lost executor) may be followed by
    another: that is what handing an attempt back means, and it is not counted here."""
    by_job: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_job[run.job_id].append(run)
    found = []
    for job_runs in by_job.values():
        for done in (r for r in job_runs if r.ended):
            finished = max(done.times)
            for other in job_runs:
                if other is not done and (other.ended or other.start >= finished):
                    if not (other.ended and (other.start, other.pid) < (done.start, done.pid)):
                        found.append((done, other))
    return found


@dataclass
class EventAudit:
    terminal_ids: dict[str, set[str]]
    """job -> the distinct event ids of its terminal events"""
    terminal_types: dict[str, set[str]]
    duplicated_state_changes: list[tuple[str, int, str]]
    """(job, attempt, type) announced by more than one distinct event"""
    types_by_job: dict[str, list[str]]
    terminal_attempts: dict[str, set[int]]
    """job -> the attempts a terminal event was announced for"""


def audit_events(events: Iterable[Mapping[str, Any]]) -> EventAudit:
    """Events as read from the jobs stream (decoded bodies); a repeat of one event id is one event."""
    seen: set[str] = set()
    terminal_ids: dict[str, set[str]] = defaultdict(set)
    terminal_types: dict[str, set[str]] = defaultdict(set)
    ids_by_change: dict[tuple[str, int, str], set[str]] = defaultdict(set)
    types_by_job: dict[str, list[str]] = defaultdict(list)
    terminal_attempts: dict[str, set[int]] = defaultdict(set)
    for event in events:
        event_id, job_id, kind = event.get("event_id"), event.get("job_id"), event.get("type")
        if not (event_id and job_id and kind):
            continue
        ids_by_change[(job_id, int(event.get("attempt", 0)), kind)].add(event_id)
        if event_id in seen:
            continue
        seen.add(event_id)
        types_by_job[job_id].append(kind)
        if kind in TERMINAL:
            terminal_ids[job_id].add(event_id)
            terminal_types[job_id].add(kind)
            terminal_attempts[job_id].add(int(event.get("attempt", 0)))
    duplicated = sorted(k for k, ids in ids_by_change.items() if k[2] in STATE_CHANGES and len(ids) > 1)
    return EventAudit(
        dict(terminal_ids), dict(terminal_types), duplicated, dict(types_by_job), dict(terminal_attempts)
    )


@dataclass
class Findings:
    offered: int
    accepted: int
    jobs: int
    succeeded: int
    runs: int
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "accepted": self.accepted,
            "jobs": self.jobs,
            "succeeded": self.succeeded,
            "runs": self.runs,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "lost_detail": self.lost[:50],
            "duplicated_detail": self.duplicated[:50],
            "notes": self.notes[:50],
        }


def audit(
    *,
    offered: Mapping[int, str | None],
    records: Mapping[str, Mapping[str, Any]],
    events: EventAudit,
    runs: list[Run],
    model_versions: Mapping[str, int],
    model_jobs: Iterable[int],
    fenced: Mapping[str, int] | None = None,
    frozen_at: float | None = None,
) -> Findings:
    """Everything the run must show: each offered job exists once and ended once, ran as the record
    says, never twice at once, and a succeeded job with a model output has exactly one version.

    ``offered``: load sequence number -> the job id the API answered (None: never accepted).
    ``records``: job id -> the record (JSON dict) from the jobs bucket.
    ``model_versions``: job id -> how many model versions in the registry's store carry it.
    ``fenced``: job id -> the attempt a frozen executor ran and must not have recorded.
    ``frozen_at``: when that executor froze. A fenced attempt's work done twice is a note, not a
    duplicate: done before the freeze but never recorded, the next attempt must do it again
    (nobody can know it was done); or finished after the thaw, in the moment before its executor
    stops it (a paused machine resumes its jobs with it). What is recorded stays once (the fenced
    rules below). Any other run after completion is a duplicate.
    """
    f = Findings(
        offered=len(offered),
        accepted=sum(1 for j in offered.values() if j),
        jobs=len(records),
        succeeded=sum(1 for r in records.values() if r.get("state") == "succeeded"),
        runs=len(runs),
    )
    by_seq: dict[int, list[str]] = defaultdict(list)
    for job_id, record in records.items():
        seq = (record.get("spec", {}).get("labels") or {}).get("chaos-seq")
        if seq is not None:
            by_seq[int(seq)].append(job_id)
    for seq, job_id in sorted(offered.items()):
        if job_id is None:
            f.lost.append(f"offer {seq}: never accepted by the API or the bus intake")
        elif job_id not in records:
            f.lost.append(f"offer {seq}: accepted as {job_id}, but no job record")
        if len(by_seq.get(seq, [])) > 1:
            f.duplicated.append(f"offer {seq}: {len(by_seq[seq])} job records {sorted(by_seq[seq])}")
    runs_by_job: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        runs_by_job[run.job_id].append(run)
    for job_id, record in sorted(records.items()):
        state = record.get("state")
        if state not in TERMINAL:
            f.lost.append(f"job {job_id}: still {state}")
            continue
        ids = events.terminal_ids.get(job_id, set())
        if len(ids) == 0:
            f.lost.append(f"job {job_id}: {state} in its record, but no terminal event")
        elif len(ids) > 1:
            f.duplicated.append(
                f"job {job_id}: {len(ids)} terminal events {sorted(events.terminal_types[job_id])}"
            )
        elif events.terminal_types[job_id] != {state}:
            f.duplicated.append(
                f"job {job_id}: record {state}, event {sorted(events.terminal_types[job_id])}"
            )
        if state == "succeeded":
            final = int(record.get("attempt", 1))
            if not any(r.attempt == final and r.ended for r in runs_by_job.get(job_id, [])):
                f.lost.append(f"job {job_id}: succeeded as attempt {final}, which never ran to its end")
    for job_id, attempt, kind in events.duplicated_state_changes:
        f.duplicated.append(f"job {job_id}: attempt {attempt} announced {kind} more than once")
    for job_id, attempt in attempts_run_twice(runs):
        f.duplicated.append(f"job {job_id}: attempt {attempt} ran in more than one process")
    for done, again in ran_after_completing(runs):
        if (fenced or {}).get(done.job_id) == done.attempt:
            # a fenced attempt's work is never recorded; the pause it was in lets it run twice
            when = (
                "before its executor froze, never recorded"
                if frozen_at is not None and max(done.times) < frozen_at
                else "after the thaw, before its executor stopped it (not recorded)"
            )
            f.notes.append(
                f"job {done.job_id}: fenced attempt {done.attempt} (pid {done.pid}) did its work {when};"
                f" attempt {again.attempt} (pid {again.pid}) did it too"
            )
            continue
        if (fenced or {}).get(again.job_id) == again.attempt and not again.ended:
            # its process was frozen with its executor before it could write its start, and wrote
            # it after the thaw, until its executor stopped it: a paused machine resumes its jobs
            f.notes.append(
                f"job {again.job_id}: fenced attempt {again.attempt} (pid {again.pid}) resumed after the"
                f" thaw and was stopped before its end; attempt {done.attempt} (pid {done.pid}) did the work"
            )
            continue
        f.duplicated.append(
            f"job {done.job_id}: attempt {done.attempt} (pid {done.pid}) completed its work and"
            f" attempt {again.attempt} (pid {again.pid}) ran it again"
        )
    for a, b in overlapping_runs(runs):
        f.duplicated.append(
            f"job {a.job_id}: attempt {a.attempt} (pid {a.pid}) and attempt {b.attempt} (pid {b.pid})"
            " executed at the same time"
        )
    model_seqs = set(model_jobs)
    for seq in sorted(model_seqs):
        job_id = offered.get(seq)
        if not job_id or records.get(job_id, {}).get("state") != "succeeded":
            continue
        count = model_versions.get(job_id, 0)
        if count == 0:
            f.lost.append(f"job {job_id}: succeeded with a model output, but no model version")
        elif count > 1:
            f.duplicated.append(f"job {job_id}: {count} model versions")
        if not records[job_id].get("model"):
            f.lost.append(f"job {job_id}: model version not recorded on the job")
    for job_id, attempt in sorted((fenced or {}).items()):
        record = records.get(job_id, {})
        for info in record.get("attempts", []):
            if info.get("number") == attempt and info.get("state") not in (None, "requeued"):
                f.duplicated.append(f"job {job_id}: fenced attempt {attempt} recorded as {info.get('state')}")
        if attempt in events.terminal_attempts.get(job_id, set()):
            f.duplicated.append(f"job {job_id}: fenced attempt {attempt} announced a terminal event")
        if int(record.get("attempt", 0)) <= attempt:
            f.lost.append(f"job {job_id}: the fenced attempt {attempt} was never superseded")
    return f


# -- a pipeline run (the workflow service killed mid-retry) ---------------------------------------

RUN_LABEL, STEP_LABEL = "trainyard.dev/pipeline-run", "trainyard.dev/pipeline-step"
INDEX_LABEL, STEP_ATTEMPT_LABEL = "trainyard.dev/array-index", "trainyard.dev/step-attempt"
OUTPUT_REF = re.compile(r"\$\{\{\s*steps\.([a-z0-9][a-z0-9_-]*)\.outputs\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def run_jobs(run_id: str, records: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, int, int], list[str]]:
    """The run's job records by (step, array index, step attempt): what the workflow service
    submitted for it, however its answers went."""
    out: dict[tuple[str, int, int], list[str]] = defaultdict(list)
    for job_id, record in records.items():
        labels = record.get("spec", {}).get("labels") or {}
        if labels.get(RUN_LABEL) != run_id:
            continue
        key = (
            labels[STEP_LABEL],
            int(labels.get(INDEX_LABEL, "0")),
            int(labels.get(STEP_ATTEMPT_LABEL, "1")),
        )
        out[key].append(job_id)
    return out


def audit_pipeline_run(
    *,
    run: Mapping[str, Any],
    pipeline: Mapping[str, Any],
    records: Mapping[str, Mapping[str, Any]],
    kept: Iterable[str] = (),
) -> list[str]:
    """What a run (its reply as JSON) must show after any crash: each (step, index, step attempt)
    submitted once; the steps a retry kept (``kept``: they had succeeded) never submitted again;
    the run's jobs the ones it names; and every ``${{ steps.X.outputs.Y }}`` in a step's command
    filled in with the value X's job, the one the run names, reported (its record's outputs)."""
    findings: list[str] = []
    submitted = run_jobs(str(run["run_id"]), records)
    for (step, index, attempt), jobs in sorted(submitted.items()):
        if len(jobs) > 1:
            findings.append(
                f"step {step}[{index}] attempt {attempt}: submitted {len(jobs)} times {sorted(jobs)}"
            )
    for step in kept:
        again = sorted(k for k in submitted if k[0] == step and k[2] > 1)
        if again:
            findings.append(f"step {step}: succeeded before the retry, submitted again as {again}")
    named: dict[str, dict[int, str]] = {}
    for step, state in run["steps"].items():
        named[step] = {int(i): job["job_id"] for i, job in state["jobs"].items() if job.get("job_id")}
        attempt = int(state.get("attempt", 1))
        for index, job_id in named[step].items():
            labels = records.get(job_id, {}).get("spec", {}).get("labels") or {}
            if labels.get(RUN_LABEL) == run["run_id"] and int(labels.get(STEP_ATTEMPT_LABEL, "1")) != attempt:
                findings.append(f"step {step}[{index}]: the run names {job_id} of another step attempt")
    for spec in pipeline["steps"]:
        template = (spec.get("job") or {}).get("command") or []
        for index, job_id in named.get(spec["name"], {}).items():
            try:
                expected = [_filled(arg, named, records) for arg in template]
            except LookupError as missing:
                findings.append(f"step {spec['name']}[{index}]: {missing.args[0]}")
                continue
            got = records.get(job_id, {}).get("spec", {}).get("command")
            if got != expected:
                findings.append(f"step {spec['name']}[{index}]: job {job_id} ran {got}, expected {expected}")
    return findings


def _filled(
    arg: str, named: Mapping[str, Mapping[int, str]], records: Mapping[str, Mapping[str, Any]]
) -> str:
    def value(match: re.Match[str]) -> str:
        step, name = match.group(1), match.group(2)
        job_id = named.get(step, {}).get(0)
        outputs = records.get(job_id or "", {}).get("outputs") or {}
        if name not in outputs:
            raise LookupError(f"step {step}'s job {job_id} reported no output {name!r}")
        found = outputs[name]
        return ("true" if found else "false") if isinstance(found, bool) else str(found)

    return OUTPUT_REF.sub(value, arg)
