"""A version's input datasets: what the job recorded with ``trainyard.dataset(...)`` (one JSON line
each in ``datasets.jsonl`` of its outputs) and what it logged with ``mlflow.log_input``.

Both end up as dataset inputs of the version's MLflow run (the registry logs the first kind there
when it registers the version), so MLflow's UI shows them on the run, and the version's lineage
reads them back from the run: version -> LoggedModel (``model_id``) -> its source run -> datasets.

The file is written by the job: it is read without trusting it (bounded size and count, every
field checked and cut, bad lines skipped).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from trainyard_contracts.modelregistry import MAX_DATASETS, DatasetRef

log = logging.getLogger("trainyard.registry.datasets")

DATASETS_FILE = "datasets.jsonl"  # trainyard.dataset() in the job (executor reporter/trainyard.py)
MAX_FILE_BYTES = 1024 * 1024
# MLflow's dataset digest column holds 36 characters: the whole digest goes on an input tag
MLFLOW_DIGEST_CHARS = 36
DIGEST_TAG = "trainyard.digest"
CONTEXT_TAG = "mlflow.data.context"  # MLflow's own tag for training / validation / test
_LIMITS = {"name": 500, "digest": 128, "source": 2000, "source_type": 36, "context": 64}


def read_datasets_file(outputs_dir: Path) -> list[DatasetRef]:
    """The datasets the job recorded (the first of each name and digest), at most MAX_DATASETS."""
    path = outputs_dir / DATASETS_FILE
    if not path.is_file():
        return []
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        log.warning("%s is larger than %d bytes: only its beginning is read", path, MAX_FILE_BYTES)
        data = data[:MAX_FILE_BYTES]
    found: dict[tuple[str, str | None], DatasetRef] = {}
    for number, line in enumerate(data.splitlines(), 1):
        ref = _parsed(line)
        if ref is None:
            if line.strip():
                log.warning("%s line %d: not a dataset entry; skipped", path, number)
            continue
        found.setdefault((ref.name, ref.digest), ref)
        if len(found) >= MAX_DATASETS:
            log.warning("%s: more than %d datasets; the rest are not recorded", path, MAX_DATASETS)
            break
    return list(found.values())


def _parsed(line: bytes) -> DatasetRef | None:
    try:
        entry = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        return None
    fields: dict[str, Any] = {}
    for key, limit in _LIMITS.items():
        value = entry.get(key)
        if isinstance(value, str) and value:
            fields[key] = value[:limit]
    return DatasetRef(**fields)


def mlflow_source(ref: DatasetRef) -> str:
    """The dataset's source as MLflow keeps it (a JSON object, as its own sources serialise)."""
    return json.dumps({"uri": ref.source or ""})


def from_mlflow(name: str, digest: str, source: str, source_type: str, tags: dict[str, str]) -> DatasetRef:
    """A run's dataset input as a DatasetRef: the whole digest from the input tag when the
    registry logged it, MLflow's own otherwise."""
    try:
        parsed = json.loads(source)
    except ValueError:
        parsed = source
    if isinstance(parsed, dict):
        uri = next((str(parsed[k]) for k in ("uri", "url", "path", "table_name") if parsed.get(k)), source)
    else:
        uri = str(parsed)
    return DatasetRef(
        name=name[:500],
        digest=(tags.get(DIGEST_TAG) or digest or "")[:128] or None,
        source=uri[:2000] or None,
        source_type=source_type[:36] or None,
        context=(tags.get(CONTEXT_TAG) or "")[:64] or None,
    )
