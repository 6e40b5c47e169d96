"""Settings from the environment (pydantic-settings).

``CommonSettings`` (prefix ``TRAINYARD_``) is what every service shares; each service adds its own
class with its own prefix (``TRAINYARD_SCHEDULER_`` ...).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from trainyard_contracts import Subjects
from trainyard_contracts.subjectpatterns import foreign_pattern_problem

if TYPE_CHECKING:
    from trainyard_shared.blobs.unpack import UnpackLimits

# A duration setting (how long, how often): more than zero. The constraint is said once here; each
# field keeps its own default and description (pydantic merges the two).
Seconds = Annotated[float, Field(gt=0)]
# A size setting in bytes: a KiB at least.
Bytes = Annotated[int, Field(ge=1024)]


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
    provision_wait_seconds: Seconds = Field(
        120.0, description="how long a binding service waits for the provision step"
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

    trigger_subjects: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        max_length=64,
        description="subject patterns of other systems' events that triggers may follow, comma-"
        "separated (datasets.>,ci.*.done): the triggers stream stores them, and a trigger on any "
        "other subject is refused. <prefix>.trigger.> and <prefix>.model.> are always allowed",
    )

    @field_validator("trigger_subjects", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _foreign_subjects_only(self) -> CommonSettings:
        for pattern in self.trigger_subjects:
            problem = foreign_pattern_problem(pattern, self.prefix)
            if problem:
                raise ValueError(f"trigger_subjects: {pattern!r}: {problem}")
        return self

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


class WorkdirLimitSettings(BaseSettings):
    """A packed workdir's bounds, the same for the service that takes the upload (submission) and
    the one that unpacks it for a job (executor); each reads them under its own prefix."""

    max_workdir_bytes: Bytes = Field(
        100 * 1024 * 1024, description="a packed workdir: the archive and its unpacked content"
    )
    max_workdir_files: int = Field(10_000, ge=1, description="files and folders in a packed workdir")

    @property
    def workdir_limits(self) -> UnpackLimits:
        """The archive and its unpacked content are each held to ``max_workdir_bytes``."""
        from trainyard_shared.blobs.unpack import UnpackLimits

        return UnpackLimits(self.max_workdir_bytes, self.max_workdir_files, self.max_workdir_bytes)


def default_replica_id() -> str:
    """A replica's name in a lease when its settings name none: host and process."""
    return f"{socket.gethostname()}-{os.getpid()}"


# a replica's name in a lease (the scheduler's leader lease, the workflow's ticker lease)
ReplicaId = Annotated[str, Field(default_factory=default_replica_id, min_length=1)]


class HttpSettings(BaseSettings):
    """Where a service serves /metrics and /healthz (and, for submission, the API)."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0: no HTTP server")
