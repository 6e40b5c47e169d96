"""Whether a resubmission under the same idempotency key asks for the same job (pure, no I/O).

Stripe's rule: the same key with different parameters is an error naming what differs, never the
old job silently. What submission itself adds to a spec (the commit a ref resolved to, the
credential and secret values it moved out) is not a difference.
"""

from __future__ import annotations

from typing import Any

from trainyard_contracts import JobSpec
from trainyard_contracts.jobsecrets import split_secrets


class IdempotencyConflict(ValueError):
    def __init__(self, job_id: str, differs: list[str]) -> None:
        self.job_id, self.differs = job_id, differs
        super().__init__(
            f"this idempotency key already submitted job {job_id} with a different spec;"
            f" these fields differ: {', '.join(differs)}"
        )


def _comparable(spec: JobSpec, keep_commit: bool) -> dict[str, Any]:
    stored, _ = split_secrets(spec)
    data: dict[str, Any] = stored.model_dump(mode="json")
    source = data.get("source")
    if isinstance(source, dict):
        source.pop("credential", None)
        if not keep_commit:
            source.pop("commit", None)
    return data


def spec_differences(new: JobSpec, stored: JobSpec) -> list[str]:
    """The top-level fields in which ``new`` (as submitted) asks for another job than ``stored``."""
    keep_commit = bool(new.source and new.source.commit)
    a, b = _comparable(new, keep_commit), _comparable(stored, keep_commit)
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))
