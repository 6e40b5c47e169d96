"""The Python SDK: a small synchronous client for the submission service's HTTP API.

    from trainyard_client import TrainyardClient

    with TrainyardClient() as client:                    # TRAINYARD_URL / TRAINYARD_TOKEN
        result = client.submit(open("job.yaml").read())
        record = client.wait(result.job_id, timeout=600)
        print(record.state, record.model)

Connection settings, first match wins: the constructor's arguments; ``TRAINYARD_URL`` (default
``http://127.0.0.1:8700``) and ``TRAINYARD_TOKEN``; else the token file that the submission
service writes on first start, ``<TRAINYARD_DATA_DIR or ./.trainyard>/api-token``.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

# re-exported: the SDK's public names, kept in a module light enough for the CLI's start-up
from trainyard_client.connection import (
    DEFAULT_URL as DEFAULT_URL,
)
from trainyard_client.connection import (
    TOKEN_FILE as TOKEN_FILE,
)
from trainyard_client.connection import (
    TrainyardError as TrainyardError,
)
from trainyard_client.connection import (
    TrainyardUnavailable as TrainyardUnavailable,
)
from trainyard_client.connection import (
    default_token as default_token,
)
from trainyard_client.connection import (
    default_url as default_url,
)
from trainyard_client.connection import (
    no_token_hint,
    problem_error,
)
from trainyard_client.connection import (
    token_file as token_file,
)
from trainyard_contracts import (
    DryRunAnswer,
    JobRecord,
    JobSpec,
    JobState,
    MetricsBatch,
    ModelRef,
    ModelVersionRecord,
    QueueConfig,
    WhyAnswer,
    parse_spec_document,
)

if TYPE_CHECKING:
    from trainyard_client.workdir import WorkdirUpload
    from trainyard_contracts.arrayview import ArrayStatus
    from trainyard_contracts.audit import AuditEntry
    from trainyard_contracts.modelregistry import AliasChange, AliasView, VersionInfo
    from trainyard_contracts.runs import PipelineRun
    from trainyard_contracts.schedules import ScheduleRecord
    from trainyard_contracts.triggers import TriggerRecord


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
class QueueEntry:
    """A queue's configuration and the revision to pass back as ``if_revision`` (0: not stored)."""

    config: QueueConfig
    revision: int

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> QueueEntry:
        fields = {k: v for k, v in row.items() if k != "revision"}
        return cls(QueueConfig.model_validate(fields), int(row.get("revision") or 0))


class TokenInfo(BaseModel):
    """An API token as listed: never the token itself. ``token`` is set only right after creation."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    token_id: str
    team: str | None = None
    admin: bool = False
    description: str = ""
    created_at: datetime
    token: str | None = None


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


def _problem(response: httpx.Response) -> TrainyardError:
    return problem_error(response.status_code, response.reason_phrase, response.text)


def _spec_body(spec: str | bytes | Mapping[str, Any] | JobSpec) -> tuple[bytes, str]:
    if isinstance(spec, JobSpec):
        return json.dumps(spec.model_dump(mode="json", exclude_defaults=True)).encode(), "application/json"
    if isinstance(spec, Mapping):
        return json.dumps(dict(spec)).encode(), "application/json"
    raw = spec.encode() if isinstance(spec, str) else bytes(spec)
    kind = "application/json" if raw.lstrip().startswith(b"{") else "application/yaml"
    return raw, kind


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from server-sent-event lines (comments and ids ignored)."""
    event, data = "", list[str]()
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data or event:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event or "message", "\n".join(data)


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


