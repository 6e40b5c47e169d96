"""The scheduler places only what the submission service admitted (trainyard_contracts.admission).

A record that waits for placement and carries no valid admission signature was written past the
submission service (an executor's credentials can write job records; docs/security.md): it is
kept out of every planning pass, so it preempts no one and holds no place in the queue, and it is
cancelled with a reason that says why. A waiting job whose spec was rewritten after admission is
caught the same way, and the compare-and-set that schedules a job checks again, on the record it
writes, so a rewrite between the pass and the write is caught too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from trainyard_contracts import JobRecord
from trainyard_contracts.admission import is_admitted

log = logging.getLogger("trainyard.scheduler.admission")

NOT_ADMITTED = (
    "not admitted: the record carries no valid admission signature of the submission service "
    "(it was written or changed outside it)"
)


class AdmissionGate:
    """``admits(record)``: whether the scheduler may place it. Without a key, everything."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        # job id -> the bucket revision whose record verified: a waiting record is checked again
        # only once it changed, so a pass over 10,000 waiting jobs does not compute 10,000 HMACs
        self._verified: dict[str, int] = {}

    @property
    def enforced(self) -> bool:
        return self.key is not None

    def admits(self, record: JobRecord, revision: int | None = None) -> bool:
        if self.key is None:
            return True
        if revision is not None and self._verified.get(record.job_id) == revision:
            return True
        if not is_admitted(record, self.key):
            return False
        if revision is not None:
            self._verified[record.job_id] = revision
        return True

    def keep_only(self, job_ids: Iterable[str]) -> None:
        """Forget what is no longer waiting (memory bounded by the jobs that wait)."""
        live = set(job_ids)
        self._verified = {j: r for j, r in self._verified.items() if j in live}


__all__ = ["NOT_ADMITTED", "AdmissionGate"]
