"""Model versions as version control: aliases (MLflow 3's ``models:/name@alias``), their history,
comparisons, and the requests the API sends the registry service for them.

The registry service owns MLflow and the alias state; the API asks it on
``<prefix>.registry.<kind>`` (request/reply, :class:`RegistryRequest` in, :class:`RegistryReply`
out) and never talks to MLflow itself (docs/models.md).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainyard_contracts._time import utcnow
from trainyard_contracts.spec import FieldError

MODEL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
# MLflow's own rule for aliases, narrowed to what is also a KV key and a subject token: "latest"
# and v<digits> are MLflow's version references, never aliases
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
_VERSION_REFERENCE = re.compile(r"^(latest|v[0-9]+)$")
METRIC_PATTERN = r"^[A-Za-z0-9_.:/ -]{1,250}$"
MAX_ALIAS_HISTORY = 50  # previous holders kept in the alias record (the audit stream keeps all)

RegistryKind = Literal["alias", "version", "promote", "rollback", "compare"]
REGISTRY_KINDS: tuple[RegistryKind, ...] = ("alias", "version", "promote", "rollback", "compare")


class Identity(BaseModel):
    """Who asked for a change, as the API authenticated them (never the token, only its id)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(max_length=128, description="api, api:<team>:<token id> or api:admin:<token id>")
    token_id: str = Field(max_length=64)
    team: str | None = Field(None, max_length=63)
    admin: bool = False


