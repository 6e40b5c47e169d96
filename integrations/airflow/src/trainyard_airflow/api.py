"""Trainyard's HTTP API as the provider uses it: plain httpx, sync (operators, sensor) and async
(triggers), and nothing of Airflow, so it is tested without a scheduler.

The provider talks HTTP rather than importing ``trainyard_client``: the SDK depends on the
workspace's shared library (faststream, nats-py, OpenTelemetry), whose pins need not agree with
Airflow's, and an Airflow worker should not carry the services' dependencies (docs/airflow.md).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

# the job states that end a job, and the pipeline run states that end a run (trainyard_contracts)
JOB_TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out", "rejected"})
RUN_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
USER_AGENT = "airflow-provider-trainyard/0.1"


class TrainyardApiError(Exception):
    """The API answered with an error (a problem document); ``status`` is the HTTP status."""

    def __init__(self, status: int, title: str, detail: str = "") -> None:
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))
        self.status, self.title, self.detail = status, title, detail


@dataclass(frozen=True)
class ApiSettings:
    """Where the API is and the token to show it (an ``Authorization: Bearer`` header)."""

    url: str
    token: str | None = None
    timeout: float = 30.0

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def client_options(self) -> dict[str, Any]:
        return {"base_url": self.url.rstrip("/"), "headers": self.headers(), "timeout": self.timeout}

    def job_page(self, job_id: str) -> str:
        """The job's page in the web UI (docs/ui.md)."""
        return f"{self.url.rstrip('/')}/ui/jobs/{job_id}"

    def pipeline_page(self, run_id: str) -> str:
        """The web UI's jobs page filtered to the run's jobs (their ``pipeline-run`` label)."""
        selector = quote(f"trainyard.dev/pipeline-run={run_id}", safe="")
        return f"{self.url.rstrip('/')}/ui/jobs?label={selector}"


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    title, detail = response.reason_phrase, ""
    try:
        problem = response.json()
        title, detail = str(problem.get("title", title)), str(problem.get("detail") or "")
    except (ValueError, AttributeError):
        detail = response.text[:500]
    raise TrainyardApiError(response.status_code, title, detail)


