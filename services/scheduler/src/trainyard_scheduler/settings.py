from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from trainyard_shared.settings import HttpSettings


class SchedulerSettings(HttpSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_SCHEDULER_", extra="ignore")

    port: int = 8701
    tick_seconds: float = Field(1.0, gt=0, description="planning pass at least this often")
    start_resend_seconds: float = Field(
        20.0, gt=0, description="re-send a start command when a scheduled job has not started"
    )
    submitted_grace_seconds: float = Field(
        5.0, gt=0, description="a record left in submitted this long is queued by the reconciler"
    )