class IfBetter(BaseModel):
    """Promote only when the candidate's metric beats the current holder's by ``min_delta``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str = Field(pattern=METRIC_PATTERN)
    lower_is_better: bool = False
    min_delta: float = Field(0.0, ge=0, allow_inf_nan=False)


class RegistryRequest(BaseModel):
    """What the API asks the registry service (``kind`` is the subject's last token)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="the registered model")
    alias: str | None = Field(None, pattern=ALIAS_PATTERN)
    version: int | None = Field(None, ge=1, description="promote/version: the version; compare: the first")
    other_version: int | None = Field(None, ge=1, description="compare: the second version")
    expected_revision: int | None = Field(
        None, ge=0, description="the alias record's revision the caller decided on (0: unset); else 409"
    )
    if_better: IfBetter | None = None
    by: Identity | None = None

    @field_validator("alias")
    @classmethod
    def _not_a_version_reference(cls, value: str | None) -> str | None:
        return check_alias(value) if value is not None else None


def check_alias(alias: str) -> str:
    """An alias name MLflow accepts: not ``latest`` nor ``v<digits>`` (its version references)."""
    if _VERSION_REFERENCE.match(alias):
        raise ValueError(f"{alias!r} is MLflow's reference to a version, not an alias name")
    return alias


MAX_DATASETS = 100  # input datasets of one version recorded and answered


class DatasetRef(BaseModel):
    """An input dataset of a version's run: ``trainyard.dataset(...)`` in the job, or MLflow's
    ``mlflow.log_input`` (both end up as the run's dataset inputs in MLflow)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(max_length=500)
    digest: str | None = Field(None, max_length=128, description="the dataset's content digest as recorded")
    source: str | None = Field(None, max_length=2000, description="where it was read from (path or URI)")
    source_type: str | None = Field(None, max_length=64)
    context: str | None = Field(None, max_length=64, description="training, validation, test, ...")


class ModelLineage(BaseModel):
    """Where a version came from: the job and attempt, the executor and its backend, the code,
    the pipeline run or sweep, the image and runtime environment, the input datasets."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    version: int
    job_id: str | None = None
    attempt: int | None = Field(None, description="the job's attempt that made the version")
    executor_id: str | None = None
    backend: str | None = Field(None, description="the executor's backend: local, docker, kubernetes...")
    queue: str | None = Field(None, description="the job's queue (= team): who owns the version")
    run_id: str | None = None
    model_id: str | None = Field(None, description="MLflow 3's LoggedModel (its source run is run_id)")
    git_repo: str | None = None
    git_commit: str | None = None
    uncommitted_diff: str | None = Field(None, description="hash of what was not committed on top")
    workdir_digest: str | None = Field(None, description="the packed workdir the job ran (sha256)")
    pipeline_run: str | None = Field(None, description="the pipeline run whose step ran the job")
    pipeline_step: str | None = None
    sweep: str | None = Field(None, description="the sweep whose trial the job was")
    sweep_trial: str | None = None
    image: str | None = Field(None, description="the job's container image")
    image_digest: str | None = Field(None, description="the image the executor ran (sha256), container jobs")
    runtime_lock: str | None = Field(
        None, description="hash of the resolved runtime environment (runtime_env.pip) the job ran in"
    )
    datasets: list[DatasetRef] = Field(default_factory=list, max_length=MAX_DATASETS)
    created_at: datetime | None = None

    @classmethod
    def of(cls, info: ModelLineage) -> ModelLineage:
        """The lineage part of a version's answer."""
        return cls(**{name: getattr(info, name) for name in ModelLineage.model_fields})


class VersionInfo(ModelLineage):
    """One model version as MLflow and Trainyard recorded it: what ``compare`` sets side by side."""

    source: str | None = None
    params: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    aliases: list[str] = Field(default_factory=list)


class AliasHolder(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    version: int = Field(ge=1)
    set_at: datetime = Field(default_factory=utcnow)
    by: str = Field("", max_length=128)


class AliasRecord(BaseModel):
    """The registry's record of one alias (KV ``<name>.<alias>`` in the aliases bucket): the holder
    and the holders before it, newest last. Every change is a compare-and-set on its revision.

    ``applied`` is False between the compare-and-set and MLflow's alias plus the audit entry: the
    next request on the alias finishes what a crash interrupted."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    alias: str
    current: AliasHolder | None = None
    history: list[AliasHolder] = Field(default_factory=list, max_length=MAX_ALIAS_HISTORY)
    applied: bool = True
    last_action: Literal["promote", "rollback"] | None = None


class AliasState(BaseModel):
    """An alias as answered: the record and the KV revision to send back as expected_revision."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    alias: str
    version: int | None = None
    set_at: datetime | None = None
    by: str | None = None
    history: list[AliasHolder] = Field(default_factory=list)
    revision: int = Field(0, ge=0, description="0: the alias was never set")


class RegistryReply(BaseModel):
    """The registry's answer: ``ok`` with what was asked for, or ``status`` and field errors."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    ok: bool
    status: int = 200
    errors: list[FieldError] = Field(default_factory=list)
    state: AliasState | None = None
    version: VersionInfo | None = Field(
        None, description="the version asked for (promote: the candidate; rollback: the one restored)"
    )
    holder: VersionInfo | None = Field(None, description="the alias's holder before the change")
    versions: list[VersionInfo] = Field(default_factory=list, description="compare: both versions")
    changed: bool = False
    reason: str | None = Field(None, description="why a change was or was not made (--if-better)")


class AliasChange(BaseModel):
    """The API's answer to a promotion or a rollback."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    changed: bool = Field(
        description="false: --if-better found the version not better, or it held it already"
    )
    reason: str | None = None
    state: AliasState | None = None
    version: VersionInfo | None = Field(None, description="the version promoted, or restored by a rollback")
    previous: VersionInfo | None = Field(None, description="the alias's holder before the request")


class AliasView(BaseModel):
    """The API's answer to ``GET /v1/models/{name}/aliases/{alias}``: the alias and its holder."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    state: AliasState
    version: VersionInfo | None = None


class Comparison(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    versions: list[VersionInfo]


# MLflow's model registry webhooks the registry bridges to the bus: "<entity>.<action>" as MLflow
# names them -> the last token of the subject <prefix>.model.<name>.<event>
MLFLOW_EVENTS = {
    "registered_model.created": "registered_model_created",
    "model_version.created": "model_version_created",
    "model_version_alias.created": "model_version_alias_created",
    "model_version_alias.deleted": "model_version_alias_deleted",
}


class MlflowModelEvent(BaseModel):
    """A change made in MLflow's model registry, as its webhook said it (docs/models.md, "MLflow's
    own events"): published on ``<prefix>.model.<name>.<event>``, one message per delivery."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    delivery_id: str = Field(max_length=64, description="MLflow's X-MLflow-Delivery-Id (the message id)")
    event: str = Field(description="model_version_alias_created, model_version_created, ...")
    name: str = Field(pattern=MODEL_NAME_PATTERN, description="the registered model")
    version: int | None = Field(None, ge=1)
    alias: str | None = Field(None, max_length=256)
    sent_at: datetime | None = Field(None, description="when MLflow sent it (its payload's timestamp)")
    received_at: datetime = Field(default_factory=utcnow)
    by_trainyard: bool = Field(
        False,
        description="the change was Trainyard's own (a version the registry registered, an alias it "
        "moved): MLflow tells of those too",
    )
    data: dict[str, Any] = Field(default_factory=dict, description="MLflow's payload (bounded in size)")
