"""Commands the scheduler sends on an executor's command subject."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from trainyard_contracts._time import utcnow
from trainyard_contracts.records import JobRecord
from trainyard_contracts.spec import JobSpec


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: str
    attempt: int = Field(ge=1)
    executor_id: str
    issued_at: datetime = Field(default_factory=utcnow)
    traceparent: str | None = None


class Rendezvous(BaseModel):
    """Where the ranks of a gang (``replicas > 1``) meet: torchrun's variables, set per rank.

    The scheduler sends one ``StartAttempt`` per executor of the gang, each naming the global
    ranks that executor runs; rank 0's host is the master.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    master_addr: str
    master_port: int = Field(ge=1, le=65535)
    world_size: int = Field(ge=1)
    ranks: list[int] = Field(min_length=1, description="the global ranks this executor runs")


class StartAttempt(_Command):
    type: Literal["start"] = "start"
    spec: JobSpec | None = Field(
        None,
        description="the job's spec; None when record is given, which holds it (the spec travels "
        "once). Always present from schedulers before schema 2 of this command",
    )
    rendezvous: Rendezvous | None = Field(
        None,
        description="a gang split across executors, when record is not given; None: the record's "
        "gang holds it (it travels once), or this executor runs every replica itself with a loopback "
        "rendezvous. Always present for a split gang from schedulers before schema 2 of this command",
    )
    record: JobRecord | None = Field(
        None,
        description="the job's record as the scheduling write left it; with record_revision the "
        "executor's first compare-and-set needs no read (a record changed since costs one failed "
        "compare-and-set, then a read). None from older schedulers: the executor reads the record",
    )
    record_revision: int | None = Field(None, ge=1, description="the KV revision of record")
    gpus: list[int] = Field(
        default_factory=list,
        max_length=1024,
        description="the GPU indices this executor's ranks were assigned, as the record holds them "
        "(empty: none assigned; the backend then counts GPUs as before)",
    )

    @model_validator(mode="after")
    def _spec_or_record(self) -> StartAttempt:
        if self.spec is None and self.record is None:
            raise ValueError("a start command needs the spec or the record that holds it")
        return self

    @property
    def job_spec(self) -> JobSpec:
        """The spec to run: the command's own, else the record's."""
        spec = self.spec if self.spec is not None else self.record.spec if self.record else None
        assert spec is not None  # _spec_or_record
        return spec


class CancelAttempt(_Command):
    type: Literal["cancel"] = "cancel"
    reason: str = "cancelled by request"
    grace_seconds: float = Field(10.0, ge=0, le=3600)


ExecutorCommand = Annotated[StartAttempt | CancelAttempt, Field(discriminator="type")]
EXECUTOR_COMMAND_ADAPTER: TypeAdapter[ExecutorCommand] = TypeAdapter(ExecutorCommand)