class TrainyardClient:
    """A synchronous client of the submission service's HTTP API (``/v1``)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or default_url()).rstrip("/")
        self.token = token if token is not None else default_token()
        self.timeout = timeout
        headers = {"Accept": "application/json", "User-Agent": "trainyard-client/0.1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    # plumbing

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TrainyardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise_for(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        raise no_token_hint(_problem(response), self.token)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TrainyardUnavailable(self.url, str(exc) or type(exc).__name__) from exc
        self._raise_for(response)
        return response

    # the API

    def run_pipeline(
        self, pipeline: Mapping[str, Any], params: Mapping[str, Any] | None = None
    ) -> PipelineRun:
        """Start a run of ``pipeline`` (the document as a mapping) with ``params`` over its defaults."""
        from trainyard_contracts.runs import PipelineRun

        body = {"pipeline": dict(pipeline), "params": dict(params or {})}
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

    def submit_array(self, spec: str | bytes | Mapping[str, Any]) -> ArrayStatus:
        """Submit a job spec with ``array: "0-99%8"``: one array object, its jobs made by the
        workflow service; 422 names ``array`` for bad syntax."""
        body, content_type = _spec_body(spec)
        answer = self._request("POST", "/v1/jobs", content=body, headers={"Content-Type": content_type})
        return _array_status(answer.json())

    def array(self, array_id: str) -> ArrayStatus:
        """An array's jobs counted per state."""
        return _array_status(self._request("GET", f"/v1/arrays/{array_id}").json())

    def cancel_array(self, array_id: str) -> ArrayStatus:
        """Stop every job of the array; no more start."""
        return _array_status(self._request("POST", f"/v1/arrays/{array_id}/cancel").json())

    def health(self) -> bool:
        """True when the API answers ``/healthz``."""
        try:
            return self._http.get("/healthz", timeout=min(self.timeout, 5)).is_success
        except httpx.TransportError:
            return False

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
        body, content_type = _spec_body(self._with_workdir(spec))
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
        body, content_type = _spec_body(spec)
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
    ) -> list[JobSummary]:
        """Jobs newest first; ``labels``: only jobs carrying every one of them."""
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
        rows = self._request("GET", "/v1/jobs", params=params).json().get("jobs", [])
        return [JobSummary.model_validate(row) for row in rows]

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

    def _follow(self, path: str, attempt: int | None) -> Iterator[tuple[str, str]]:
        """The server-sent events of a followed read (``follow=true``)."""
        params: dict[str, Any] = {"follow": "true"}
        if attempt is not None:
            params["attempt"] = attempt
        timeout = httpx.Timeout(self.timeout, read=None)
        headers = {"Accept": "text/event-stream"}
        try:
            with self._http.stream("GET", path, params=params, headers=headers, timeout=timeout) as response:
                if not response.is_success:
                    response.read()
                    self._raise_for(response)
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise TrainyardUnavailable(self.url, str(exc) or type(exc).__name__) from exc

    def dead_letters(self, service: str | None = None, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Messages a service could not handle: seq, service, reason, subject, body."""
        params: dict[str, Any] = {"limit": limit}
        if service:
            params["service"] = service
        letters = self._request("GET", "/v1/dlq", params=params).json().get("letters", [])
        return list(letters)

    def replay_dead_letter(self, seq: int) -> dict[str, Any]:
        """Publish a dead letter again on its original subject, and remove it."""
        return dict(self._request("POST", f"/v1/dlq/{seq}/replay").json()["replayed"])

    # queues and tokens (writes need an admin token)

    def queues(self) -> builtins.list[QueueEntry]:
        """Every queue's configuration; ``default`` is listed with revision 0 until it is written."""
        rows = self._request("GET", "/v1/queues").json().get("queues", [])
        return [QueueEntry.from_json(row) for row in rows]

    def get_queue(self, name: str) -> QueueEntry | None:
        """A queue's stored configuration, or None when it has none (built-in defaults apply)."""
        try:
            return QueueEntry.from_json(self._request("GET", f"/v1/queues/{name}").json())
        except TrainyardError as exc:
            if exc.status == 404:
                return None
            raise

    def set_queue(self, config: QueueConfig, if_revision: int | None = None) -> QueueEntry:
        """Create or replace a queue's configuration; with ``if_revision`` (0: must be new) a
        concurrent change raises TrainyardError 412 instead of being overwritten."""
        headers = {} if if_revision is None else {"If-Match": str(if_revision)}
        body = config.model_dump(mode="json", exclude={"name"})
        return QueueEntry.from_json(
            self._request("PUT", f"/v1/queues/{config.name}", json=body, headers=headers).json()
        )

    def delete_queue(self, name: str, if_revision: int | None = None) -> None:
        headers = {} if if_revision is None else {"If-Match": str(if_revision)}
        self._request("DELETE", f"/v1/queues/{name}", headers=headers)

    def create_token(self, team: str | None = None, admin: bool = False, description: str = "") -> TokenInfo:
        """A new token for one team (its queue) or an admin token; ``.token`` is shown only now."""
        body: dict[str, Any] = {"admin": True} if admin else {"team": team}
        body["description"] = description
        return TokenInfo.model_validate(self._request("POST", "/v1/tokens", json=body).json())

    def tokens(self) -> builtins.list[TokenInfo]:
        rows = self._request("GET", "/v1/tokens").json().get("tokens", [])
        return [TokenInfo.model_validate(row) for row in rows]

    def revoke_token(self, token_id: str) -> None:
        self._request("DELETE", f"/v1/tokens/{token_id}")

    def executors(self) -> builtins.list[dict[str, Any]]:
        """Every executor's latest heartbeat (``running`` as a count, ``alive``) with its
        ``isolation``: what its backend keeps a job from (None: an older executor)."""
        return list(self._request("GET", "/v1/executors").json().get("executors", []))

    def models(self, name: str | None = None) -> builtins.list[ModelVersionRecord]:
        params = {"name": name} if name else {}
        rows = self._request("GET", "/v1/models", params=params).json().get("models", [])
        return [ModelVersionRecord.model_validate(row) for row in rows]

    def promote_model(
        self,
        name: str,
        version: int,
        alias: str = "production",
        *,
        if_better: str | None = None,
        lower_is_better: bool = False,
        min_delta: float = 0.0,
        expected_revision: int | None = None,
    ) -> AliasChange:
        """Point ``name@alias`` at ``version`` (MLflow's ``models:/name@alias``). With ``if_better``
        (a metric name) only when the version beats the holder by more than ``min_delta``:
        ``changed`` and ``reason`` say what was done and why. 409: the alias moved since
        ``expected_revision`` (or during the request); 403: the alias rules refuse this token."""
        from trainyard_contracts.modelregistry import AliasChange

        body: dict[str, Any] = {"version": version}
        if expected_revision is not None:
            body["expected_revision"] = expected_revision
        if if_better is not None:
            body["if_better"] = {
                "metric": if_better,
                "lower_is_better": lower_is_better,
                "min_delta": min_delta,
            }
        answer = self._request("POST", f"/v1/models/{name}/aliases/{alias}", json=body).json()
        return AliasChange.model_validate(answer)

    def rollback_model(
        self, name: str, alias: str = "production", *, expected_revision: int | None = None
    ) -> AliasChange:
        """Point ``name@alias`` back at its previous holder (409 when there is none)."""
        from trainyard_contracts.modelregistry import AliasChange

        body = {"expected_revision": expected_revision} if expected_revision is not None else {}
        answer = self._request("POST", f"/v1/models/{name}/aliases/{alias}/rollback", json=body).json()
        return AliasChange.model_validate(answer)

    def model_alias(self, name: str, alias: str) -> AliasView:
        """The alias's holder, its previous holders and its revision (404: not set)."""
        from trainyard_contracts.modelregistry import AliasView

        return AliasView.model_validate(self._request("GET", f"/v1/models/{name}/aliases/{alias}").json())

    def model_version(self, name: str, version: int) -> VersionInfo:
        """One version: params, metrics, commit, workdir digest, the aliases it holds."""
        from trainyard_contracts.modelregistry import VersionInfo

        return VersionInfo.model_validate(
            self._request("GET", f"/v1/models/{name}/versions/{version}").json()
        )

    def compare_models(self, name: str, first: int, second: int) -> tuple[VersionInfo, VersionInfo]:
        from trainyard_contracts.modelregistry import Comparison

        params = {"a": first, "b": second}
        found = Comparison.model_validate(
            self._request("GET", f"/v1/models/{name}/compare", params=params).json()
        )
        return found.versions[0], found.versions[1]

    def audit(
        self,
        since: datetime | None = None,
        who: str | None = None,
        model: str | None = None,
        limit: int = 100,
    ) -> builtins.list[AuditEntry]:
        """Audit entries, oldest first (the newest ``limit``): a team token reads its own."""
        from trainyard_contracts.audit import AuditEntry

        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = since.isoformat()
        if who is not None:
            params["who"] = who
        if model is not None:
            params["model"] = model
        rows = self._request("GET", "/v1/audit", params=params).json()["entries"]
        return [AuditEntry.model_validate(row) for row in rows]

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


def _array_status(data: dict[str, Any]) -> ArrayStatus:
    from trainyard_contracts.arrayview import ArrayStatus

    if data.get("kind") != "array":
        raise ValueError("the API answered with a job, not an array: the spec has no array field")
    return ArrayStatus.model_validate({k: v for k, v in data.items() if k != "kind"})
