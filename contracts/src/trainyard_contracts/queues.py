"""Queue configuration, kept in the ``queues`` KV bucket (key: the queue's name).

The model is Kueue's ClusterQueue and cohort: a queue has a nominal quota per resource, may borrow
what other queues of its cohort leave unused up to a borrowing limit, and shares the cluster with
the other queues in proportion to its weight (dominant-resource fair share).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from trainyard_contracts.spec import QueueName

MAX_METRIC_PATTERNS = 64
MetricPattern = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/\-*?\[\]!]+$")
]
"""A shell-style pattern of metric names (``loss``, ``eval/*``, ``acc?``): fnmatch, case-sensitive."""


class Quota(BaseModel):
    """Resource amounts; ``None`` means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: float | None = Field(None, ge=0, description="cores")
    memory: int | None = Field(None, ge=0, description="MiB")
    gpu: int | None = Field(None, ge=0)


class QueueConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: QueueName
    weight: float = Field(1.0, gt=0, le=1e6, description="share of the cluster relative to other queues")
    quota: Quota = Field(default_factory=Quota, description="nominal quota; unset resources are unlimited")
    cohort: str | None = Field(None, description="queues of one cohort lend each other unused quota")
    borrowing_limit: Quota = Field(
        default_factory=lambda: Quota(cpu=0, memory=0, gpu=0),
        description="how much above its nominal quota the queue may borrow from its cohort",
    )
    allow_shell: bool = Field(False, description="accept specs with shell: true")
    allow_root: bool = Field(
        False, description="accept specs with run_as_root: true (containers run as root)"
    )
    max_priority: int = Field(
        0,
        ge=-1000,
        le=1000,
        description="the highest priority a spec may ask for in this queue (priority orders and "
        "preempts across queues, so raising it is an admin's decision)",
    )
    allow_anonymous_bus: bool = Field(
        False,
        description="accept bus-intake submissions that carry no Trainyard-Token (identified ones "
        "follow the token's rights)",
    )
    preemptible_by_default: bool = False
    metric_names: list[MetricPattern] | None = Field(
        None,
        max_length=MAX_METRIC_PATTERNS,
        description="the metric names a running job of this queue shows in Prometheus with its job "
        "id, as shell-style patterns (None: every name the installation allows; []: none; the "
        "executor's sys.* samples are always shown)",
    )


DEFAULT_QUEUE = QueueConfig(
    name="default", borrowing_limit=Quota(), allow_shell=True, allow_anonymous_bus=True
)
