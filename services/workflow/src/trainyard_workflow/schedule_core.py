"""When a schedule fires: the pure core (no I/O, no clock of its own).

A schedule is a 5-field cron read in an IANA time zone. Given the last tick it handled and a
clock reading, ``plan_ticks`` says which ticks fire now, which are dropped and why, and which
runs to stop. Ticks are UTC instants; the service turns each into a run whose id is derived from
(schedule, tick) by ``tick_run_id``, so a tick fired twice (a restart, two replicas) is one run.

Rules (Argo's CronWorkflow, with Kubernetes' CronJob where Argo is silent):
- Daylight saving time follows cronsim (Debian cron): a tick in the hour that is skipped in spring
  fires at the first minute after the change; a tick in the hour that repeats in autumn fires once,
  on its first occurrence. A wildcard-hour cron (``*/30 * * * *``) fires in both copies of the
  repeated hour: they are different instants.
- Missed ticks (the service was down): with ``starting_deadline_seconds``, every tick no older
  than the deadline still fires, older ones are ``missed``; without one, only the most recent tick
  fires and the older ones are ``missed``. ``trainyard schedule backfill`` starts missed ticks.
- Concurrency, when ticks are due: ``allow`` fires every one; ``forbid`` fires the newest only if
  none of the schedule's runs is still going (otherwise all are ``forbidden``); ``replace`` fires
  the newest and asks to stop the runs still going. Older due ticks under forbid/replace are
  ``forbidden``/``replaced``: one run at a time cannot start a queue of them.
- Suspended: due ticks are dropped (``suspended``), so a resume does not fire what the suspension
  held back; backfill does, on request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from trainyard_contracts.ids import _base36
from trainyard_contracts.schedules import MAX_ACTIVE_RUNS, MAX_PENDING_TICKS, ScheduleRecord
from trainyard_contracts.workflow import ConcurrencyPolicy, ScheduleSpec

MAX_FIRED_PER_PASS = 100  # under allow; the rest stay due and fire on the next pass
MAX_COUNTED = 10_000  # dropped ticks counted per pass (a year of a minutely cron is not walked)
MAX_BACKFILL = 1000  # ticks one backfill may start


class CronError(ValueError):
    """A cron expression cronsim cannot read (the message says which part and why)."""


def check_cron(expression: str) -> str:
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise CronError(f"not a cron expression: {exc}") from None
    return expression


def _ticks_after(spec: ScheduleSpec, after: datetime) -> Iterator[datetime]:
    """The schedule's ticks strictly after ``after``, in UTC, strictly increasing."""
    zone = ZoneInfo(spec.timezone)
    last = after.astimezone(UTC)
    for local in CronSim(spec.cron, last.astimezone(zone)):
        tick = local.astimezone(UTC)
        # cronsim, started inside the repeated autumn hour, can answer the first copy of that hour,
        # which is before its start: what is not after the last tick is not a tick
        if tick > last:
            last = tick
            yield tick


def ticks_between(
    spec: ScheduleSpec, after: datetime, until: datetime, limit: int = MAX_COUNTED
) -> list[datetime]:
    """Ticks in ``(after, until]``, oldest first, at most ``limit``."""
    out: list[datetime] = []
    if until <= after:
        return out
    for tick in _ticks_after(spec, after):
        if tick > until or len(out) >= limit:
            break
        out.append(tick)
    return out


def latest_tick(spec: ScheduleSpec, now: datetime) -> datetime | None:
    """The newest tick at or before ``now`` (None: none in the year before it)."""
    zone = ZoneInfo(spec.timezone)
    start = now.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    horizon = now - timedelta(days=366)
    for local in CronSim(spec.cron, start.astimezone(zone), reverse=True):
        tick = local.astimezone(UTC)
        if tick <= now:
            return tick if tick > horizon else None
    return None  # pragma: no cover - cronsim's reverse iteration does not end


@dataclass(frozen=True)
class TickPlan:
    """What one pass decides; ``last_tick`` is where the next pass starts."""

    last_tick: datetime
    fire: tuple[datetime, ...] = ()
    cancel: tuple[str, ...] = ()
    missed: int = 0
    forbidden: int = 0
    replaced: int = 0
    suspended: int = 0


def plan_ticks(
    spec: ScheduleSpec, last_tick: datetime, now: datetime, running: Sequence[str] = ()
) -> TickPlan:
    """Which ticks in ``(last_tick, now]`` fire, which are dropped, what stops (see the module)."""
    cutoff = _deadline_cutoff(spec, last_tick, now)
    if cutoff is None:
        return TickPlan(last_tick=last_tick)
    missed = len(ticks_between(spec, last_tick, cutoff)) if cutoff > last_tick else 0
    start = max(last_tick, cutoff)
    due = ticks_between(spec, start, now, MAX_FIRED_PER_PASS + 1)
    if not due:
        return TickPlan(last_tick=start, missed=missed)
    if spec.suspended:
        return TickPlan(last_tick=due[-1], suspended=missed + len(due))  # held back, not missed
    if spec.concurrency == ConcurrencyPolicy.allow:
        fire = due[:MAX_FIRED_PER_PASS]
        return TickPlan(last_tick=fire[-1], fire=tuple(fire), missed=missed)
    older, newest = len(due) - 1, due[-1]
    if spec.concurrency == ConcurrencyPolicy.forbid:
        if running:
            return TickPlan(last_tick=newest, missed=missed, forbidden=len(due))
        return TickPlan(last_tick=newest, fire=(newest,), missed=missed, forbidden=older)
    return TickPlan(last_tick=newest, fire=(newest,), cancel=tuple(running), missed=missed, replaced=older)


