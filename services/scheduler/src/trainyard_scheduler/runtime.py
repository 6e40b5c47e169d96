"""The scheduler's composition root: everything its handlers and loop use, built once at start-up."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from trainyard_contracts import JobRecord, JobState
from trainyard_contracts.reports import ExecutorReport
from trainyard_scheduler.admission import AdmissionGate
from trainyard_scheduler.core import SchedulerCore
from trainyard_scheduler.leader import LeaderLease, Listener
from trainyard_scheduler.planning import PlanningLoop, PublishCycle
from trainyard_scheduler.policy import Plan
from trainyard_scheduler.room import frees_room
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared import appliedword
from trainyard_shared.binding import connect_and_bind
from trainyard_shared.broker import ServiceBroker
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobindex import JobIndex
from trainyard_shared.jobsecrets import ForgetWhenEnded, SecretStore
from trainyard_shared.jobstore import JobStore
from trainyard_shared.jobview import JobView
from trainyard_shared.liveread import read_live
from trainyard_shared.natshandle import NatsHandle
from trainyard_shared.publishing import CommandSender, EventPublisher, publish_acked
from trainyard_shared.queueview import QueueView
from trainyard_shared.reports import ReportApplier
from trainyard_shared.settings import CommonSettings

log = logging.getLogger("trainyard.scheduler")


@dataclass
class SchedulerRuntime:
    registry: CollectorRegistry
    core: SchedulerCore
    view: JobView
    queue_view: QueueView
    lease: LeaderLease
    directory: ExecutorDirectory
    planning: PlanningLoop
    reports: ReportApplier

    def start(self) -> None:
        self.planning.start()
        self.lease.start()

    async def stop(self) -> None:
        """Let a pass in flight finish its announcements, then hand the lease to a standby."""
        await self.planning.stop()
        await self.lease.stop(release=True)
        await self.view.stop()
        await self.queue_view.stop()
        await self.directory.stop()


def leadership_gauges(registry: CollectorRegistry, replica: str, wake: asyncio.Event) -> Listener:
    """The lease's listener: the leader and term gauges, and a new leader plans at once."""
    leader_gauge = Gauge(
        "trainyard_scheduler_leader",
        "1 while this replica holds the scheduler lease (runs planning and reconciling), else 0",
        ["replica"],
        registry=registry,
    )
    term_gauge = Gauge(
        "trainyard_scheduler_leader_term",
        "the term of the scheduler lease this replica holds or last held",
        ["replica"],
        registry=registry,
    )
    leader_gauge.labels(replica=replica).set(0)

    def on_leadership(leader: bool, term: int) -> None:
        leader_gauge.labels(replica=replica).set(1 if leader else 0)
        term_gauge.labels(replica=replica).set(term)
        wake.set()

    return on_leadership


def wakes_planner(before: JobRecord | None, after: JobRecord) -> bool:
    """Plan again when a job becomes pending, or one ends or a stopped attempt's process has ended
    (room.py) and frees its capacity."""
    return (
        after.state.pending
        or after.state.terminal
        or after.state == JobState.SUBMITTED
        or frees_room(before, after)
    )


def admission_gate(common: CommonSettings) -> AdmissionGate:
    key = common.admission_key_bytes
    if key is None:
        log.warning(
            "no admission key (TRAINYARD_ADMISSION_KEY): job records are placed without checking "
            "that the submission service admitted them (docs/security.md)"
        )
    return AdmissionGate(key)


def cycle_publisher(
    sb: ServiceBroker, settings: SchedulerSettings, lease: LeaderLease, core: SchedulerCore
) -> PublishCycle:
    """Publishes a pass's decisions (one event per pass that changed something)."""

    async def publish_cycle(decided: Plan, cycle: int, seconds: float) -> None:
        event = core.cycle_decisions(
            decided, cycle=cycle, replica=settings.replica_id, term=lease.term, seconds=seconds
        )
        await publish_acked(
            sb.broker,
            sb.subjects.scheduler_decisions,
            event.model_dump_json().encode(),
            {"Nats-Msg-Id": f"cycle:{settings.replica_id}:{lease.term}:{cycle}"},
            sb.subjects.streams.scheduler,
        )

    return publish_cycle


async def tell_applied(
    sb: ServiceBroker, report: ExecutorReport, known: tuple[JobRecord, int] | None
) -> None:
    """Wake the executor waiting on this report's record and tell it what the record is now
    (core NATS, trainyard_shared.appliedword)."""
    subject = sb.subjects.exec_applied(report.executor_id)
    await appliedword.publish(NatsHandle(sb.broker).client, subject, report.job_id, known)


async def build_runtime(
    sb: ServiceBroker,
    common: CommonSettings,
    settings: SchedulerSettings,
    wake: asyncio.Event,
    on_leadership: Listener,
) -> SchedulerRuntime:
    buckets = await connect_and_bind(sb, common)
    # the jobs index: every state change the scheduler writes keeps it (jobindex.py)
    handle = NatsHandle(sb.broker)
    index = JobIndex(handle.client, handle.jetstream, sb.subjects)
    store = JobStore(buckets.jobs, index=index)
    # finished jobs beyond the most recent ones are not kept: the bucket holds every job the
    # installation ever ran (docs/scheduling.md, "Memory"); a start reads the live ones only, from
    # the jobs index (liveread.py: a restart costs the live jobs, not the history)
    view = JobView(buckets.jobs, keep_finished=settings.keep_finished_records)
    store.on_written(view.apply)
    await view.start(live=await read_live(buckets.jobs, index))
    view.on_change(lambda before, after: wake.set() if wakes_planner(before, after) else None)
    view.on_change(ForgetWhenEnded(SecretStore(buckets.secrets)))  # a job's secrets go at its end
    store.read_through(view)
    queue_view = QueueView(buckets.queues)
    await queue_view.start()
    lease = LeaderLease(
        buckets.leases,
        settings.replica_id,
        lease_seconds=settings.lease_seconds,
        renew_seconds=settings.renew_seconds,
    )
    lease.on_change(on_leadership)
    directory = ExecutorDirectory(buckets.executors)
    await directory.start()
    core = SchedulerCore(
        store,
        view,
        EventPublisher(sb.broker, sb.subjects),
        CommandSender(sb.broker, sb.subjects),
        directory,
        settings,
        may_assign=lambda: lease.is_leader,
        queue_configs=queue_view.configs,
        admission=admission_gate(common),
    )
    planning = PlanningLoop(core, lease, settings, wake, cycle_publisher(sb, settings, lease, core))
    reports = ReportApplier(store, core.events, notify=functools.partial(tell_applied, sb))
    return SchedulerRuntime(sb.registry, core, view, queue_view, lease, directory, planning, reports)
