from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from trainyard_shared.settings import HttpSettings


class TelemetrySettings(HttpSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_TELEMETRY_", extra="ignore")

    port: int = 8704
