from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from trainyard_shared.settings import Bytes, HttpSettings, Seconds, WorkdirLimitSettings
from trainyard_submission.aliasrules import DEFAULT_ALIAS_RULES, AliasRule


class SubmissionSettings(HttpSettings, WorkdirLimitSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_SUBMISSION_", extra="ignore")

    port: int = 8700
    token: SecretStr | None = Field(
        None, description="API bearer token; default: generated once into <data_dir>/api-token"
    )
    max_body_bytes: Bytes = 1024 * 1024
    git_timeout_seconds: Seconds = 20.0
    index_clock_skew_seconds: float = Field(
        0.25,
        ge=0,
        description="how far this service's clock may run ahead of nats-server's: a newest-first job "
        "list reads the jobs index back to this much before its last row's submission time (jobindex.py)",
    )
    scheduler_timeout_seconds: Seconds = Field(
        5.0, le=60, description="how long `why` and dry runs wait for the scheduler leader"
    )
    alias_rules: list[AliasRule] = Field(
        default_factory=lambda: list(DEFAULT_ALIAS_RULES),
        description="who may move which model alias, first match wins (aliasrules.py, docs/models.md)",
    )
    registry_timeout_seconds: Seconds = Field(
        30.0, le=120, description="how long model alias and version requests wait for the registry"
    )
    ui_queue_sample_seconds: float = Field(
        60.0, ge=0.1, le=3600, description="the web UI's queue chart: how often each queue is sampled"
    )
    ui_queue_history_hours: float = Field(
        6.0, gt=0, le=48, description="the web UI's queue chart: how far back it reaches (kept in memory)"
    )
