"""A trigger's record (the workflow service's KV value) and the API's trigger requests.

Requests go on ``<prefix>.workflow.trigger-<verb>`` (request/reply, as schedules do): ``create``
(trigger), ``list`` (limit), ``get``/``delete``/``suspend``/``resume`` (name). Answers are a
:class:`TriggerReply`.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts._time import utcnow
from trainyard_contracts.spec import FieldError, ParamValue
from trainyard_contracts.workflow import TriggerSpec

MAX_PENDING_FIRES = 100  # decided to fire, their run not yet known to exist
TRIGGER_VERBS = ("create", "list", "get", "delete", "suspend", "resume")


class PendingFire(BaseModel):
    """A run decided on and not yet known to exist: due now (no debounce) or when its debounce
    window closes. A restart starts it under the same run id."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    params: dict[str, ParamValue] = Field(default_factory=dict)
    due: datetime = Field(description="when it starts (UTC): the end of its debounce window, or at once")
    stream: str = Field(description="the stream of the event its parameters come from")
    seq: int = Field(description="that event's stream sequence")
    events: int = Field(1, description="matching events folded into it (debounce)")


class TriggerRecord(BaseModel):
    """One trigger: its spec, where it stands in each stream it reads, what it did with events.
    Every change is a compare-and-set on the KV revision."""

    model_config = ConfigDict(frozen=True)

    spec: TriggerSpec
    seen: dict[str, int] = Field(
        default_factory=dict,
        description="per stream, the sequence of the last event looked at: an event delivered again "
        "(after a restart) is not counted or fired twice",
    )
    pending: list[PendingFire] = Field(default_factory=list, max_length=MAX_PENDING_FIRES)
    fired: int = Field(0, description="runs started")
    filtered: int = Field(0, description="events on the subject that the filter turned away")
    deduplicated: int = Field(0, description="events whose dedupe value had started a run already")
    debounced: int = Field(0, description="events folded into a window another event had opened")
    invalid: int = Field(0, description="events whose parameters did not make a valid pipeline")
    bad_events: int = Field(0, description="events on the subject that were not JSON, or too large")
    suspended_events: int = Field(0, description="events on the subject while it was suspended: never fired")
    last_run_id: str | None = None
    last_error: str | None = Field(None, description="why the last invalid or bad event was not fired")
    created: datetime = Field(default_factory=utcnow)
    created_by: str | None = None


class TriggerRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    trigger: dict[str, object] | None = Field(None, description="create: the trigger document")
    name: str | None = Field(None, max_length=128)
    limit: int = Field(100, ge=1, le=1000)
    by: str | None = Field(None, max_length=256, description="who asks (the API's principal)")


class TriggerReply(BaseModel):
    model_config = ConfigDict(frozen=True)

    ok: bool
    status: int = 200
    trigger: TriggerRecord | None = None
    triggers: list[TriggerRecord] | None = None
    errors: list[FieldError] = Field(default_factory=list)


__all__ = [
    "MAX_PENDING_FIRES",
    "TRIGGER_VERBS",
    "PendingFire",
    "TriggerRecord",
    "TriggerReply",
    "TriggerRequest",
]
