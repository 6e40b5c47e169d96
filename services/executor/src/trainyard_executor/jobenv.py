"""What a job's process sees: its own env, Trainyard's variables, and a short allow-list."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from trainyard_contracts import JobRecord, Rendezvous
from trainyard_executor.backends.base import Gang

LOOPBACK = "127.0.0.1"

# executor variables that name things on the executor's host: an image has its own
HOST_ONLY_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "TMPDIR",
        "VIRTUAL_ENV",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "PIP_CERT",
    }
)


def job_env(
    record: JobRecord,
    attempt: int,
    executor_env: Mapping[str, str],
    passthrough: tuple[str, ...],
    mlflow_tracking_uri: str | None,
    python_bin: str | None = None,
    checkpoint_dir: Path | None = None,
    traceparent: str | None = None,
    inputs_dir: Path | None = None,
) -> dict[str, str]:
    """``traceparent``: the W3C trace context the job's own spans join (``TRACEPARENT``), unless
    its spec sets one."""
    spec = record.spec
    env = {k: executor_env[k] for k in passthrough if k in executor_env}
    if python_bin:
        # `python` in a job's argv means the executor's environment (a runtime env layers on it)
        env["PATH"] = os.pathsep.join(p for p in (python_bin, env.get("PATH")) if p)
    env.update(spec.env)
    env.update(
        {
            "TRAINYARD_JOB_ID": record.job_id,
            "TRAINYARD_ATTEMPT": str(attempt),
            "TRAINYARD_JOB_NAME": spec.name,
            "TRAINYARD_QUEUE": spec.queue,
            "TRAINYARD_PARAMS": json.dumps(spec.params),
            "PYTHONUNBUFFERED": env.get("PYTHONUNBUFFERED", "1"),
            # no usage telemetry from jobs to the outside (a job may still turn it on)
            "MLFLOW_DISABLE_TELEMETRY": spec.env.get("MLFLOW_DISABLE_TELEMETRY", "true"),
        }
    )
    if spec.array_task is not None:
        # Slurm's SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT: set by the workflow service only
        env["TRAINYARD_ARRAY_INDEX"] = str(spec.array_task.index)
        env["TRAINYARD_ARRAY_COUNT"] = str(spec.array_task.count)
    if spec.source is not None:
        env["TRAINYARD_GIT_REPO"] = spec.source.repo
        if spec.source.commit:
            env["TRAINYARD_GIT_COMMIT"] = spec.source.commit
    if mlflow_tracking_uri and "MLFLOW_TRACKING_URI" not in spec.env:
        env["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    if checkpoint_dir is not None:
        env["TRAINYARD_CHECKPOINT_DIR"] = str(checkpoint_dir)
    if inputs_dir is not None:  # a pipeline step's dependencies' outputs folders, one per step
        env["TRAINYARD_INPUTS"] = str(inputs_dir)
    if traceparent and "TRACEPARENT" not in spec.env:
        env["TRACEPARENT"] = traceparent
    return env


def local_mlflow_store(uri: str) -> bool:
    """Whether an MLflow tracking URI names files on this machine (sqlite, file, a bare path)
    rather than a server."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    return scheme in ("", "sqlite", "file") or len(scheme) == 1  # one letter: a Windows drive


def plan_gang(replicas: int, rendezvous: Rendezvous | None, free_port: Callable[[], int]) -> Gang | None:
    """The ranks this executor runs. A rendezvous from the scheduler names them (a gang split
    across executors); without one every replica runs here and meets on loopback, on a port picked
    now (``free_port``). One replica without a rendezvous is a plain process: no gang."""
    if rendezvous is not None:
        return Gang(
            master_addr=rendezvous.master_addr,
            master_port=rendezvous.master_port,
            world_size=rendezvous.world_size,
            ranks=tuple(rendezvous.ranks),
        )
    if replicas <= 1:
        return None
    return Gang(
        master_addr=LOOPBACK, master_port=free_port(), world_size=replicas, ranks=tuple(range(replicas))
    )
