"""What a job's process sees: its own env, Trainyard's variables, and a short allow-list."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from trainyard_contracts import JobRecord


def job_env(
    record: JobRecord,
    attempt: int,
    executor_env: Mapping[str, str],
    passthrough: tuple[str, ...],
    mlflow_tracking_uri: str | None,
    python_bin: str | None = None,
) -> dict[str, str]:
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
    if spec.source is not None:
        env["TRAINYARD_GIT_REPO"] = spec.source.repo
        if spec.source.commit:
            env["TRAINYARD_GIT_COMMIT"] = spec.source.commit
    if mlflow_tracking_uri and "MLFLOW_TRACKING_URI" not in spec.env:
        env["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    return env