def _deadline_cutoff(spec: ScheduleSpec, last_tick: datetime, now: datetime) -> datetime | None:
    """Ticks at or before the cutoff are missed; None when nothing is due at all."""
    if spec.starting_deadline_seconds is not None:
        return now - timedelta(seconds=spec.starting_deadline_seconds)
    newest = latest_tick(spec, now)
    if newest is None or newest <= last_tick:
        return None
    return newest - timedelta(microseconds=1)


def backfill_ticks(spec: ScheduleSpec, start: datetime, end: datetime) -> list[datetime]:
    """Ticks in ``[start, end]`` (a backfill), oldest first; ValueError past MAX_BACKFILL."""
    if end < start:
        raise ValueError("'to' is before 'from'")
    ticks = ticks_between(spec, start - timedelta(microseconds=1), end, MAX_BACKFILL + 1)
    if len(ticks) > MAX_BACKFILL:
        raise ValueError(f"more than {MAX_BACKFILL} ticks between 'from' and 'to': backfill less at once")
    return ticks


def tick_run_id(schedule: str, tick: datetime) -> str:
    """The run a tick starts: the same (schedule, tick) always names the same run.

    A run id as ``new_job_id`` makes one (9 characters of the tick's milliseconds, so runs still
    sort by time, then 7 of a digest of the schedule's name)."""
    millis = int(tick.astimezone(UTC).timestamp() * 1000)
    digest = int.from_bytes(hashlib.sha256(schedule.encode()).digest()[:8], "big")
    return _base36(millis, 9) + _base36(digest, 7)


# -- the schedule's record: each function is the pure change one compare-and-set applies --------


def record_pass(
    record: ScheduleRecord, now: datetime, running: Sequence[str]
) -> tuple[ScheduleRecord, TickPlan]:
    """One pass of the ticker: the plan's ticks become ``pending`` (their runs are started after
    this change is stored, so a crash in between starts them on the next pass, under the same run
    ids), ``last_tick`` moves on, the drops are counted; runs no longer going are forgotten."""
    plan = plan_ticks(record.spec, record.last_tick, now, running)
    going = [run_id for run_id in record.active_runs if run_id in running]
    changed = record.model_copy(
        update={
            "last_tick": plan.last_tick,
            "pending": _merged(record.pending, plan.fire),
            "active_runs": going,
            "missed": record.missed + plan.missed,
            "forbidden": record.forbidden + plan.forbidden,
            "replaced": record.replaced + plan.replaced,
            "suspended_ticks": record.suspended_ticks + plan.suspended,
        }
    )
    return changed, plan


def record_started(record: ScheduleRecord, tick: datetime, run_id: str) -> tuple[ScheduleRecord, bool]:
    """The run of a pending tick exists: it leaves ``pending`` (once; a repeat changes nothing)."""
    if tick not in record.pending:
        return record, False
    active = [*[r for r in record.active_runs if r != run_id], run_id][-MAX_ACTIVE_RUNS:]
    changed = record.model_copy(
        update={
            "pending": [t for t in record.pending if t != tick],
            "active_runs": active,
            "fired": record.fired + 1,
            "last_run_id": run_id,
        }
    )
    return changed, True


def record_backfill(record: ScheduleRecord, ticks: Sequence[datetime]) -> tuple[ScheduleRecord, None]:
    """A backfill's ticks (those whose run does not exist yet) join ``pending`` whatever the
    concurrency policy: it was asked for."""
    pending = _merged(record.pending, ticks)
    if len(pending) > MAX_PENDING_TICKS:
        raise ValueError(
            f"{len(pending)} ticks would wait to start, more than {MAX_PENDING_TICKS}: backfill less at once"
        )
    return record.model_copy(update={"pending": pending}), None


def record_suspended(record: ScheduleRecord, suspended: bool, now: datetime) -> tuple[ScheduleRecord, None]:
    """Suspend or resume. A resume starts from ``now``: what the suspension held back does not
    fire (backfill does, on request), even if no pass ran while it was suspended."""
    spec = record.spec.model_copy(update={"suspended": suspended})
    last = record.last_tick if suspended else max(record.last_tick, now)
    if spec == record.spec:
        return record, None
    return record.model_copy(update={"spec": spec, "last_tick": last}), None


def _merged(pending: Sequence[datetime], ticks: Sequence[datetime]) -> list[datetime]:
    return sorted({*pending, *ticks})