def spec_body(spec: str | bytes | Mapping[str, Any]) -> tuple[bytes, str]:
    """A job spec as the API takes it: a mapping as JSON, text as it is (YAML or JSON)."""
    if isinstance(spec, Mapping):
        return json.dumps(dict(spec)).encode(), "application/json"
    raw = spec.encode() if isinstance(spec, str) else bytes(spec)
    return raw, "application/json" if raw.lstrip().startswith(b"{") else "application/yaml"


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from server-sent-event lines (comments and ids ignored)."""
    parser = _SseParser()
    for line in lines:
        yield from parser.feed(line)
    yield from parser.close()


class _SseParser:
    """Server-sent events, line by line (the same for the sync and the async reader)."""

    def __init__(self) -> None:
        self.event, self.data = "", list[str]()

    def feed(self, raw: str) -> list[tuple[str, str]]:
        line = raw.rstrip("\r\n")
        if not line:
            return self.close()
        if not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "event":
                self.event = value.removeprefix(" ")
            elif name == "data":
                self.data.append(value.removeprefix(" "))
        return []

    def close(self) -> list[tuple[str, str]]:
        done = [(self.event or "message", "\n".join(self.data))] if self.data or self.event else []
        self.event, self.data = "", []
        return done


def log_line(data: str) -> str:
    """The text of one ``log`` event of a followed log (``{"attempt", "stream", "text", "time"}``)."""
    try:
        item = json.loads(data)
    except ValueError:
        return data
    return f"[attempt {item.get('attempt')} {item.get('stream')}] {item.get('text', '')}"


class TrainyardApi:
    """The synchronous calls (a worker running an operator's ``execute`` or ``on_kill``)."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self._http = httpx.Client(**settings.client_options())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TrainyardApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response.json()

    def submit_job(
        self, spec: str | bytes | Mapping[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/jobs``: the answer's ``job`` record (``duplicate`` when the key was seen)."""
        body, content_type = spec_body(spec)
        headers = {"Content-Type": content_type}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        answer = self._request("POST", "/v1/jobs", content=body, headers=headers)
        return {**answer["job"], "duplicate": bool(answer.get("duplicate", False))}

    def get_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/jobs/{job_id}"))

    def cancel_job(self, job_id: str) -> bool:
        """Ask for the job's cancellation; False when it had already finished (409)."""
        try:
            self._request("POST", f"/v1/jobs/{job_id}/cancel")
        except TrainyardApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def job_logs(self, job_id: str) -> str:
        response = self._http.get(f"/v1/jobs/{job_id}/logs", params={"follow": "false"})
        _raise_for(response)
        return response.text

    def follow_logs(self, job_id: str) -> Iterator[tuple[str, str]]:
        """The job's log as server-sent events until it ends: ``("log", json)``... ``("end", state)``."""
        timeout = httpx.Timeout(self.settings.timeout, read=None)  # the server pings every 15 s
        params, headers = {"follow": "true"}, {"Accept": "text/event-stream"}
        path = f"/v1/jobs/{job_id}/logs"
        with self._http.stream("GET", path, params=params, headers=headers, timeout=timeout) as response:
            if not response.is_success:
                response.read()
                _raise_for(response)
            yield from parse_sse(response.iter_lines())

    def run_pipeline(self, pipeline: Mapping[str, Any], params: Mapping[str, Any] | None) -> dict[str, Any]:
        body = {"pipeline": dict(pipeline), "params": dict(params or {})}
        return dict(self._request("POST", "/v1/pipelines", json=body))

    def get_pipeline(self, run_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/pipelines/{run_id}"))

    def cancel_pipeline(self, run_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/pipelines/{run_id}/cancel"))

    def models(self, name: str) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/models", params={"name": name}).get("models", []))


class AsyncTrainyardApi:
    """The asynchronous calls (a trigger in the triggerer's event loop)."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self._http = httpx.AsyncClient(**settings.client_options())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncTrainyardApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response.json()

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return dict(await self._request("GET", f"/v1/jobs/{job_id}"))

    async def cancel_job(self, job_id: str) -> bool:
        try:
            await self._request("POST", f"/v1/jobs/{job_id}/cancel")
        except TrainyardApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def follow_logs(self, job_id: str) -> AsyncIterator[tuple[str, str]]:
        timeout = httpx.Timeout(self.settings.timeout, read=None)
        params, headers = {"follow": "true"}, {"Accept": "text/event-stream"}
        path = f"/v1/jobs/{job_id}/logs"
        async with self._http.stream(
            "GET", path, params=params, headers=headers, timeout=timeout
        ) as response:
            if not response.is_success:
                await response.aread()
                _raise_for(response)
            parser = _SseParser()
            async for line in response.aiter_lines():
                for event in parser.feed(line):
                    yield event
            for event in parser.close():
                yield event

    async def get_pipeline(self, run_id: str) -> dict[str, Any]:
        return dict(await self._request("GET", f"/v1/pipelines/{run_id}"))

    async def cancel_pipeline(self, run_id: str) -> dict[str, Any]:
        return dict(await self._request("POST", f"/v1/pipelines/{run_id}/cancel"))

    async def models(self, name: str) -> list[dict[str, Any]]:
        answer = await self._request("GET", "/v1/models", params={"name": name})
        return list(answer.get("models", []))


def job_outcome(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a trigger hands back to the task about a job that ended (JSON-serialisable)."""
    return {
        "kind": "job",
        "job_id": record["job_id"],
        "state": record["state"],
        "attempt": record.get("attempt"),
        "exit_code": record.get("exit_code"),
        "reason": record.get("reason"),
        "model": record.get("model"),
    }


def pipeline_outcome(run: Mapping[str, Any]) -> dict[str, Any]:
    steps = run.get("steps") or {}
    return {
        "kind": "pipeline",
        "run_id": run["run_id"],
        "state": run["state"],
        "steps": {name: step.get("state") for name, step in steps.items()},
    }
