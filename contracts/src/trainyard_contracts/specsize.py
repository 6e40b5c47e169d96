"""How large a job spec may be, so every message built from it fits NATS' ``max_payload``.

A spec travels in the job record (the jobs bucket), the ``submitted`` event and the executor's
start command; the record also holds the attempts. :data:`MAX_SPEC_BYTES` (its JSON) leaves each
of those well under the server's default 1 MiB (``tests/security/test_spec_size.py`` builds every
one from a maximal spec and measures it). Checked where a spec is accepted (``validate_spec``),
not on every parse of a stored record, so an older, larger record still reads.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainyard_contracts.spec import FieldError, JobSpec

MAX_SPEC_BYTES = 256 * 1024


def spec_size_error(spec: JobSpec) -> FieldError | None:
    """None when ``spec`` fits; else an error naming its largest field and the sizes."""
    from trainyard_contracts.spec import FieldError

    size = len(spec.__pydantic_serializer__.to_json(spec))
    if size <= MAX_SPEC_BYTES:
        return None
    fields = spec.model_dump(mode="json")
    sizes = {name: len(json.dumps(value, ensure_ascii=False).encode()) for name, value in fields.items()}
    largest = max(sizes, key=lambda name: sizes[name])
    return FieldError(
        field=largest,
        message=f"the spec is {_kib(size)} as JSON, over the limit of {_kib(MAX_SPEC_BYTES)}; "
        f"{largest} is its largest field ({_kib(sizes[largest])}): keep large data in files the "
        "job reads (source, image, outputs), not in the spec",
    )


def _kib(size: int) -> str:
    return f"{size / 1024:.0f} KiB" if size >= 1024 else f"{size} bytes"
