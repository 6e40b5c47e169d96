"""Jobs: submit (with a local work dir), read, list, cancel, purge, logs, metrics, wait."""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from trainyard_client.connection import TrainyardError
from trainyard_client.sdk.http import HttpClient, spec_body
from trainyard_contracts import (
    DryRunAnswer,
    JobRecord,
    JobSpec,
    JobState,
    MetricsBatch,
    ModelRef,
    WhyAnswer,
    parse_spec_document,
)

if TYPE_CHECKING:
    from trainyard_client.workdir import WorkdirUpload


@dataclass(frozen=True)
class SubmitResult:
    job_id: str
    state: JobState
    duplicate: bool
    job: JobRecord


class JobSummary(BaseModel):
    """One row of ``GET /v1/jobs``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: str
    name: str
    queue: str
    labels: dict[str, str] = Field(default_factory=dict)
    state: JobState
    attempt: int = 1
    executor_id: str | None = None
    submitted_at: datetime
    updated_at: datetime
    exit_code: int | None = None
    reason: str | None = None
    model: ModelRef | None = None


@dataclass(frozen=True)
class LogEvent:
    """One server-sent event of a followed log: ``log`` (one line) or ``end`` (the final state)."""

    event: str
    attempt: int | None = None
    stream: str | None = None
    text: str = ""
    time: datetime | None = None
    state: str | None = None
    data: Any = field(default=None, compare=False)


def _log_event(event: str, data: str) -> LogEvent:
    if event == "log":
        try:
            item = json.loads(data)
        except ValueError:
            return LogEvent(event="log", text=data, data=data)
        when = item.get("time")
        return LogEvent(
            event="log",
            attempt=item.get("attempt"),
            stream=item.get("stream"),
            text=str(item.get("text", "")),
            time=datetime.fromisoformat(when) if isinstance(when, str) else None,
            data=item,
        )
    if event == "end":
        state = data.strip()
        if state.startswith("{"):
            try:
                state = str(json.loads(state).get("state", state))
            except ValueError:
                pass
        return LogEvent(event="end", state=state.strip('"'), data=data)
    return LogEvent(event=event, text=data, data=data)


class JobCalls(HttpClient):
    """The job calls of :class:`~trainyard_client.sdk.TrainyardClient`."""

    def upload_workdir(self, folder: str | Path) -> WorkdirUpload:
        """Pack ``folder`` and upload it unless the API has that digest already (asked first)."""
        from trainyard_client.workdir import WorkdirUpload, pack_workdir

        packed, commit, diff = pack_workdir(Path(folder).expanduser())
        path = f"/v1/workdirs/{packed.digest}"
        try:
            self._request("HEAD", path)
            uploaded = False
        except TrainyardError as exc:
            if exc.status != 404:
                raise
            headers = {"Content-Type": "application/gzip"}
            uploaded = self._request("PUT", path, content=packed.archive, headers=headers).json()["stored"]
        return WorkdirUpload(packed.digest, bool(uploaded), commit, diff, packed.files, packed.size)

    def _with_workdir(
        self, spec: str | bytes | Mapping[str, Any] | JobSpec
    ) -> str | bytes | Mapping[str, Any] | JobSpec:
        """``spec`` with a local ``workdir`` folder (relative: to the current directory) uploaded
        and replaced by its digest; any other spec unchanged."""
        from trainyard_client.workdir import workdir_path

        if isinstance(spec, JobSpec):
            if spec.workdir is None or spec.workdir.path is None:
                return spec
            data: dict[str, Any] = spec.model_dump(mode="json", exclude_defaults=True)
        elif isinstance(spec, Mapping):
            data = dict(spec)
        else:
            if b"workdir" not in (spec.encode() if isinstance(spec, str) else spec):
                return spec
            data = parse_spec_document(spec)
        folder = workdir_path(data)
        if folder is None:
            return data
        data["workdir"] = self.upload_workdir(folder).spec_field()
        return data

    def submit(
        self,
        spec: str | bytes | Mapping[str, Any] | JobSpec,
        idempotency_key: str | None = None,
    ) -> SubmitResult:
        """Submit a spec (YAML/JSON text, a mapping or a JobSpec); 422 raises with field errors.
        A local ``workdir`` folder is packed and uploaded first (:meth:`upload_workdir`)."""
        body, content_type = spec_body(self._with_workdir(spec))
        headers = {"Content-Type": content_type}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        data = self._request("POST", "/v1/jobs", content=body, headers=headers).json()
        return SubmitResult(
            job_id=data["job_id"],
            state=JobState(data["state"]),
            duplicate=bool(data.get("duplicate", False)),
            job=JobRecord.model_validate(data["job"]),
        )

    def dry_run(self, spec: str | bytes | Mapping[str, Any] | JobSpec) -> DryRunAnswer:
        """What the scheduler would decide now for ``spec``; nothing is queued."""
        body, content_type = spec_body(spec)
        response = self._request(
            "POST", "/v1/jobs/dry-run", content=body, headers={"Content-Type": content_type}
        )
        return DryRunAnswer.model_validate(response.json())

    def why(self, job_id: str) -> WhyAnswer:
        """Why the job is (still) where it is: the scheduler leader's answer from its last pass."""
        return WhyAnswer.model_validate(self._request("GET", f"/v1/jobs/{job_id}/why").json())

    def get(self, job_id: str) -> JobRecord:
        return JobRecord.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def list(
        self,
        state: str | JobState | None = None,
        queue: str | None = None,
        limit: int | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        oldest_first: bool = False,
    ) -> list[JobSummary]:
        """Jobs newest first (``oldest_first``: the other way); ``labels``: only jobs carrying every one."""
        rows, _ = self._page(self._list_params(state, queue, limit, name, labels, oldest_first))
        return rows

    def each(
        self,
        state: str | JobState | None = None,
        queue: str | None = None,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        oldest_first: bool = False,
        page_size: int = 500,
    ) -> Iterator[JobSummary]:
        """Every matching job, page after page (the API's ``next_cursor``): each job once, however
        many there are; jobs submitted meanwhile may or may not be among them."""
        params = self._list_params(state, queue, page_size, name, labels, oldest_first)
        while True:
            rows, cursor = self._page(params)
            yield from rows
            if cursor is None:
                return
            params = {**params, "cursor": cursor}

    @staticmethod
    def _list_params(
        state: str | JobState | None,
        queue: str | None,
        limit: int | None,
        name: str | None,
        labels: Mapping[str, str] | None,
        oldest_first: bool,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if state:
            params["state"] = JobState(state).value
        if queue:
            params["queue"] = queue
        if name:
            params["name"] = name
        if labels:
            params["label"] = [f"{k}={v}" for k, v in labels.items()]
        if limit:
            params["limit"] = limit
        if oldest_first:
            params["order"] = "oldest"
        return params

    def _page(self, params: dict[str, Any]) -> tuple[builtins.list[JobSummary], str | None]:
        answer = self._request("GET", "/v1/jobs", params=params).json()
        return [JobSummary.model_validate(row) for row in answer.get("jobs", [])], answer.get("next_cursor")

    def cancel(self, job_id: str) -> JobRecord:
        """Request cancellation; a finished job raises TrainyardError with status 409."""
        return JobRecord.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def purge(self, job_id: str) -> dict[str, Any]:
        """Remove a finished job and all that is stored of it (record and its history, secrets,
        logs, idempotency entry); answers what was removed. A job not finished raises
        TrainyardError with status 409."""
        answer = self._request("DELETE", f"/v1/jobs/{job_id}", params={"purge": "true"}).json()
        return dict(answer["purged"])

    def logs(self, job_id: str, attempt: int | None = None) -> str:
        params: dict[str, Any] = {"follow": "false"}
        if attempt is not None:
            params["attempt"] = attempt
        return self._request("GET", f"/v1/jobs/{job_id}/logs", params=params).text

    def follow_logs(self, job_id: str, attempt: int | None = None) -> Iterator[LogEvent]:
        """The job's log lines as they are written, then one ``end`` event with the final state."""
        for event, data in self._follow(f"/v1/jobs/{job_id}/logs", attempt):
            yield _log_event(event, data)

    def metrics(
        self, job_id: str, attempt: int | None = None, last: int | None = None, latest: bool = False
    ) -> dict[str, Any]:
        """What the job reported with ``trainyard.report``: ``points`` (the newest ``last``, each
        with ``attempt``, ``step``, ``time``, ``values``), ``total``, ``dropped`` and ``state``;
        ``latest``: from the newest batch only (cheap whatever the job's history)."""
        params: dict[str, Any] = {"follow": "false", "latest": "true" if latest else "false"}
        if attempt is not None:
            params["attempt"] = attempt
        if last is not None:
            params["last"] = last
        return dict(self._request("GET", f"/v1/jobs/{job_id}/metrics", params=params).json())

    def follow_metrics(self, job_id: str, attempt: int | None = None) -> Iterator[MetricsBatch | str]:
        """The job's reported metrics batch by batch as they are published (those stored first),
        then its final state (a ``str``) once it has ended."""
        for event, data in self._follow(f"/v1/jobs/{job_id}/metrics", attempt):
            if event == "metrics":
                yield MetricsBatch.model_validate_json(data)
            elif event == "end":
                yield data

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float = 0.5,
        on_change: Callable[[JobRecord], None] | None = None,
        model: bool = False,
    ) -> JobRecord:
        """Poll until the job is terminal; ``on_change`` sees each new state or attempt.

        ``model=True`` means what ``trainyard submit --wait`` means: a job that succeeded and
        names ``outputs.model`` is waited for until its model version is registered too (the
        record's ``model``; up to 60 s more, then ``model`` stays None).
        Raises TimeoutError when ``timeout`` seconds pass first (the job keeps running).
        """
        record = self._wait_terminal(job_id, timeout, poll, on_change)
        wants = record.spec.outputs.model if record.spec.outputs else None
        if model and wants and record.state == JobState.SUCCEEDED and record.model is None:
            registered = self.wait_for_model(job_id, 60, poll)
            record = record.model_copy(update={"model": registered})
        return record

    def _wait_terminal(
        self,
        job_id: str,
        timeout: float | None,
        poll: float,
        on_change: Callable[[JobRecord], None] | None,
    ) -> JobRecord:
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[JobState, int] | None = None
        while True:
            record = self.get(job_id)
            if on_change and (record.state, record.attempt) != seen:
                on_change(record)
            seen = (record.state, record.attempt)
            if record.state.terminal:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {record.state.value} after {timeout}s")
            time.sleep(poll)

    def wait_for_model(self, job_id: str, timeout: float = 60, poll: float = 0.5) -> ModelRef | None:
        """The model version registered from the job's outputs, or None if none came in time."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.get(job_id)
            if record.model is not None:
                return record.model
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll)
