"""The MLflow side of the registry: a succeeded job's outputs become a version of a registered model.

``MlflowModelStore.register`` is idempotent: the model version carries the tag
``trainyard.job_id``, and a second call for the same job returns that version. Every step before
the version exists can also be repeated safely, so a crash half-way through is finished by the
redelivered event:

1. the run: the job's own MLflow run (found by the ``trainyard.job_id`` tag that the client's
   run-context provider put on it) or, when the job logged none, a run the registry creates with
   the tag set at creation (so a repeat adopts it instead of creating another);
2. the logged model (MLflow 3's unit of model artifacts), found again by its ``trainyard.job_id``
   tag and finalized READY only after the outputs are uploaded;
3. the model version, with ``model_id`` and ``run_id`` set and the logged model's artifact location
   as its source (MLflow 3 refuses a version without a logged model: ``Invalid model version
   source``).

The MLflow client is synchronous and slow to import: callers on an event loop run ``register`` in
a thread and import this module lazily.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

# a service in a cluster must not phone home: MLflow 3 sends usage telemetry unless told not to
# (read once, when mlflow is first imported; an explicit MLFLOW_DISABLE_TELEMETRY=false wins)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModel,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    Param,
    Run,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import MlflowClient

from trainyard_contracts.modelregistry import MAX_DATASETS, DatasetRef, VersionInfo
from trainyard_contracts.spec import strip_url_credentials
from trainyard_registry.datasets import (
    CONTEXT_TAG,
    DIGEST_TAG,
    MLFLOW_DIGEST_CHARS,
    from_mlflow,
    mlflow_source,
    read_datasets_file,
)
from trainyard_registry.mlflow_names import (
    ATTEMPT_TAG,
    CREATED_BY_REGISTRY,
    CREATED_BY_TAG,
    GIT_COMMIT_RUN_TAG,
    GIT_COMMIT_VERSION_TAG,
    GIT_REPO_RUN_TAG,
    GIT_REPO_VERSION_TAG,
    JOB_ID_TAG,
    JOB_NAME_TAG,
    MODEL_ID_TAG,
    MODEL_VERSIONS_TAG,
    OUTPUTS_SKIPPED_TAG,
    QUEUE_TAG,
    VERSION_TAGS,
    WORKDIR_DIFF_TAG,
    WORKDIR_DIGEST_TAG,
    MlflowStoreError,
    ModelRequest,
    RegisteredModel,
    sqlite_artifact_dir,
)
from trainyard_registry.outputs import (
    OutputLimits,
    StagedOutputs,
    open_outputs_dir,
    read_metrics_file,
    skipped_summary,
    stage_outputs,
)

log = logging.getLogger("trainyard.registry.mlflow")

_MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# job ids are [a-z0-9-]; anything quoted into an MLflow filter string must not hold a quote
_FILTER_SAFE = re.compile(r"^[A-Za-z0-9._:-]+$")
_EXPERIMENT_BATCH = 100  # experiment ids per search_runs call
_LOCK_STRIPES = 64
MAX_SHOWN_ENTRIES = 200  # params or metrics of a version in one answer
MAX_SHOWN_VALUE = 500  # characters of a param's value in one answer
DEFAULT_OUTPUT_LIMITS = OutputLimits(
    max_file_bytes=2 * 1024**3, max_total_bytes=10 * 1024**3, max_entries=10_000
)


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _check_filter_value(what: str, value: str) -> str:
    if not _FILTER_SAFE.match(value):
        raise ValueError(f"{what} {value!r} holds characters not allowed in an MLflow search")
    return value


class MlflowModelStore:
    """Model versions of succeeded jobs in an MLflow tracking store and model registry."""

    def __init__(
        self, tracking_uri: str, registry_uri: str | None = None, limits: OutputLimits | None = None
    ) -> None:
        self.tracking_uri = tracking_uri
        self.limits = limits or DEFAULT_OUTPUT_LIMITS
        self.registry_uri = registry_uri or tracking_uri
        self.artifact_dir = sqlite_artifact_dir(tracking_uri)
        self.artifact_root = self.artifact_dir.as_uri() if self.artifact_dir is not None else None
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        try:
            if self.artifact_dir is not None:
                self._init_sqlite_store()
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)
        except MlflowException as exc:
            raise MlflowStoreError(f"MLflow store at {tracking_uri}: {exc.message}") from exc

    def _init_sqlite_store(self) -> None:
        """Create the database next to its artifact folder before anything else touches it.

        Whoever creates a SQLite store fixes the Default experiment's artifact location (a job's
        ``mlflow.start_run()`` logs there); MLflow's own default is ``./mlruns`` of the creating
        process's working directory, which for a job is a scratch workspace.
        """
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        assert self.artifact_dir is not None
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        # creates the tables and the Default experiment (at <artifact dir>/0) on a new database;
        # the engine is cached by MLflow per URI and shared with the client's store
        store_cls: Any = SqlAlchemyStore  # untyped in MLflow
        store_cls(self.tracking_uri, self.artifact_root)

    # ------------------------------------------------------------------ public API

    def register(self, req: ModelRequest) -> RegisteredModel:
        """The model version of ``req.job_id`` under ``req.model_name``: the existing one or a new one."""
        self._validate(req)
        with self._job_lock(req.job_id):
            try:
                existing = self._version_of_job(req.job_id, req.model_name)
                if existing is not None:
                    log.info(
                        "job %s already registered as %s v%s", req.job_id, existing.name, existing.version
                    )
                    return self._registered(existing)
                with tempfile.TemporaryDirectory(prefix="trainyard-outputs-") as staging:
                    staged = self._stage(req, Path(staging))
                    return self._register_new(replace(req, outputs_dir=Path(staging)), staged)
            except MlflowException as exc:
                raise MlflowStoreError(
                    f"registering job {req.job_id} as model {req.model_name!r} in {self.tracking_uri}: "
                    f"{exc.message}"
                ) from exc

    def find_by_job(self, job_id: str) -> RegisteredModel | None:
        """The newest model version (of any registered model) tagged with ``job_id``."""
        try:
            found = self._version_of_job(job_id, None)
            return self._registered(found) if found is not None else None
        except MlflowException as exc:
            raise MlflowStoreError(f"model version of job {job_id}: {exc.message}") from exc

    def list_versions(self, name: str | None = None, limit: int = 100) -> list[RegisteredModel]:
        """Model versions, newest first; of one registered model when ``name`` is given."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if name is not None and not _MODEL_NAME.match(name):
            raise ValueError(f"model name {name!r} must match [A-Za-z0-9_-]+")
        try:
            found = self._search_versions(f"name = '{name}'" if name else None, limit)
            return [self._registered(mv) for mv in found]
        except MlflowException as exc:
            raise MlflowStoreError(
                f"listing model versions of {name or 'all models'}: {exc.message}"
            ) from exc

    def version_info(self, name: str, version: int) -> VersionInfo | None:
        """One version with its run's params and metrics and its provenance tags; None if absent."""
        try:
            try:
                mv = self.client.get_model_version(name, str(version))
            except MlflowException as exc:
                if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                    return None
                raise
            run = self._run_or_none(mv.run_id)
            datasets = self._run_datasets(run)
            data = run.data if run is not None else None
            tags = dict(data.tags) if data is not None else {}
            params = dict(data.params) if data is not None else {}
            metrics = dict(data.metrics) if data is not None else {}
        except MlflowException as exc:
            raise MlflowStoreError(f"model {name!r} v{version}: {exc.message}") from exc
        lineage: dict[str, Any] = {field: mv.tags.get(tag) for field, tag in VERSION_TAGS.items()}
        return VersionInfo(
            name=mv.name,
            version=int(mv.version),
            queue=tags.get(QUEUE_TAG),
            run_id=mv.run_id or None,
            model_id=mv.model_id or mv.tags.get(MODEL_ID_TAG),
            source=mv.source or None,
            attempt=_int_or_none(mv.tags.get(ATTEMPT_TAG)),
            datasets=datasets,
            # bounded: the answer travels in one NATS message
            params={k: v[:MAX_SHOWN_VALUE] for k, v in sorted(params.items())[:MAX_SHOWN_ENTRIES]},
            metrics=dict(sorted(metrics.items())[:MAX_SHOWN_ENTRIES]),
            aliases=sorted(mv.aliases or []),
            created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000.0, UTC),
            **lineage,
        )

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """MLflow's ``models:/name@alias`` points at ``version`` (idempotent)."""
        try:
            self.client.set_registered_model_alias(name, alias, str(version))
        except MlflowException as exc:
            raise MlflowStoreError(f"setting {name}@{alias} to v{version}: {exc.message}") from exc

    @staticmethod
    def _run_datasets(run: Run | None) -> list[DatasetRef]:
        """The run's dataset inputs (``mlflow.log_input`` in the job, ``trainyard.dataset`` logged
        by the registry), in the order MLflow gives them."""
        if run is None or run.inputs is None:
            return []
        found: list[DatasetRef] = []
        for item in run.inputs.dataset_inputs[:MAX_DATASETS]:
            ds = item.dataset
            tags = {t.key: t.value for t in item.tags or []}
            found.append(from_mlflow(ds.name, ds.digest, ds.source, ds.source_type, tags))
        return found

    def _log_datasets(self, run_id: str, datasets: list[DatasetRef]) -> None:
        """The job's recorded datasets as its run's dataset inputs (MLflow keeps one of each name
        and digest per run: a repeat changes nothing)."""
        inputs = []
        for ref in datasets:
            digest = ref.digest or "unknown"
            tags = [InputTag(CONTEXT_TAG, ref.context or "training")]
            if ref.digest:
                tags.append(InputTag(DIGEST_TAG, ref.digest))
            dataset = Dataset(
                name=ref.name,
                digest=digest[-MLFLOW_DIGEST_CHARS:] if len(digest) > MLFLOW_DIGEST_CHARS else digest,
                source_type=ref.source_type or "local",
                source=mlflow_source(ref),
            )
            inputs.append(DatasetInput(dataset, tags))
        for i in range(0, len(inputs), 50):
            self.client.log_inputs(run_id, datasets=inputs[i : i + 50])

    def _run_or_none(self, run_id: str | None) -> Run | None:
        if not run_id:
            return None
        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            return None

    # ------------------------------------------------------------------ steps

    def _stage(self, req: ModelRequest, staging: Path) -> StagedOutputs:
        """The job's outputs copied into ``staging``: regular files only, capped (outputs.py)."""
        outputs_fd = open_outputs_dir(req.outputs_dir, req.outputs_path)
        try:
            staged = stage_outputs(outputs_fd, staging, self.limits)
        finally:
            os.close(outputs_fd)
        if staged.skipped:
            log.warning(
                "job %s: %d output entries not uploaded: %s",
                req.job_id,
                len(staged.skipped),
                skipped_summary(staged.skipped, 1000).replace("\n", "; "),
            )
        return staged

    def _register_new(self, req: ModelRequest, staged: StagedOutputs) -> RegisteredModel:
        started = time.monotonic()
        run = self._adopt_run(req)
        if run is None:
            run = self._create_run(req)
        elif run.data.tags.get(
            CREATED_BY_TAG
        ) == CREATED_BY_REGISTRY and run.info.status != RunStatus.to_string(RunStatus.FINISHED):
            run = self._fill_run(req, run)  # an earlier delivery created it and then failed
        run_id = run.info.run_id
        git_commit = req.git_commit or run.data.tags.get(GIT_COMMIT_RUN_TAG)
        found_repo = req.git_repo or run.data.tags.get(GIT_REPO_RUN_TAG)
        # a job's own run may have recorded its checkout's remote as it was, credential included
        git_repo = strip_url_credentials(found_repo) if found_repo else None
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self._run_tags(req).items()])
        self._log_datasets(run_id, read_datasets_file(req.outputs_dir))

        model = self._logged_model(req, run)
        self._ensure_registered_model(req.model_name)
        # the SQL registry store keeps no model_id column: the version's tag is what remembers it
        version_tags = {JOB_ID_TAG: req.job_id, ATTEMPT_TAG: str(req.attempt), MODEL_ID_TAG: model.model_id}
        if git_commit:
            version_tags[GIT_COMMIT_VERSION_TAG] = git_commit
        if git_repo:
            version_tags[GIT_REPO_VERSION_TAG] = git_repo
        version_tags.update(self._workdir_tags(req))
        version_tags.update(req.lineage)
        if staged.skipped:
            version_tags[OUTPUTS_SKIPPED_TAG] = skipped_summary(staged.skipped)
        mv = self.client.create_model_version(
            name=req.model_name,
            # not "models:/<model_id>": MLflow's SQL registry store resolves that through a
            # *global* MlflowClient(), i.e. the process's default tracking URI, not this store's
            source=model.artifact_location,
            run_id=run_id,
            model_id=model.model_id,
            tags=version_tags,
            description=f"Trainyard job {req.job_name} ({req.job_id}), attempt {req.attempt}",
        )
        self._link_version(model.model_id, mv)
        log.info(
            "registered job %s as %s v%s (run %s, model %s) in %.2fs",
            req.job_id,
            mv.name,
            mv.version,
            run_id,
            model.model_id,
            time.monotonic() - started,
        )
        return self._registered(mv)

    def _adopt_run(self, req: ModelRequest) -> Run | None:
        """The run the job logged itself (or a run this store created on an earlier try).

        With several (a retried job logs a run per attempt), the latest of ``req.attempt``'s runs,
        else the latest of all.
        """
        flt = f"tags.`{JOB_ID_TAG}` = '{req.job_id}'"
        runs: list[Run] = []
        for batch in self._experiment_id_batches():
            runs.extend(self._all_pages(self.client.search_runs, batch, filter_string=flt))
        if not runs:
            return None
        of_attempt = [r for r in runs if r.data.tags.get(ATTEMPT_TAG) == str(req.attempt)]
        chosen = max(of_attempt or runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
        if len(runs) > 1:
            log.info("job %s has %d MLflow runs; adopting %s", req.job_id, len(runs), chosen.info.run_id)
        return chosen

    def _create_run(self, req: ModelRequest) -> Run:
        experiment_id = self._experiment_id(req.experiment)
        # tagged at creation, so that if anything below fails the next delivery adopts this run
        # (and, seeing it unfinished, fills it in again) instead of creating another
        tags = {**self._run_tags(req), CREATED_BY_TAG: CREATED_BY_REGISTRY}
        run = self.client.create_run(experiment_id, tags=tags, run_name=req.job_name)
        return self._fill_run(req, run)

    def _fill_run(self, req: ModelRequest, run: Run) -> Run:
        """Log a registry-made run's params and metrics, then mark it FINISHED (repeatable)."""
        run_id = run.info.run_id
        params = [Param(str(k), str(v)) for k, v in req.params.items()]
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in read_metrics_file(req.outputs_dir).items()]
        for i in range(0, max(len(params), len(metrics)), 100):  # log_batch takes at most 100 params
            self.client.log_batch(run_id, metrics=metrics[i : i + 100], params=params[i : i + 100])
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        return self.client.get_run(run_id)

    def _logged_model(self, req: ModelRequest, run: Run) -> LoggedModel:
        """The logged model holding ``req.outputs_dir``: an earlier try's, else a new one."""
        run_id = run.info.run_id
        flt = f"tags.`{JOB_ID_TAG}` = '{req.job_id}' AND source_run_id = '{run_id}'"
        earlier: list[LoggedModel] = [
            m
            for m in self._all_pages(
                self.client.search_logged_models, [run.info.experiment_id], filter_string=flt
            )
            if m.status != LoggedModelStatus.FAILED
        ]
        if earlier:
            model = max(earlier, key=lambda m: m.creation_timestamp)
            if model.status == LoggedModelStatus.READY:
                return model
        else:
            model = self.client.create_logged_model(
                experiment_id=run.info.experiment_id,
                name=req.model_name,
                source_run_id=run_id,
                tags={JOB_ID_TAG: req.job_id, ATTEMPT_TAG: str(req.attempt)},
                params={str(k): str(v) for k, v in req.params.items()},
                model_type="trainyard",
            )
            self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        self.client.log_model_artifacts(model.model_id, str(req.outputs_dir))
        ready: LoggedModel = self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return ready

    def _ensure_registered_model(self, name: str) -> None:
        try:
            self.client.create_registered_model(name, description="Registered by Trainyard")
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise

    def _link_version(self, model_id: str, mv: ModelVersion) -> None:
        """Record the version on the logged model (``mlflow.register_model`` does the same)."""
        model = self.client.get_logged_model(model_id)
        links = json.loads(model.tags.get(MODEL_VERSIONS_TAG) or "[]")
        entry = {"name": mv.name, "version": mv.version}
        if not any(str(e.get("name")) == mv.name and str(e.get("version")) == str(mv.version) for e in links):
            self.client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps([*links, entry])})

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = f"{self.artifact_root}/{quote(name, safe='')}" if self.artifact_root else None
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:
                if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                experiment = self.client.get_experiment_by_name(name)  # another thread made it
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise MlflowStoreError(
                f"MLflow experiment {name!r} ({experiment.experiment_id}) is deleted: restore it "
                "(`mlflow experiments restore`) or configure another experiment for the registry"
            )
        return experiment.experiment_id

    # ------------------------------------------------------------------ reading

    def _version_of_job(self, job_id: str, model_name: str | None) -> ModelVersion | None:
        flt = f"tags.`{JOB_ID_TAG}` = '{_check_filter_value('job id', job_id)}'"
        if model_name is not None:
            flt = f"name = '{model_name}' AND {flt}"
        found = self._search_versions(flt, 1)
        return found[0] if found else None

    def _search_versions(self, flt: str | None, limit: int) -> list[ModelVersion]:
        out: list[ModelVersion] = []
        token: str | None = None
        while len(out) < limit:
            page = self.client.search_model_versions(
                filter_string=flt,
                max_results=min(limit - len(out), 1000),
                order_by=["creation_timestamp DESC", "version_number DESC"],
                page_token=token,
            )
            out.extend(page)
            token = page.token
            if not token:
                break
        return out[:limit]

    def _registered(self, mv: ModelVersion) -> RegisteredModel:
        metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                metrics = dict(self.client.get_run(mv.run_id).data.metrics)
            except MlflowException as exc:
                if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                    raise
                log.warning("run %s of %s v%s no longer exists", mv.run_id, mv.name, mv.version)
        return RegisteredModel(
            name=mv.name,
            version=int(mv.version),
            run_id=mv.run_id or "",
            model_id=mv.model_id or mv.tags.get(MODEL_ID_TAG),
            source=mv.source or "",
            job_id=mv.tags.get(JOB_ID_TAG, ""),
            git_commit=mv.tags.get(GIT_COMMIT_VERSION_TAG),
            metrics=metrics,
            created_at=mv.creation_timestamp / 1000.0,
        )

    def _experiment_id_batches(self) -> Iterator[list[str]]:
        ids = [e.experiment_id for e in self._all_pages(self.client.search_experiments, ViewType.ACTIVE_ONLY)]
        for i in range(0, len(ids), _EXPERIMENT_BATCH):
            yield ids[i : i + _EXPERIMENT_BATCH]

    @staticmethod
    def _all_pages(search: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        token = None
        while True:
            page = search(*args, **kwargs, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _run_tags(req: ModelRequest) -> dict[str, str]:
        tags = {
            JOB_ID_TAG: req.job_id,
            ATTEMPT_TAG: str(req.attempt),
            QUEUE_TAG: req.queue,
            JOB_NAME_TAG: req.job_name,
        }
        if req.git_commit:
            tags[GIT_COMMIT_RUN_TAG] = req.git_commit
        if req.git_repo:
            tags[GIT_REPO_RUN_TAG] = req.git_repo
        return {**tags, **MlflowModelStore._workdir_tags(req), **req.lineage}

    @staticmethod
    def _workdir_tags(req: ModelRequest) -> dict[str, str]:
        tags = {WORKDIR_DIGEST_TAG: req.workdir_digest} if req.workdir_digest else {}
        return {**tags, WORKDIR_DIFF_TAG: req.workdir_diff} if req.workdir_diff else tags

    @staticmethod
    def _validate(req: ModelRequest) -> None:
        _check_filter_value("job id", req.job_id)
        if not _MODEL_NAME.match(req.model_name):
            raise ValueError(f"model name {req.model_name!r} must match [A-Za-z0-9_-]+")

    def _job_lock(self, job_id: str) -> threading.Lock:
        # two deliveries of one event handled at once in this process must not both register; other
        # processes sharing the store are not covered (the registry runs one consumer per event)
        return self._locks[zlib.crc32(job_id.encode()) % _LOCK_STRIPES]
