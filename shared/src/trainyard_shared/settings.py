"""Settings from the environment (pydantic-settings).

``CommonSettings`` (prefix ``TRAINYARD_``) is what every service shares; each service adds its own
class with its own prefix (``TRAINYARD_SCHEDULER_`` ...).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainyard_contracts import Subjects


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_", extra="ignore")

    nats_url: str = Field("nats://127.0.0.1:4222", description="comma-separated NATS servers")
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_creds: Path | None = Field(None, description="a NATS .creds file (JWT auth)")
    nats_inbox_prefix: str | None = Field(
        None,
        description="where replies and deliveries arrive; default _INBOX.<nats_user> with a user "
        "(the only inbox its NATS permissions let it read), else _INBOX",
    )
    declare_streams: bool | None = Field(
        None,
        description="declare streams and buckets at start-up; default: only without a NATS user or "
        "credentials (with one, the provision step declares them and the service binds)",
    )
    provision_wait_seconds: float = Field(
        120.0, gt=0, description="how long a binding service waits for the provision step"
    )
    prefix: str = Field("trainyard", description="subject prefix; two installs can share a NATS")
    data_dir: Path = Field(Path(".trainyard"), description="embedded state: tokens, work dirs")
    log_level: str = "INFO"
    log_format: str = Field("json", description="json or text")
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas (3 in a cluster)")
    admission_key: SecretStr | None = Field(
        None,
        min_length=16,
        description="the key the submission service signs what it admits with, and the scheduler "
        "checks before placing a job (trainyard_contracts.admission); only those two services get "
        "it. None: nothing signed, nothing checked (the scheduler says so at start)",
    )
    gc_young_threshold: int = Field(
        50_000,
        ge=0,
        description="Python's youngest-generation GC threshold for a service process (0: Python's "
        "default, 700); see docs/performance.md, garbage collection",
    )

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.prefix)

    @property
    def admission_key_bytes(self) -> bytes | None:
        return self.admission_key.get_secret_value().encode() if self.admission_key else None

    @property
    def inbox_prefix(self) -> str:
        if self.nats_inbox_prefix:
            return self.nats_inbox_prefix
        return f"_INBOX.{self.nats_user}" if self.nats_user else "_INBOX"

    @property
    def declares_streams(self) -> bool:
        if self.declare_streams is not None:
            return self.declare_streams
        return not (self.nats_user or self.nats_creds)

    def resolved_data_dir(self) -> Path:
        path = self.data_dir.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path


class HttpSettings(BaseSettings):
    """Where a service serves /metrics and /healthz (and, for submission, the API)."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0: no HTTP server")
