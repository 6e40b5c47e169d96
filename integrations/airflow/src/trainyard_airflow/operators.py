"""Operators: run one Trainyard job, or one pipeline run, and succeed or fail with it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import yaml
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from trainyard_airflow.api import (
    JOB_TERMINAL,
    RUN_TERMINAL,
    ApiSettings,
    TrainyardApi,
    TrainyardApiError,
    job_outcome,
    log_line,
    pipeline_outcome,
)
from trainyard_airflow.hooks import DEFAULT_CONN_ID, TrainyardHook
from trainyard_airflow.links import TrainyardJobLink, TrainyardPipelineLink
from trainyard_airflow.triggers import TrainyardJobTrigger, TrainyardPipelineTrigger

JOB_ID_XCOM = "trainyard_job_id"
RUN_ID_XCOM = "trainyard_run_id"
MAX_KEY = 256  # the API's Idempotency-Key bound


def default_idempotency_key(context: Mapping[str, Any]) -> str:
    """One job per task try: the same try submitting again (a worker that died between the submit
    and its answer) gets the same job; a retry (a new try) a new one."""
    ti = context["ti"]
    key = f"airflow/{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}/{ti.try_number}"
    if len(key) > MAX_KEY:
        key = "airflow/sha256/" + hashlib.sha256(key.encode()).hexdigest()
    return key


def finish(event: Mapping[str, Any]) -> dict[str, Any]:
    """A trigger's (or the worker's own) outcome as the task's result: anything but success fails
    the task, naming the state and the reason Trainyard gave."""
    state = event.get("state")
    if state == "succeeded":
        return dict(event)
    what = f"trainyard job {event.get('job_id')}" if event.get("kind") == "job" else (
        f"trainyard pipeline run {event.get('run_id')}"
    )  # fmt: skip
    detail = [f"{k}={event[k]}" for k in ("exit_code", "reason", "steps") if event.get(k) not in (None, {})]
    raise AirflowException(f"{what} ended {state}" + (f" ({', '.join(detail)})" if detail else ""))


class TrainyardJobOperator(BaseOperator):
    """Submit a job spec (a mapping, or YAML/JSON text: what ``trainyard submit`` takes) and
    succeed when the job succeeds; failed, cancelled, timed-out or rejected fail the task.

    ``deferrable`` (default): after the submit the state is checked once, then the task defers to
    :class:`TrainyardJobTrigger` (the worker slot is freed; the triggerer echoes the job's log into
    the task's log). Not deferrable: the worker follows the log itself. ``on_kill`` (and the
    trigger's, while deferred) cancels the job. The result (XCom ``return_value``) is the job's
    outcome: ``job_id``, ``state``, ``attempt``, ``exit_code``, ``reason``, ``model``.
    """

    template_fields: Sequence[str] = ("spec", "idempotency_key")
    template_fields_renderers = {"spec": "yaml"}
    operator_extra_links = (TrainyardJobLink(),)
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        spec: Mapping[str, Any] | str,
        trainyard_conn_id: str = DEFAULT_CONN_ID,
        deferrable: bool = True,
        poll_interval: float = 5.0,
        echo_logs: bool = True,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.trainyard_conn_id = trainyard_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.echo_logs = echo_logs
        self.idempotency_key = idempotency_key
        self.job_id: str | None = None
        self._settings: ApiSettings | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        self._settings = TrainyardHook(self.trainyard_conn_id).settings()
        with TrainyardApi(self._settings) as api:
            job = api.submit_job(self.spec, self.idempotency_key or default_idempotency_key(context))
            self.job_id = job["job_id"]
            ti = context["ti"]
            ti.xcom_push(key=JOB_ID_XCOM, value=self.job_id)
            ti.xcom_push(key=TrainyardJobLink().xcom_key, value=self._settings.job_page(self.job_id))
            again = " (already submitted by this try: the same job)" if job["duplicate"] else ""
            self.log.info(
                "trainyard job %s submitted%s: %s", self.job_id, again, self._settings.job_page(self.job_id)
            )
            # checked before deferring: a job that has ended already needs no trigger
            record = api.get_job(self.job_id)
            if record["state"] in JOB_TERMINAL:
                if self.echo_logs:
                    self._echo_stored_log(api)
                return finish(job_outcome(record))
            if self.deferrable:
                self.defer(
                    trigger=TrainyardJobTrigger(
                        job_id=self.job_id,
                        trainyard_conn_id=self.trainyard_conn_id,
                        poll_interval=self.poll_interval,
                        echo_logs=self.echo_logs,
                    ),
                    method_name="execute_complete",
                )
            return finish(self._follow_here(api))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        self.log.info("trainyard job %s ended %s", event.get("job_id"), event.get("state"))
        return finish(event)

    def _echo_stored_log(self, api: TrainyardApi) -> None:
        assert self.job_id is not None
        for line in api.job_logs(self.job_id).splitlines():
            self.log.info("%s", line)

    def _follow_here(self, api: TrainyardApi) -> dict[str, Any]:
        """Not deferrable: the worker echoes the log until the job ends, polling as a fallback."""
        assert self.job_id is not None
        if self.echo_logs:
            try:
                for event, data in api.follow_logs(self.job_id):
                    if event == "log":
                        self.log.info("%s", log_line(data))
                    elif event == "end":
                        break
            except (httpx.HTTPError, TrainyardApiError) as exc:
                self.log.warning("following the job's log stopped (%s); polling its state", exc)
        while True:
            record = api.get_job(self.job_id)
            if record["state"] in JOB_TERMINAL:
                return job_outcome(record)
            time.sleep(self.poll_interval)

    def on_kill(self) -> None:
        """The task was killed on its worker (marked failed, timed out): the job goes too."""
        if self.job_id is None:
            return
        settings = self._settings or TrainyardHook(self.trainyard_conn_id).settings()
        with TrainyardApi(settings) as api:
            cancelled = api.cancel_job(self.job_id)
        self.log.info("trainyard job %s %s", self.job_id, "cancelled" if cancelled else "had already ended")


class TrainyardPipelineOperator(BaseOperator):
    """Start a run of a Trainyard pipeline (the document as a mapping or YAML text, with
    ``pipeline_params`` over its defaults) and succeed when the run succeeds; docs/workflows.md says
    when a run succeeds. Deferrable by default (:class:`TrainyardPipelineTrigger`); ``on_kill``
    cancels the run (no further step starts, its jobs stop)."""

    # the document is not a Jinja template: a pipeline's own ``${{ params.x }}`` would be rendered
    # (and fail) as Airflow's; pass Airflow's values in through ``pipeline_params``, which is one
    template_fields: Sequence[str] = ("pipeline_params",)
    template_fields_renderers = {"pipeline_params": "json"}
    operator_extra_links = (TrainyardPipelineLink(),)
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        pipeline: Mapping[str, Any] | str,
        pipeline_params: Mapping[str, Any] | None = None,
        trainyard_conn_id: str = DEFAULT_CONN_ID,
        deferrable: bool = True,
        poll_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        # not ``params``: that is BaseOperator's (Airflow's own params, not templated)
        self.pipeline_params = dict(pipeline_params or {})
        self.trainyard_conn_id = trainyard_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.run_id: str | None = None
        self._settings: ApiSettings | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        document = yaml.safe_load(self.pipeline) if isinstance(self.pipeline, str) else dict(self.pipeline)
        self._settings = TrainyardHook(self.trainyard_conn_id).settings()
        with TrainyardApi(self._settings) as api:
            run = api.run_pipeline(document, self.pipeline_params)
            self.run_id = run["run_id"]
            ti = context["ti"]
            ti.xcom_push(key=RUN_ID_XCOM, value=self.run_id)
            ti.xcom_push(
                key=TrainyardPipelineLink().xcom_key, value=self._settings.pipeline_page(self.run_id)
            )
            self.log.info("trainyard pipeline run %s started", self.run_id)
            if run["state"] in RUN_TERMINAL:
                return finish(pipeline_outcome(run))
            if self.deferrable:
                self.defer(
                    trigger=TrainyardPipelineTrigger(
                        run_id=self.run_id,
                        trainyard_conn_id=self.trainyard_conn_id,
                        poll_interval=self.poll_interval,
                    ),
                    method_name="execute_complete",
                )
            while run["state"] not in RUN_TERMINAL:
                time.sleep(self.poll_interval)
                run = api.get_pipeline(self.run_id)
            return finish(pipeline_outcome(run))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        self.log.info("trainyard pipeline run %s ended %s: %s", event.get("run_id"), event.get("state"),
                      event.get("steps"))  # fmt: skip
        return finish(event)

    def on_kill(self) -> None:
        if self.run_id is None:
            return
        settings = self._settings or TrainyardHook(self.trainyard_conn_id).settings()
        with TrainyardApi(settings) as api:
            api.cancel_pipeline(self.run_id)
        self.log.info("trainyard pipeline run %s cancelled", self.run_id)
