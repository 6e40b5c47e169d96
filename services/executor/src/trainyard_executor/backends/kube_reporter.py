"""``import trainyard`` in a Kubernetes pod: the reporter's files in a ConfigMap the job container
mounts read-only, and the environment that makes ``report`` write marked lines to stderr.

The pod's work dir is not on the executor's host, so there is no metrics file to read: the reporter
writes each report to fd 2 behind a marker (``TRAINYARD_METRICS_STREAM=stderr``) and the executor
takes those lines out of the pod's log (kube_attempt.py, metricstream.py).

One ConfigMap per version of the files, named by their content (``trainyard-reporter-<digest>``),
immutable: every attempt of every executor of that version mounts the same one; a new version
makes a new name, so a running pod never sees its files change. It holds no secret and no job's
data (the two public files), so it is made once and left (a few KiB). The volume is ``optional``: a
cluster where the executor may not create it still runs jobs (``import trainyard`` fails there,
as it did before; the executor says why once in its own log).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from trainyard_executor.backends.jobmetrics import MLFLOW_FORWARDER, REPORTER

REPORTER_MOUNT = "/trainyard/py"
VOLUME = "trainyard-py"
STREAM_ENV = {"TRAINYARD_METRICS_STREAM": "stderr"}


@functools.cache
def reporter_files() -> dict[str, str]:
    return {path.name: path.read_text() for path in (REPORTER, MLFLOW_FORWARDER)}


@functools.cache
def reporter_config_map_name() -> str:
    digest = hashlib.sha256()
    for name, text in sorted(reporter_files().items()):
        digest.update(f"{name}\0{text}\0".encode())
    return f"trainyard-reporter-{digest.hexdigest()[:12]}"


def reporter_config_map(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": reporter_config_map_name(),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "trainyard", "app.kubernetes.io/component": "reporter"},
        },
        "immutable": True,
        "data": reporter_files(),
    }


def reporter_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the reporter first on ``PYTHONPATH`` (ahead of one the spec sets) and reports
    sent to stderr."""
    path = env.get("PYTHONPATH")
    return {**env, **STREAM_ENV, "PYTHONPATH": f"{REPORTER_MOUNT}:{path}" if path else REPORTER_MOUNT}


def reporter_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """The job container's mount of the reporter, and the pod's volume."""
    mount = {"name": VOLUME, "mountPath": REPORTER_MOUNT, "readOnly": True}
    volume = {
        "name": VOLUME,
        "configMap": {"name": reporter_config_map_name(), "optional": True, "defaultMode": 0o444},
    }
    return mount, volume
