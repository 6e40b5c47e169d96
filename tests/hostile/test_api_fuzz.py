"""The HTTP API fuzzed from its own OpenAPI schema with schemathesis (v4, Python API).

The real submission service runs under uvicorn on 127.0.0.1 on the session's real nats-server.
For every operation, schemathesis generates requests that fit the schema (positive) and requests
that break it (negative), sent with an admin token, a team token, a garbage token or none. Every
answer must come in time (a hang is a failure), never be a 5xx, and every error must be one
problem document: ``application/problem+json`` with type, title, status (= the HTTP status) and
detail. Bounded by ``EXAMPLES`` per operation and mode so the run stays inside ``make test``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from trainyard_shared.natsserver import free_port
from trainyard_shared.settings import CommonSettings
from trainyard_submission.app import create_app
from trainyard_submission.settings import SubmissionSettings

pytestmark = pytest.mark.service

EXAMPLES = 40
REQUEST_TIMEOUT = 15.0
ADMIN = "fuzz-admin-token"
# every schedule route asks the workflow service
SCHEDULE_OPERATIONS = [
    ("POST", "/v1/schedules"),
    ("GET", "/v1/schedules"),
    ("GET", "/v1/schedules/{name}"),
    ("DELETE", "/v1/schedules/{name}"),
    ("POST", "/v1/schedules/{name}/suspend"),
    ("POST", "/v1/schedules/{name}/resume"),
    ("POST", "/v1/schedules/{name}/backfill"),
    # and every trigger route
    ("POST", "/v1/triggers"),
    ("GET", "/v1/triggers"),
    ("GET", "/v1/triggers/{name}"),
    ("DELETE", "/v1/triggers/{name}"),
    ("POST", "/v1/triggers/{name}/suspend"),
    ("POST", "/v1/triggers/{name}/resume"),
    # and every sweep route
    ("POST", "/v1/sweeps"),
    ("GET", "/v1/sweeps"),
    ("GET", "/v1/sweeps/{name}"),
    ("POST", "/v1/sweeps/{name}/cancel"),
]
# every model route but the listing asks the registry service
MODEL_OPERATIONS = [
    ("GET", "/v1/models/{name}/versions/{version}"),
    ("GET", "/v1/models/{name}/versions/{version}/lineage"),
    ("GET", "/v1/models/{name}/aliases/{alias}"),
    ("POST", "/v1/models/{name}/aliases/{alias}"),
    ("POST", "/v1/models/{name}/aliases/{alias}/rollback"),
    ("GET", "/v1/models/{name}/compare"),
]
OPERATIONS = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("DELETE", "/v1/jobs/{job_id}"),
    ("POST", "/v1/jobs/{job_id}/cancel"),
    ("GET", "/v1/jobs/{job_id}/logs"),
    ("GET", "/v1/jobs/{job_id}/metrics"),
    ("GET", "/v1/jobs/{job_id}/why"),
    ("POST", "/v1/jobs/dry-run"),
    ("GET", "/v1/dlq"),
    ("POST", "/v1/dlq/{seq}/replay"),
    ("GET", "/v1/executors"),
    ("PUT", "/v1/workdirs/{digest}"),
    ("GET", "/v1/models"),
    *MODEL_OPERATIONS,
    ("GET", "/v1/audit"),
    ("GET", "/v1/queues"),
    ("GET", "/v1/queues/{name}"),
    ("PUT", "/v1/queues/{name}"),
    ("DELETE", "/v1/queues/{name}"),
    ("POST", "/v1/tokens"),
    ("GET", "/v1/tokens"),
    ("DELETE", "/v1/tokens/{token_id}"),
    ("POST", "/v1/pipelines"),
    ("GET", "/v1/pipelines"),
    ("GET", "/v1/pipelines/{run_id}"),
    ("POST", "/v1/pipelines/{run_id}/cancel"),
    ("POST", "/v1/pipelines/{run_id}/retry"),
    ("GET", "/v1/arrays/{array_id}"),
    ("POST", "/v1/arrays/{array_id}/cancel"),
    *SCHEDULE_OPERATIONS,
]


@dataclass
class Live:
    url: str
    schema: Any
    tokens: dict[str, str | None]


@pytest.fixture(scope="module")
def live(nats_server, tmp_path_factory) -> Iterator[Live]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    common = CommonSettings(nats_url=nats_server.url, prefix="fuzz", data_dir=data_dir, log_format="text")
    # git resolution of generated repos must not stall the run: a short timeout
    app = create_app(common, SubmissionSettings(token=ADMIN, git_timeout_seconds=2))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="fuzzed-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the submission service did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    made = httpx.post(
        f"{url}/v1/tokens", json={"team": "default"}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert made.status_code == 201, made.text
    tokens = {
        "admin": ADMIN,
        "team": made.json()["token"],
        "garbage": "ty_000000000000_" + "x" * 43,
        "none": None,
    }
    try:
        yield Live(url, schemathesis.openapi.from_url(f"{url}/openapi.json"), tokens)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


# no scheduler runs beside the fuzzed API: the questions for its leader are answered 503 (a
# problem document, checked like every other error) and nothing else may be a 5xx
NEEDS_SCHEDULER = {("GET", "/v1/jobs/{job_id}/why"), ("POST", "/v1/jobs/dry-run")}
# nor a registry service: the model routes that ask it are answered 503
NEEDS_REGISTRY = set(MODEL_OPERATIONS)
# nor a workflow service: the pipeline routes that ask it are answered 503 as well
NEEDS_WORKFLOW = {
    ("POST", "/v1/pipelines"),
    ("GET", "/v1/pipelines"),
    ("GET", "/v1/pipelines/{run_id}"),
    ("POST", "/v1/pipelines/{run_id}/cancel"),
    ("POST", "/v1/pipelines/{run_id}/retry"),
    ("GET", "/v1/arrays/{array_id}"),
    ("POST", "/v1/arrays/{array_id}/cancel"),
    *SCHEDULE_OPERATIONS,
}


def assert_one_problem_format(response: Any, label: str, allowed_5xx: frozenset[int] = frozenset()) -> None:
    status = response.status_code
    assert status < 500 or status in allowed_5xx, f"{label}: {status} {response.text[:500]}"
    if status < 400:
        return
    ctype = response.headers.get("content-type") or [""]  # schemathesis: a list per header
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    assert ctype.startswith("application/problem+json"), f"{label}: {status} {ctype!r}: {response.text[:300]}"
    body = json.loads(response.content)
    assert {"type", "title", "status", "detail"} <= set(body), f"{label}: {body}"
    assert body["status"] == status and body["title"], f"{label}: {body}"
    for error in body.get("errors", []):
        assert error.get("field") and error.get("message"), f"{label}: {body}"


def test_every_operation_of_the_schema_is_fuzzed(live):
    in_schema = {
        (method.upper(), path)
        for path, item in live.schema.raw_schema["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch")
    }
    assert in_schema == set(OPERATIONS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzzed_requests_get_an_answer_in_time_and_errors_are_problems(live, method, path, mode):
    operation = live.schema[path][method]
    seen: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), who=st.sampled_from(sorted(live.tokens)))
    def run(case: Any, who: str) -> None:
        token = live.tokens[who]
        # the token replaces whatever the generator put in Authorization (the bearer scheme)
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        case.headers = headers
        response = case.call(base_url=live.url, timeout=REQUEST_TIMEOUT)
        asks_another = NEEDS_SCHEDULER | NEEDS_WORKFLOW | NEEDS_REGISTRY
        allowed = frozenset({503}) if (method, path) in asks_another else frozenset()
        assert_one_problem_format(response, f"{method} {path} as {who} ({mode})", allowed)
        seen.append(response.status_code)

    run()
    assert seen, "no request was made"
