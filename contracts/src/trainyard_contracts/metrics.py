"""Live training metrics: what a job reports (``trainyard.report(step, loss=...)``) as it reaches the
bus, ``<prefix>.metrics.<job_id>.<attempt>``, one message per batch of points.

The names a job may use are checked here, once for every reader: the executor drops what breaks
them before publishing, so a consumer (telemetry, the API) can trust a batch that parses.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

METRIC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,63}$"
"""A letter or ``_`` first, then letters, digits and ``_ . : / -``; at most 64 characters
(``loss``, ``train/acc``, ``lr:group0``): a label value Prometheus and a terminal show as is."""
_NAME = re.compile(METRIC_NAME_PATTERN)
MAX_STEP = 2**63 - 1


def metric_name_error(name: str) -> str | None:
    """Why ``name`` cannot be a metric's name, or None when it can."""
    if _NAME.match(name):
        return None
    shown = name if len(name) <= 40 else name[:40] + "..."
    return f"metric name {shown!r} must match {METRIC_NAME_PATTERN}"


def _finite_values(values: dict[str, float]) -> dict[str, float]:
    for name, value in values.items():
        error = metric_name_error(name)
        if error is not None:
            raise ValueError(error)
        if not math.isfinite(value):
            raise ValueError(f"metric {name!r}: {value} is not a finite number")
    return values


class MetricPoint(BaseModel):
    """One report: the step the job names, when (seconds since the epoch, the job's clock) and the
    values, each a finite float under a valid name."""

    model_config = ConfigDict(frozen=True)

    step: int = Field(ge=0, le=MAX_STEP)
    time: float = Field(ge=0)
    values: Annotated[dict[str, float], AfterValidator(_finite_values)] = Field(min_length=1)


class MetricsBatch(BaseModel):
    """Points of one attempt in the order the job reported them; ``seq`` orders the batches of an
    attempt as one executor published them (it starts again at 0 after an executor restart).
    ``dropped`` counts the job's lines left out of the batches up to this one (unparseable, a bad
    name or value, over the attempt's limits, thinned out over the rate limit)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    attempt: int = Field(ge=1)
    seq: int = Field(ge=0)
    points: list[MetricPoint]
    dropped: int = Field(0, ge=0)
