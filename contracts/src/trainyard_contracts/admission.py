"""What the submission service admitted, signed: an HMAC over a record's admission facts.

Executors may still write job records (docs/security.md, "What an executor may write in the jobs
bucket"): a stolen executor password could create a record in ``submitted`` with any queue,
priority and command, or rewrite a waiting job's spec, past the submission service's admission
rules. The submission service signs what it admitted with a key only it and the scheduler hold
(``TRAINYARD_ADMISSION_KEY``); the scheduler places only records whose signature verifies.

Signed: the job id, who submitted it and the spec as stored (secret values already replaced by
``***``), in a canonical JSON form. Not signed: what changes as the job moves (state, attempt,
executor, times), which the scheduler and the executors write.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainyard_contracts.records import JobRecord
    from trainyard_contracts.spec import JobSpec

ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 16


def admission_mac(key: bytes, job_id: str, submitted_by: str | None, spec: JobSpec) -> str:
    """``hmac-sha256:<hex>`` over the admission facts of a job."""
    facts = {"job_id": job_id, "submitted_by": submitted_by, "spec": spec.model_dump(mode="json")}
    canonical = json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM}:{digest}"


def signed(record: JobRecord, key: bytes) -> JobRecord:
    """``record`` with its admission signature."""
    mac = admission_mac(key, record.job_id, record.submitted_by, record.spec)
    return record.model_copy(update={"admission": mac})


def is_admitted(record: JobRecord, key: bytes) -> bool:
    """True when ``record`` carries the signature of what the submission service admitted."""
    if not record.admission:
        return False
    expected = admission_mac(key, record.job_id, record.submitted_by, record.spec)
    return hmac.compare_digest(record.admission.encode(), expected.encode())


__all__ = ["ALGORITHM", "MIN_KEY_BYTES", "admission_mac", "is_admitted", "signed"]
