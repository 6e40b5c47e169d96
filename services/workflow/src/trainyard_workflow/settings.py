from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from trainyard_shared.settings import HttpSettings, ReplicaId, Seconds


class WorkflowSettings(HttpSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_WORKFLOW_", extra="ignore")

    port: int = 8705
    reconcile_seconds: Seconds = Field(
        10.0, description="how often open runs are looked over (unanswered submissions resent)"
    )
    intake_timeout_seconds: Seconds = Field(30.0, description="how long one submission waits for the intake")
    submit_concurrency: int = Field(64, ge=1, le=1024, description="submissions in flight at once")
    token: str | None = Field(
        None,
        description="an API token the workflow's submissions carry (Trainyard-Token): its team's "
        "queues and limits apply; without one only queues that allow anonymous bus submissions",
    )
    replica_id: ReplicaId = Field(
        description="this replica's name in the schedule ticker's lease (default hostname-pid)"
    )
    schedule_tick_seconds: Seconds = Field(
        5.0, le=60, description="how often the lease holder looks for due schedule ticks"
    )
    schedule_lease_seconds: Seconds = Field(
        10.0, description="the schedule ticker's lease; a standby takes over after it"
    )
