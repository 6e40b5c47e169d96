"""The ``outputs.json`` a succeeded attempt left in its outputs folder, read without trusting it.

The folder is the job's: ``outputs`` itself, or ``outputs.json``, may be a link it planted to a
host file. The folder is opened below the attempt's work dir one component at a time and the file
with ``O_NOFOLLOW``, regular files only, at most one byte over the limit
(``trainyard_shared.hostpaths``); what is read is checked by
:func:`trainyard_contracts.stepoutputs.parse_outputs`. A file that is refused is reported as a
note for the job's log, never raised: the attempt succeeded either way.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from trainyard_contracts.stepoutputs import (
    OUTPUTS_FILE,
    OUTPUTS_MAX_BYTES,
    OutputsError,
    OutputValue,
    parse_outputs,
)
from trainyard_shared.hostpaths import ensure_dir, read_file


def job_part_of(output_dir: Path, job_part: str) -> tuple[Path, str]:
    """``(root, rel)``: the executor's part of ``output_dir`` (trusted, opened as it is) and the
    job's (``job_part``, the spec's ``outputs.path``: components the job may have replaced with
    links, opened one at a time without following any)."""
    parts = tuple(p for p in PurePosixPath(job_part).parts if p not in ("", "."))
    if parts and tuple(output_dir.parts[-len(parts) :]) == parts:
        return Path(*output_dir.parts[: -len(parts)]), "/".join(parts)
    # an executor's own outputs folder (a shared claim): only its last component is the job's
    return output_dir.parent, output_dir.name


def read_outputs(output_dir: Path, job_part: str) -> tuple[dict[str, OutputValue] | None, str | None]:
    """``(outputs, None)``; ``(None, None)`` when the job wrote no outputs.json; ``(None, why)``
    when it wrote one that is refused. ``job_part``: the spec's ``outputs.path``, the components
    of ``output_dir`` the job may have replaced (what comes before is the executor's)."""
    root, rel = job_part_of(output_dir, job_part)
    try:
        with ensure_dir(root, rel, create=False) as fd:
            data = read_file(fd, OUTPUTS_FILE, OUTPUTS_MAX_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{OUTPUTS_FILE} not read: {exc.strerror or exc}"
    try:
        return parse_outputs(data), None
    except OutputsError as exc:
        return None, str(exc)
