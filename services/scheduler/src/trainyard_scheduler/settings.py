from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from trainyard_shared.settings import HttpSettings, ReplicaId, Seconds


class SchedulerSettings(HttpSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_SCHEDULER_", extra="ignore")

    port: int = 8701
    tick_seconds: Seconds = Field(1.0, description="planning pass at least this often")
    keep_finished_records: int = Field(
        10_000,
        ge=0,
        description="finished jobs' records kept in memory (the most recently finished); older ones "
        "are read from the jobs bucket when asked about",
    )
    start_resend_seconds: Seconds = Field(
        20.0, description="re-send a start command when a scheduled job has not started"
    )
    submitted_grace_seconds: Seconds = Field(
        5.0, description="a record left in submitted this long is queued by the reconciler"
    )
    preemption_grace_seconds: float = Field(
        30.0, ge=0, le=3600, description="a preempted attempt gets SIGTERM and this long to checkpoint"
    )
    lost_grace_seconds: float = Field(
        15.0,
        ge=0,
        description="an executor whose lease expired is known dead, and its attempts are requeued, only "
        "after this long with no heartbeat from it, counted from when this leader first saw it without "
        "a lease: an executor restarting (same id) adopts its attempts first",
    )
    replica_id: ReplicaId = Field(
        description="this replica's name in the leader lease (default hostname-pid)"
    )
    lease_seconds: Seconds = Field(
        3.0, description="the leader lease lasts this long; a standby takes over after it"
    )
    renew_seconds: float | None = Field(
        None, gt=0, description="the leader renews its lease this often (default lease_seconds / 3)"
    )

    @model_validator(mode="after")
    def _renew_within_lease(self) -> SchedulerSettings:
        if self.renew_seconds is None:
            self.renew_seconds = self.lease_seconds / 3
        if self.renew_seconds >= self.lease_seconds:
            raise ValueError(
                f"renew_seconds ({self.renew_seconds}) must be shorter than lease_seconds "
                f"({self.lease_seconds}), a third of it is usual"
            )
        return self
