"""How much the streams keep: the limits an installation may set (``TRAINYARD_*`` variables).

Retention is per stream and bounded everywhere a client (or one busy job) could otherwise grow it
without end; the oldest messages go first when a limit is reached (``discard: old``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1024**3
MiB = 1024**2

# the constraints every stream and bucket shares, said once; each field keeps its own default and
# description (pydantic merges the two)
StoreBytes = Annotated[int, Field(ge=MiB)]  # a stream's or bucket's size: a MiB at least
KeptDays = Annotated[float, Field(gt=0)]  # how long it keeps a message: more than zero
PerSubject = Annotated[int, Field(ge=10)]  # messages kept per subject (one attempt's): ten at least


class StreamLimits(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_", extra="ignore")

    logs_max_bytes: StoreBytes = Field(2 * GiB, description="the logs stream, every job's output")
    logs_max_age_days: KeptDays = Field(7, description="how long job output is kept")
    logs_max_msgs_per_subject: PerSubject = Field(
        100_000,
        description="log chunks kept per attempt (one subject each), oldest dropped first: the "
        "server's guard behind the executor's per-attempt cap",
    )
    logs_max_msg_bytes: int = Field(
        1 * MiB, ge=64 * 1024, description="the largest log chunk the stream stores"
    )
    metrics_max_bytes: StoreBytes = Field(
        1 * GiB, description="the metrics stream, every job's reported training metrics"
    )
    metrics_max_age_days: KeptDays = Field(7, description="how long reported metrics are kept")
    metrics_max_msgs_per_subject: PerSubject = Field(
        10_000,
        description="metric batches kept per attempt (one subject each), oldest dropped first: with "
        "metrics_max_msg_bytes, what one attempt can hold of the stream (10,000 x 64 KiB = 625 MiB "
        "at most; a batch a second, about 2.8 hours of a job that reports without pause)",
    )
    metrics_max_msg_bytes: int = Field(
        64 * 1024, ge=4096, description="the largest metrics batch the stream stores (executors cut under it)"
    )
    jobs_max_bytes: StoreBytes = Field(1 * GiB, description="the job events stream")
    jobs_max_age_days: KeptDays = Field(30, description="how long job events are kept")
    job_index_max_bytes: StoreBytes = Field(
        4 * GiB,
        description="the jobs index (one small entry per job, ~300 bytes: about 14 million jobs); "
        "full: the entries stored first are dropped (those jobs leave the job lists, not the bucket)",
    )
    dlq_max_bytes: StoreBytes = Field(256 * MiB, description="the dead-letter stream")
    dlq_max_age_days: KeptDays = Field(30, description="how long a dead letter is kept")
    workdirs_max_bytes: StoreBytes = Field(
        2 * GiB,
        description="the packed workdirs bucket; full: an upload is refused (discard new), never "
        "a stored workdir dropped for it",
    )
    workdirs_max_age_days: KeptDays = Field(
        30, description="how long a packed workdir is kept; a retry after that fails saying so"
    )
    step_outputs_max_bytes: StoreBytes = Field(
        2 * GiB,
        description="the pipeline steps' packed outputs folders ($TRAINYARD_INPUTS); full: a step's "
        "attempt that cannot store its folder fails saying so (discard new), none stored is dropped",
    )
    step_outputs_max_age_days: KeptDays = Field(
        30,
        description="how long a step's packed outputs folder is kept; a dependent started (or "
        "retried) after that fails saying it is not stored",
    )
