"""A sensor for a Trainyard job another system started."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator

from trainyard_airflow.api import JOB_TERMINAL, TrainyardApi, job_outcome
from trainyard_airflow.hooks import DEFAULT_CONN_ID, TrainyardHook
from trainyard_airflow.links import TrainyardJobLink
from trainyard_airflow.operators import finish
from trainyard_airflow.triggers import TrainyardJobTrigger


class TrainyardJobSensor(BaseSensorOperator):
    """Waits for job ``job_id`` to end: succeeded is success, any other end fails the task.
    Deferrable by default; it never cancels the job (not its own), whatever happens to the task."""

    template_fields: Sequence[str] = ("job_id",)
    operator_extra_links = (TrainyardJobLink(),)

    def __init__(
        self,
        *,
        job_id: str,
        trainyard_conn_id: str = DEFAULT_CONN_ID,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.trainyard_conn_id = trainyard_conn_id
        self.deferrable = deferrable

    def _ended(self, context: Any) -> dict[str, Any] | None:
        settings = TrainyardHook(self.trainyard_conn_id).settings()
        context["ti"].xcom_push(key=TrainyardJobLink().xcom_key, value=settings.job_page(self.job_id))
        with TrainyardApi(settings) as api:
            record = api.get_job(self.job_id)
        return job_outcome(record) if record["state"] in JOB_TERMINAL else None

    def poke(self, context: Any) -> bool:
        outcome = self._ended(context)
        return outcome is not None and bool(finish(outcome))

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        outcome = self._ended(context)
        if outcome is not None:
            return finish(outcome)
        self.defer(
            trigger=TrainyardJobTrigger(
                job_id=self.job_id,
                trainyard_conn_id=self.trainyard_conn_id,
                poll_interval=self.poke_interval,
                echo_logs=False,
                cancel_on_kill=False,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        return finish(event)
