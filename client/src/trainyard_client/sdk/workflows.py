"""Workflows: pipeline runs, schedules, triggers, job arrays and sweeps (the workflow service's objects)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from trainyard_client.sdk.http import HttpClient, spec_body

if TYPE_CHECKING:
    from trainyard_contracts.arrayview import ArrayStatus
    from trainyard_contracts.runs import PipelineRun
    from trainyard_contracts.schedules import ScheduleRecord
    from trainyard_contracts.sweeps import SweepRecord
    from trainyard_contracts.triggers import TriggerRecord


class WorkflowCalls(HttpClient):
    """The workflow calls of :class:`~trainyard_client.sdk.TrainyardClient`."""

    def run_pipeline(
        self, pipeline: Mapping[str, Any], params: Mapping[str, Any] | None = None, no_cache: bool = False
    ) -> PipelineRun:
        """Start a run of ``pipeline`` (the document as a mapping) with ``params`` over its defaults;
        ``no_cache``: its ``cache: true`` steps run without a look in the step cache."""
        from trainyard_contracts.runs import PipelineRun

        body: dict[str, Any] = {"pipeline": dict(pipeline), "params": dict(params or {})}
        if no_cache:
            body["no_cache"] = True
        return PipelineRun.model_validate(self._request("POST", "/v1/pipelines", json=body).json())

    def pipeline(self, run_id: str) -> PipelineRun:
        from trainyard_contracts.runs import PipelineRun

        return PipelineRun.model_validate(self._request("GET", f"/v1/pipelines/{run_id}").json())

    def pipelines(self, limit: int = 100) -> list[PipelineRun]:
        from trainyard_contracts.runs import PipelineRun

        runs = self._request("GET", "/v1/pipelines", params={"limit": limit}).json()["runs"]
        return [PipelineRun.model_validate(run) for run in runs]

    def cancel_pipeline(self, run_id: str) -> PipelineRun:
        from trainyard_contracts.runs import PipelineRun

        return PipelineRun.model_validate(self._request("POST", f"/v1/pipelines/{run_id}/cancel").json())

    def retry_pipeline(self, run_id: str, attempt: int | None = None) -> PipelineRun:
        """Run a failed or cancelled run again from the steps that did not succeed (409 when it
        is running or succeeded). ``attempt``: the run's attempt you saw end; asking again for the
        same attempt (a lost answer) is the same retry, answered with the run as it is."""
        from trainyard_contracts.runs import PipelineRun

        body = {} if attempt is None else {"attempt": attempt}
        return PipelineRun.model_validate(
            self._request("POST", f"/v1/pipelines/{run_id}/retry", json=body).json()
        )

    def create_schedule(self, schedule: Mapping[str, Any]) -> ScheduleRecord:
        """Create a schedule (cron, timezone, concurrency, starting_deadline_seconds, pipeline,
        params); 422 names the bad field, 409 when the name is taken."""
        return self._schedule("POST", "/v1/schedules", json=dict(schedule))

    def schedule(self, name: str) -> ScheduleRecord:
        return self._schedule("GET", f"/v1/schedules/{name}")

    def schedules(self, limit: int = 100) -> list[ScheduleRecord]:
        from trainyard_contracts.schedules import ScheduleRecord

        found = self._request("GET", "/v1/schedules", params={"limit": limit}).json()["schedules"]
        return [ScheduleRecord.model_validate(s) for s in found]

    def suspend_schedule(self, name: str) -> ScheduleRecord:
        return self._schedule("POST", f"/v1/schedules/{name}/suspend")

    def resume_schedule(self, name: str) -> ScheduleRecord:
        return self._schedule("POST", f"/v1/schedules/{name}/resume")

    def delete_schedule(self, name: str) -> None:
        self._request("DELETE", f"/v1/schedules/{name}")

    def backfill_schedule(self, name: str, start: datetime, end: datetime) -> list[str]:
        """Start the schedule's ticks in ``[start, end]`` once each; the run ids they name."""
        body = {"from": start.isoformat(), "to": end.isoformat()}
        answer = self._request("POST", f"/v1/schedules/{name}/backfill", json=body).json()
        return list(answer["run_ids"])

    def _schedule(self, method: str, path: str, **kwargs: Any) -> ScheduleRecord:
        from trainyard_contracts.schedules import ScheduleRecord

        return ScheduleRecord.model_validate(self._request(method, path, **kwargs).json())

    def create_trigger(self, trigger: Mapping[str, Any]) -> TriggerRecord:
        """Create a trigger (subject, filter, params, dedupe_key, debounce_seconds, pipeline); 422
        names the bad field (a subject outside the operator's allow-list: ``subject``), 409 when
        the name is taken."""
        from trainyard_contracts.triggers import TriggerRecord

        return TriggerRecord.model_validate(self._request("POST", "/v1/triggers", json=dict(trigger)).json())

    def trigger(self, name: str) -> TriggerRecord:
        """A trigger with what it did with events: fired, filtered, deduplicated, debounced..."""
        from trainyard_contracts.triggers import TriggerRecord

        return TriggerRecord.model_validate(self._request("GET", f"/v1/triggers/{name}").json())

    def triggers(self, limit: int = 100) -> list[TriggerRecord]:
        from trainyard_contracts.triggers import TriggerRecord

        found = self._request("GET", "/v1/triggers", params={"limit": limit}).json()["triggers"]
        return [TriggerRecord.model_validate(t) for t in found]

    def delete_trigger(self, name: str) -> None:
        """The trigger goes; the runs it started go on."""
        self._request("DELETE", f"/v1/triggers/{name}")

    def suspend_trigger(self, name: str) -> TriggerRecord:
        """Events on its subject are counted (``suspended_events``), never fired, until resumed."""
        from trainyard_contracts.triggers import TriggerRecord

        return TriggerRecord.model_validate(self._request("POST", f"/v1/triggers/{name}/suspend").json())

    def resume_trigger(self, name: str) -> TriggerRecord:
        """Events from now on fire again; none that came while it was suspended."""
        from trainyard_contracts.triggers import TriggerRecord

        return TriggerRecord.model_validate(self._request("POST", f"/v1/triggers/{name}/resume").json())

    def run_sweep(self, sweep: Mapping[str, Any]) -> SweepRecord:
        """Start a sweep (job template, space, objective, limits, sampler, pruner); 422 names the
        bad field (``space.lr.high``, ``job.resources.cpu``)."""
        return self._sweep("POST", "/v1/sweeps", json=dict(sweep))

    def sweep(self, sweep_id: str) -> SweepRecord:
        """A sweep with its trials; ``record.ranked()`` orders them by the objective,
        ``record.best_trial()`` is the best completed one."""
        return self._sweep("GET", f"/v1/sweeps/{sweep_id}")

    def sweeps(self, limit: int = 100) -> list[SweepRecord]:
        from trainyard_contracts.sweeps import SweepRecord

        found = self._request("GET", "/v1/sweeps", params={"limit": limit}).json()["sweeps"]
        return [SweepRecord.model_validate(s) for s in found]

    def cancel_sweep(self, sweep_id: str) -> SweepRecord:
        """No further trial starts; the trials' jobs still open are cancelled."""
        return self._sweep("POST", f"/v1/sweeps/{sweep_id}/cancel")

    def _sweep(self, method: str, path: str, **kwargs: Any) -> SweepRecord:
        from trainyard_contracts.sweeps import SweepRecord

        return SweepRecord.model_validate(self._request(method, path, **kwargs).json())

    def submit_array(self, spec: str | bytes | Mapping[str, Any]) -> ArrayStatus:
        """Submit a job spec with ``array: "0-99%8"``: one array object, its jobs made by the
        workflow service; 422 names ``array`` for bad syntax."""
        body, content_type = spec_body(spec)
        answer = self._request("POST", "/v1/jobs", content=body, headers={"Content-Type": content_type})
        return _array_status(answer.json())

    def array(self, array_id: str) -> ArrayStatus:
        """An array's jobs counted per state."""
        return _array_status(self._request("GET", f"/v1/arrays/{array_id}").json())

    def cancel_array(self, array_id: str) -> ArrayStatus:
        """Stop every job of the array; no more start."""
        return _array_status(self._request("POST", f"/v1/arrays/{array_id}/cancel").json())


def _array_status(data: dict[str, Any]) -> ArrayStatus:
    from trainyard_contracts.arrayview import ArrayStatus

    if data.get("kind") != "array":
        raise ValueError("the API answered with a job, not an array: the spec has no array field")
    return ArrayStatus.model_validate({k: v for k, v in data.items() if k != "kind"})
