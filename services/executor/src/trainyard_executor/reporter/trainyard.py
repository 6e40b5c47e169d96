"""Live training metrics from inside a Trainyard job: ``trainyard.report(step, loss=0.25, acc=0.9)``;
the job's input datasets: ``trainyard.dataset("digits", "data/digits.csv")``.

The executor puts this file on every job's ``PYTHONPATH`` (a copy in the attempt's work dir), so
``import trainyard`` works in any interpreter and any image without installing anything. It uses
the standard library only and talks to no service: each call appends one JSON line to the file
named by ``TRAINYARD_METRICS_FILE`` (in the attempt's work dir); the executor reads that file and
publishes the points in batches. The job never holds bus credentials. Where the work dir is not on
the executor's host (Kubernetes: ``TRAINYARD_METRICS_STREAM=stderr``) the line goes to the job's
stderr instead, behind a marker (:data:`MARK`), with one unbuffered write; the executor takes
such lines out of the pod's log and reads them as it reads the file.

- Outside a job (neither variable) ``report`` does nothing, so a script runs the same on a laptop.
- In a distributed job only rank 0 reports (``TRAINYARD_RANK``); the other ranks' calls do nothing.
- A call costs one ``json.dumps`` and one ``write`` (about 10 microseconds); the executor decides
  what is kept: names must match ``^[A-Za-z_][A-Za-z0-9_.:/-]{0,63}$``, values must be finite
  numbers, and an attempt keeps at most a bounded number of names (what breaks a rule is dropped
  and counted in the job's log).

``dataset(name, path_or_uri, digest=None)`` records an input dataset: one JSON line appended to
``datasets.jsonl`` in the job's outputs folder (``TRAINYARD_OUTPUT_DIR``, set on every backend),
which the registry reads when it registers the job's model and links to the version
(docs/models.md, "Lineage"). Without ``digest`` a local file's or folder's content is hashed
(sha256; a folder: every file's path and hash, in order); a URI without a digest is recorded
without one. It returns the digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

__all__ = ["dataset", "report"]

DATASETS_FILE = "datasets.jsonl"  # in the outputs folder: the registry reads it (registry/datasets.py)

MARK = b"\x1etrainyard.metric "
"""Starts a report on stderr (an ASCII record separator, then a name no program prints by chance)."""
STDERR = 2

_lock = threading.Lock()
_fd: int | None = None
_opened: str | None = None


def report(step: int, **metrics: float) -> None:
    """Record ``metrics`` (name=value, numbers) at training step ``step`` (an int >= 0)."""
    path = os.environ.get("TRAINYARD_METRICS_FILE")
    to_stderr = os.environ.get("TRAINYARD_METRICS_STREAM") == "stderr"
    if not (path or to_stderr) or os.environ.get("TRAINYARD_RANK", "0") != "0" or not metrics:
        return
    values = {name: float(value) for name, value in metrics.items()}  # TypeError: not a number
    line = json.dumps({"step": int(step), "time": round(time.time(), 3), "values": values})
    data = (line + "\n").encode()
    if to_stderr:
        # one write of the whole line, past sys.stderr's buffer: it reaches the log whole and at
        # once, whatever the job does with sys.stderr; a leading newline would end a line the job
        # left open (a progress bar), but the executor finds the marker anywhere in a line
        with _lock:
            rest = memoryview(MARK + data)
            while rest:  # one write; more only if a signal cut it short
                rest = rest[os.write(STDERR, rest) :]
        return
    if path is None:
        return
    global _fd, _opened
    with _lock:
        if _fd is None or _opened != path:
            # O_APPEND: one write per line lands whole at the end, whoever else appends
            _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            _opened = path
        os.write(_fd, data)


def dataset(
    name: str, path_or_uri: object, digest: str | None = None, context: str = "training"
) -> str | None:
    """Record an input dataset of this job (its model version's lineage); returns its digest."""
    source = os.fspath(path_or_uri) if isinstance(path_or_uri, os.PathLike) else str(path_or_uri)
    local = "://" not in source and os.path.exists(source)
    if digest is None and local:
        digest = content_digest(source)
    outputs = os.environ.get("TRAINYARD_OUTPUT_DIR")
    if not outputs or not os.environ.get("TRAINYARD_JOB_ID") or os.environ.get("TRAINYARD_RANK", "0") != "0":
        return digest  # outside a job (or not rank 0): nothing recorded
    entry = {
        "name": str(name),
        "source": os.path.abspath(source) if local else source,
        "source_type": "local" if local else (source.split("://", 1)[0] if "://" in source else "local"),
        "digest": digest,
        "context": str(context),
        "time": round(time.time(), 3),
    }
    os.makedirs(outputs, exist_ok=True)
    data = (json.dumps(entry) + "\n").encode()
    fd = os.open(
        os.path.join(outputs, DATASETS_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
    )
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return digest


def content_digest(path: str) -> str:
    """``sha256:<hex>`` of a file's bytes, or of a folder's files (relative path and hash each)."""
    if os.path.isfile(path):
        return "sha256:" + _file_sha256(path)
    outer = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for file in sorted(files):
            full = os.path.join(root, file)
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            outer.update(f"{rel}\0{_file_sha256(full)}\n".encode())
    return "sha256:" + outer.hexdigest()


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
