"""A job's secret values, kept apart from its record.

The jobs bucket keeps a history of every record, and every service reads it; a spec's secret env
values and its source credential therefore live in a bucket of their own (``<prefix>_job_secrets``,
key = job id, one revision, removed when the job ends) that only the submission service writes and
only executors read. The record's spec holds ``***`` in their place and says so
(``JobRecord.secrets_stored``); the executor puts the values back right before it starts an attempt.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trainyard_contracts.spec import JobSpec


class JobSecrets(BaseModel):
    """What a spec must never show: its secret env values by name, its source credential."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    env: dict[str, str] = Field(default_factory=dict, description="secret_env names and their values")
    credential: str | None = Field(None, description="source.credential")

    def values(self) -> list[str]:
        values = [v for v in self.env.values() if v]
        return [*values, self.credential] if self.credential else values


def split_secrets(spec: JobSpec) -> tuple[JobSpec, JobSecrets | None]:
    """The spec to store (secret values masked) and its secrets; None when it has none."""
    env = {name: spec.env[name] for name in spec.secret_env if name in spec.env}
    credential = spec.source.credential if spec.source else None
    if not env and credential is None:
        return spec, None
    return spec.redacted(), JobSecrets(env=env, credential=credential)


def with_secrets(spec: JobSpec, secrets: JobSecrets) -> JobSpec:
    """``spec`` (as stored, masked) with its secret values put back: what the job runs with."""
    update: dict[str, Any] = {}
    if secrets.env:
        update["env"] = {k: secrets.env.get(k, v) if k in spec.secret_env else v for k, v in spec.env.items()}
    if secrets.credential and spec.source is not None:
        update["source"] = spec.source.model_copy(update={"credential": secrets.credential})
    return spec.model_copy(update=update) if update else spec
