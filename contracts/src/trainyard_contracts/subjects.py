"""Subject, stream and bucket names, all derived from one configurable prefix.

Two installations can share one NATS by choosing different prefixes. Events about a job live under
``<prefix>.job.<job_id>.<event>`` so one job is watched with ``<prefix>.job.<job_id>.>`` and one kind
of event across jobs with ``<prefix>.job.*.<event>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
_PREFIX = re.compile(PREFIX_PATTERN)


@dataclass(frozen=True)
class StreamNames:
    jobs: str
    logs: str
    exec: str
    intake: str
    models: str
    dlq: str
    scheduler: str
    pipelines: str
    metrics: str
    audit: str
    reports: str
    triggers: str
    jobindex: str  # the jobs index (trainyard_shared.jobindex): entries <prefix>.jobidx.<queue>.<state>.<job>


@dataclass(frozen=True)
class BucketNames:
    jobs: str
    executors: str
    leases: str
    queues: str
    idempotency: str
    models: str
    secrets: str
    pipelines: str
    schedules: str
    aliases: str
    triggers: str
    sweeps: str
    step_cache: str


@dataclass(frozen=True)
class Subjects:
    prefix: str = "trainyard"

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(
                f"subject prefix {self.prefix!r} must match {PREFIX_PATTERN} "
                "(lowercase letters, digits, '-' or '_', starting with a letter)"
            )

    # job events
    def job(self, job_id: str, event: str) -> str:
        return f"{self.prefix}.job.{job_id}.{event}"

    def job_events(self, job_id: str = "*") -> str:
        return f"{self.prefix}.job.{job_id}.>" if job_id != "*" else f"{self.prefix}.job.>"

    def job_event_kind(self, event: str) -> str:
        return f"{self.prefix}.job.*.{event}"

    @property
    def all_job_events(self) -> str:
        return f"{self.prefix}.job.>"

    # intake (other systems submit here, request/reply)
    @property
    def intake_submit(self) -> str:
        return f"{self.prefix}.intake.submit"

    @property
    def intake_workflow(self) -> str:
        """The workflow service's own intake: only its NATS user may publish here, so the keys of
        the jobs it submits (a step's, a trial's) are its own, never taken first by another sender."""
        return f"{self.prefix}.intake.workflow"

    # logs
    def log(self, job_id: str, attempt: int | str) -> str:
        return f"{self.prefix}.log.{job_id}.{attempt}"

    def logs_of(self, job_id: str) -> str:
        return f"{self.prefix}.log.{job_id}.*"

    # live training metrics (what a job reports through trainyard.report, batched by its executor)
    def metrics(self, job_id: str, attempt: int | str) -> str:
        return f"{self.prefix}.metrics.{job_id}.{attempt}"

    def metrics_of(self, job_id: str = "*") -> str:
        return f"{self.prefix}.metrics.{job_id}.*" if job_id != "*" else f"{self.prefix}.metrics.>"

    # executor commands
    def exec_command(self, executor_id: str, kind: str) -> str:
        return f"{self.prefix}.exec.{executor_id}.{kind}"

    def exec_commands_of(self, executor_id: str) -> str:
        return f"{self.prefix}.exec.{executor_id}.*"

    # what executors report about their attempts (the scheduler writes the records from it)
    def exec_report(self, executor_id: str, job_id: str) -> str:
        return f"{self.prefix}.exec-report.{executor_id}.{job_id}"

    def exec_reports_of(self, executor_id: str) -> str:
        return f"{self.prefix}.exec-report.{executor_id}.*"

    @property
    def all_exec_reports(self) -> str:
        return f"{self.prefix}.exec-report.>"

    # the scheduler's word to an executor that it applied one of its reports (core NATS: a wake-up
    # for the executor's read of the record, which stays the truth; the body is the job id)
    def exec_applied(self, executor_id: str) -> str:
        return f"{self.prefix}.exec-applied.{executor_id}"

    @property
    def all_exec_applied(self) -> str:
        return f"{self.prefix}.exec-applied.*"

    # models
    def model_registered(self, model_name: str) -> str:
        return f"{self.prefix}.model.{model_name}.registered"

    @property
    def all_model_events(self) -> str:
        """Every model event (the models stream's subjects): Trainyard's ``registered`` and the
        changes MLflow's webhooks tell."""
        return f"{self.prefix}.model.>"

    def model_event(self, model_name: str, event: str) -> str:
        """A change made in MLflow (its webhook): ``event`` as in modelregistry.MLFLOW_EVENTS."""
        return f"{self.prefix}.model.{model_name}.{event}"

    # the scheduler: decisions per planning pass (a stream), questions to the leader (request/reply)
    @property
    def scheduler_decisions(self) -> str:
        return f"{self.prefix}.scheduler.decisions"

    @property
    def scheduler_why(self) -> str:
        return f"{self.prefix}.scheduler.why"

    @property
    def scheduler_dry_run(self) -> str:
        return f"{self.prefix}.scheduler.dry-run"

    # pipelines (the workflow service): events per run, and requests from the API (request/reply)
    def pipeline(self, run_id: str, event: str) -> str:
        return f"{self.prefix}.pipeline.{run_id}.{event}"

    def pipeline_events(self, run_id: str = "*") -> str:
        return f"{self.prefix}.pipeline.{run_id}.>" if run_id != "*" else f"{self.prefix}.pipeline.>"

    def workflow_request(self, kind: str) -> str:
        """``run``, ``status``, ``list``, ``cancel``: what the API asks the workflow service."""
        return f"{self.prefix}.workflow.{kind}"

    # the registry's requests from the API (request/reply): alias, version, promote, rollback, compare
    def registry_request(self, kind: str) -> str:
        return f"{self.prefix}.registry.{kind}"

    # the audit stream: one subject per service, so a service can append only as itself
    def audit(self, service: str, action: str) -> str:
        return f"{self.prefix}.audit.{service}.{action}"

    def audit_of(self, service: str = "*") -> str:
        return f"{self.prefix}.audit.{service}.>" if service != "*" else f"{self.prefix}.audit.>"

    @property
    def trigger_events(self) -> str:
        """Events published for triggers under the installation's prefix (always allowed)."""
        return f"{self.prefix}.trigger.>"

    # the jobs index (trainyard_shared.jobindex)
    @property
    def job_index(self) -> str:
        return f"{self.prefix}.jobidx.>"

    # dead letters
    def dlq(self, service: str) -> str:
        return f"{self.prefix}.dlq.{service}"

    @property
    def streams(self) -> StreamNames:
        base = self.prefix.upper().replace("-", "_")
        return StreamNames(
            jobs=f"{base}_JOBS",
            logs=f"{base}_LOGS",
            exec=f"{base}_EXEC",
            intake=f"{base}_INTAKE",
            models=f"{base}_MODELS",
            dlq=f"{base}_DLQ",
            scheduler=f"{base}_SCHEDULER",
            pipelines=f"{base}_PIPELINES",
            metrics=f"{base}_METRICS",
            audit=f"{base}_AUDIT",
            reports=f"{base}_EXEC_REPORTS",
            triggers=f"{base}_TRIGGERS",
            jobindex=f"{base}_JOBIDX",
        )

    @property
    def workdirs_bucket(self) -> str:
        """The Object Store bucket of packed job workdirs (content-addressed: sha256 digests)."""
        return f"{self.prefix.replace('-', '_')}_workdirs"

    @property
    def step_outputs_bucket(self) -> str:
        """The Object Store bucket of pipeline steps' packed outputs folders (sha256 digests):
        what their dependents find under ``$TRAINYARD_INPUTS/<step>/``."""
        return f"{self.prefix.replace('-', '_')}_step_outputs"

    @property
    def buckets(self) -> BucketNames:
        base = self.prefix.replace("-", "_")
        return BucketNames(
            jobs=f"{base}_jobs",
            executors=f"{base}_executors",
            leases=f"{base}_leases",
            queues=f"{base}_queues",
            idempotency=f"{base}_idempotency",
            models=f"{base}_models",
            secrets=f"{base}_job_secrets",
            pipelines=f"{base}_pipelines",
            schedules=f"{base}_schedules",
            aliases=f"{base}_model_aliases",
            triggers=f"{base}_triggers",
            sweeps=f"{base}_sweeps",
            step_cache=f"{base}_step_cache",
        )


def msg_id(job_id: str, attempt: int, state: str) -> str:
    """The deterministic Nats-Msg-Id of a state change: a retry after a crash never doubles it."""
    return f"{job_id}:{attempt}:{state}"
