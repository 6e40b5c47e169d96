from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from trainyard_shared.settings import HttpSettings
from trainyard_telemetry.live import LiveLimits


class TelemetrySettings(HttpSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_TELEMETRY_", extra="ignore")

    port: int = 8704
    metrics_max_jobs: int = Field(
        1000, ge=1, description="running jobs whose reported metrics are exposed at most (label job_id)"
    )
    metrics_max_names: int = Field(
        32, ge=1, description="metric names exposed per job at most (label name): its first ones"
    )
    metrics_allow: str | None = Field(
        None, description="a regular expression a metric name must match in full to be exposed"
    )

    def live_limits(self) -> LiveLimits:
        return LiveLimits(
            max_jobs=self.metrics_max_jobs, max_names=self.metrics_max_names, allow=self.metrics_allow
        )
