"""Extra links: the job's page in Trainyard's web UI (and a pipeline run's jobs).

The operator stores the whole URL in the link's XCom as soon as it has submitted, so the button
works while the task is still deferred; ``get_link`` reads it back."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink, BaseXCom


class _XComLink(BaseOperatorLink):
    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        url = BaseXCom.get_value(ti_key=ti_key, key=self.xcom_key)
        return str(url) if url else ""


class TrainyardJobLink(_XComLink):
    name = "Trainyard job"


class TrainyardPipelineLink(_XComLink):
    name = "Trainyard pipeline run"
