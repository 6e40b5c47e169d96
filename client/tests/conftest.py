"""A stand-in for the submission service's HTTP API, for the SDK and CLI tests.

``FakeApi`` is a real HTTP server (stdlib ``ThreadingHTTPServer`` on a free 127.0.0.1 port) that
answers with the shapes the submission service documents: it is NOT the real service (that one is
tested in services/submission/tests and end to end by the stack test). It records every request,
so tests can check what the client sent (auth header, content type, query, body).

Each ``GET /v1/jobs/{id}`` moves a job one step along its ``script`` (queued, scheduled, running,
then its final state), and the model appears one read after success: a client that polls sees
every state in order without the test sleeping.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from rich.console import Console

from trainyard_contracts import JobRecord, JobState, ModelRef, ModelVersionRecord, SpecError, lifecycle
from trainyard_contracts._time import utcnow
from trainyard_contracts.spec import parse_spec

TOKEN = "fake-token-42"
LOG_LINES = [
    {"attempt": 1, "stream": "stdout", "text": "epoch 1 loss=0.50"},
    {"attempt": 1, "stream": "stderr", "text": "warning: [not markup]"},
    {"attempt": 1, "stream": "stdout", "text": "accuracy=0.97"},
]


@dataclass
class FakeJob:
    record: JobRecord
    script: list[str]
    step: int = 0
    model_reads: int = 0


@dataclass
class FakeApi:
    url: str = ""
    token: str = TOKEN
    final_state: str = "succeeded"
    requests: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    counter: int = 0

    # the job model the fake keeps

    def add_job(self, spec_text: str) -> FakeJob:
        self.counter += 1
        job_id = f"job{self.counter:06d}fake"
        record = lifecycle.new_record(job_id, parse_spec(spec_text), utcnow(), "api")
        record = lifecycle.advance(record, JobState.QUEUED, utcnow())
        job = FakeJob(record, ["scheduled", "running", self.final_state])
        self.jobs[job_id] = job
        return job

    def read(self, job: FakeJob) -> JobRecord:
        """One GET: the next step of the job's script (then the model, one read after success)."""
        now = utcnow()
        if job.step < len(job.script):
            target = job.script[job.step]
            job.step += 1
            rec = job.record
            if target == "scheduled":
                rec = lifecycle.schedule(rec, "local-fake", now)
            elif target == "running":
                rec = lifecycle.start(rec, now)
            elif target == "succeeded":
                rec = lifecycle.finish(rec, JobState.SUCCEEDED, now, exit_code=0, reason=None)
            else:
                rec = lifecycle.finish(rec, JobState(target), now, exit_code=3, reason="exit code 3")
            job.record = rec
        elif job.record.state == JobState.SUCCEEDED and job.record.spec.outputs and job.record.model is None:
            job.model_reads += 1
            if job.model_reads >= 2:
                job.record = job.record.model_copy(update={"model": self.model_ref(job)})
        return job.record

    def model_ref(self, job: FakeJob) -> ModelRef:
        assert job.record.spec.outputs and job.record.spec.outputs.model
        return ModelRef(
            name=job.record.spec.outputs.model,
            version=3,
            run_id="run123",
            metrics={"accuracy": 0.9722},
            git_commit="0123456789abcdef0123456789abcdef01234567",
        )

    def model_versions(self, name: str | None) -> list[ModelVersionRecord]:
        versions = [
            ModelVersionRecord(
                name="digits-classifier",
                version=3,
                job_id="job000001fake",
                run_id="run123",
                model_id="m-1",
                source="runs:/run123/model",
                git_repo="/src/repo",
                git_commit="0123456789abcdef0123456789abcdef01234567",
                metrics={"accuracy": 0.9722},
                params={"C": "1.0"},
            ),
            ModelVersionRecord(name="other", version=1, job_id="job000002fake"),
        ]
        return [v for v in versions if name is None or v.name == name]


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _problem(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
            body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
            self._send(status, body, "application/problem+json")

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            api.requests.append(
                {
                    "method": method,
                    "path": parts.path,
                    "query": query,
                    "headers": dict(self.headers),
                    "body": body,
                }
            )
            if parts.path == "/healthz":
                return self._send(200, {"status": "ok"})
            if self.headers.get("Authorization") != f"Bearer {api.token}":
                return self._problem(401, "unauthorised", "send the API token")
            segments = parts.path.strip("/").split("/")
            if method == "POST" and parts.path == "/v1/jobs":
                return self._submit(body)
            if method == "GET" and parts.path == "/v1/jobs":
                return self._list(query)
            if method == "GET" and parts.path == "/v1/models":
                versions = api.model_versions(query.get("name"))
                return self._send(200, {"models": [v.model_dump(mode="json") for v in versions]})
            if len(segments) >= 3 and segments[:2] == ["v1", "jobs"]:
                job = api.jobs.get(segments[2])
                if job is None:
                    return self._problem(404, "no such job", segments[2])
                rest = segments[3:]
                if method == "GET" and not rest:
                    return self._send(200, api.read(job).model_dump(mode="json"))
                if method == "POST" and rest == ["cancel"]:
                    if job.record.state.terminal:
                        return self._problem(409, "job already finished", f"it {job.record.state.value}")
                    job.record = job.record.model_copy(update={"cancel_requested": True})
                    return self._send(202, job.record.model_dump(mode="json"))
                if method == "GET" and rest == ["logs"]:
                    return self._logs(job, query)
            return self._problem(404, "not found", parts.path)

        def _submit(self, body: bytes) -> None:
            key = self.headers.get("Idempotency-Key")
            if key and key in api.keys:
                job = api.jobs[api.keys[key]]
                return self._send(200, self._submitted(job, duplicate=True))
            try:
                spec = parse_spec(body)
            except SpecError as exc:
                errors = [e.model_dump() for e in exc.errors]
                return self._problem(422, "invalid job spec", str(exc), errors=errors)
            if spec.name == "server-rejects":  # what only the server can know: the git ref
                errors = [{"field": "source.ref", "message": "no branch or tag 'nope' in the repo"}]
                return self._problem(422, "invalid job spec", "source.ref: no such ref", errors=errors)
            job = api.add_job(body.decode())
            if key:
                api.keys[key] = job.record.job_id
            return self._send(201, self._submitted(job, duplicate=False))

        def _submitted(self, job: FakeJob, duplicate: bool) -> dict[str, Any]:
            return {
                "job_id": job.record.job_id,
                "state": job.record.state.value,
                "duplicate": duplicate,
                "job": job.record.model_dump(mode="json"),
            }

        def _list(self, query: dict[str, str]) -> None:
            rows = []
            for job in reversed(list(api.jobs.values())):
                rec = job.record
                if query.get("state") and rec.state.value != query["state"]:
                    continue
                rows.append(
                    {
                        "job_id": rec.job_id,
                        "name": rec.spec.name,
                        "queue": rec.spec.queue,
                        "state": rec.state.value,
                        "attempt": rec.attempt,
                        "executor_id": rec.executor_id,
                        "submitted_at": rec.submitted_at.isoformat(),
                        "updated_at": rec.updated_at.isoformat(),
                        "exit_code": rec.exit_code,
                        "reason": rec.reason,
                        "model": rec.model.model_dump(mode="json") if rec.model else None,
                    }
                )
            return self._send(200, {"jobs": rows[: int(query.get("limit", 100))]})

        def _logs(self, job: FakeJob, query: dict[str, str]) -> None:
            wanted = query.get("attempt")
            lines = [line for line in LOG_LINES if wanted is None or str(line["attempt"]) == wanted]
            if query.get("follow") != "true":
                text = "".join(line["text"] + "\n" for line in lines)
                return self._send(200, text.encode(), "text/plain; charset=utf-8")
            # server-sent events, written the way sse-starlette writes them (CRLF, ping comments)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(b": ping - 2024-01-01 00:00:00\r\n\r\n")
            for line in lines:
                data = json.dumps({**line, "time": utcnow().isoformat()})
                self.wfile.write(f"event: log\r\ndata: {data}\r\n\r\n".encode())
                self.wfile.flush()
            while not api.read(job).state.terminal:  # the job runs to its end while we follow
                pass
            self.wfile.write(f"event: end\r\ndata: {job.record.state.value}\r\n\r\n".encode())
            self.wfile.flush()
            self.close_connection = True

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return Handler


@pytest.fixture
def fake_api() -> Iterator[FakeApi]:
    api = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-api", daemon=True)
    thread.start()
    yield api
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL where nothing listens (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def wide_consoles(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's rich consoles, wide and colourless, so output assertions see whole lines."""
    from trainyard_client import cli

    monkeypatch.setattr(cli, "out", Console(width=200, no_color=True, highlight=False))
    monkeypatch.setattr(cli, "err", Console(width=200, no_color=True, highlight=False, stderr=True))
    monkeypatch.setattr(cli, "POLL_SECONDS", 0.0)
