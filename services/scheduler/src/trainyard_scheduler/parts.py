"""What every part of ``SchedulerCore`` works with: its collaborators and what the last pass saw.

Collaborators come in as arguments (store, view, publishers, executor directory, clock), so tests
run the core against a real NATS without the faststream app around it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from trainyard_contracts import (
    QueueConfig,
    WaitReason,
)
from trainyard_contracts._time import utcnow
from trainyard_contracts.records import ExecutorHeartbeat
from trainyard_scheduler.admission import AdmissionGate
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_scheduler.unconfirmed import Unconfirmed
from trainyard_shared.executors import ExecutorDirectory
from trainyard_shared.jobstore import JobStore
from trainyard_shared.jobview import JobView
from trainyard_shared.publishing import CommandSender, EventPublisher


class SchedulerParts:
    """The scheduler's collaborators and memory; the use cases are its subclasses' methods."""

    def __init__(
        self,
        store: JobStore,
        view: JobView,
        events: EventPublisher,
        commands: CommandSender,
        executors: ExecutorDirectory,
        settings: SchedulerSettings,
        clock: Callable[[], datetime] = utcnow,
        may_assign: Callable[[], bool] = lambda: True,
        queue_configs: Callable[[], tuple[QueueConfig, ...]] = tuple,
        admission: AdmissionGate | None = None,
    ) -> None:
        self.queue_configs = queue_configs
        # only what the submission service admitted is placed (admission.py)
        self.admission = admission or AdmissionGate(None)
        self.unadmitted: set[str] = set()  # waiting records the last snapshot left out
        self.store = store
        self.view = view
        self.events = events
        self.commands = commands
        self.executors = executors
        self.settings = settings
        self.clock = clock
        # leadership: asked before every assignment or requeue, so a replica that lost (or never
        # had) the lease stops acting at once. Safety does not depend on it: each decision is a
        # compare-and-set on the job record, so two replicas cannot both make the same one.
        self.may_assign = may_assign
        self.waiting: dict[str, str] = {}
        self.reasons: dict[str, WaitReason] = {}  # from the last pass: what `why` answers
        self.decided_at: datetime | None = None
        self.online: dict[str, ExecutorHeartbeat] = {}  # from the last snapshot
        # executor -> GPU indices live attempts hold there: from the last snapshot, plus what this
        # pass assigned since
        self.held_gpus: dict[str, set[int]] = {}
        # what a written change still owes its followers (unconfirmed.py): retried with backoff
        self.unconfirmed = Unconfirmed()
        # executor id -> when (monotonic) this leader first saw it without a lease while an attempt
        # was on it: its attempts are requeued only once it has stayed away lost_grace_seconds
        self.absent_since: dict[str, float] = {}
