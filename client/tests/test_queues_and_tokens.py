"""``trainyard queues`` and ``trainyard tokens`` (CLI and SDK) against the REAL submission service.

The service runs under uvicorn on a free 127.0.0.1 port, on the session's real nats-server, with
its bootstrap token as the admin token.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from typer.testing import CliRunner

from trainyard_client.cli import app
from trainyard_client.sdk import TrainyardClient, TrainyardError
from trainyard_contracts import QueueConfig, Quota
from trainyard_shared.natsserver import free_port
from trainyard_shared.settings import CommonSettings
from trainyard_submission.app import create_app
from trainyard_submission.settings import SubmissionSettings

pytestmark = pytest.mark.service

ADMIN = "admin-bootstrap-token-for-tests"
runner = CliRunner()


@pytest.fixture
def live_api(nats_server, prefix, tmp_path) -> Iterator[str]:
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "d")
    service = create_app(common, SubmissionSettings(token=ADMIN))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(service, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="submission-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the submission service did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)


def cli(url: str, token: str, *args: str):
    return runner.invoke(app, ["--url", url, "--token", token, *args])


def test_sdk_manages_queues_and_tokens_and_a_team_token_is_refused_admin_calls(live_api):
    with TrainyardClient(live_api, ADMIN) as admin:
        assert [(q.config.name, q.revision) for q in admin.queues()] == [("default", 0)]
        config = QueueConfig(name="vision", weight=3, quota=Quota(cpu=8, gpu=1), allow_shell=False)
        created = admin.set_queue(config, if_revision=0)
        assert created.revision > 0 and created.config == config
        with pytest.raises(TrainyardError) as stale:
            admin.set_queue(config, if_revision=0)
        assert stale.value.status == 412
        got = admin.get_queue("vision")
        assert got is not None and got.config.quota.gpu == 1
        assert admin.get_queue("nothing") is None

        made = admin.create_token(team="vision", description="vision CI")
        assert made.token and made.token.startswith("ty_") and made.team == "vision"
        listed = admin.tokens()
        assert [(t.token_id, t.team, t.token) for t in listed] == [(made.token_id, "vision", None)]

        with TrainyardClient(live_api, made.token) as team:
            assert [q.config.name for q in team.queues()] == ["default", "vision"]
            with pytest.raises(TrainyardError) as refused:
                team.set_queue(QueueConfig(name="vision", weight=100))
            assert refused.value.status == 403 and "only an admin token" in refused.value.detail
            job = team.submit({"name": "mine", "command": ["true"]})
            assert job.job.spec.queue == "vision"
            with pytest.raises(TrainyardError) as shell:
                team.submit({"name": "sh", "command": ["echo hi"], "shell": True})
            assert shell.value.status == 403 and shell.value.errors[0].field == "shell"

            admin.revoke_token(made.token_id)
            with pytest.raises(TrainyardError) as gone:
                team.queues()
            assert gone.value.status == 401
        admin.delete_queue("vision")
        assert admin.get_queue("vision") is None


def test_cli_queues_set_merges_options_and_lists_a_table(live_api, wide_consoles):
    first = cli(
        live_api, ADMIN, "queues", "set", "vision", "--weight", "3", "--cpu", "8", "--memory", "16Gi",
        "--gpu", "1", "--cohort", "research", "--borrow-cpu", "4", "--no-allow-shell", "--allow-root",
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    # only --weight given: the quota and the rest keep their values (read, change, compare-and-set)
    second = cli(live_api, ADMIN, "queues", "set", "vision", "--weight", "5")
    assert second.exit_code == 0, second.output
    with TrainyardClient(live_api, ADMIN) as admin:
        stored = admin.get_queue("vision")
    assert stored is not None
    assert stored.config.weight == 5 and stored.config.quota == Quota(cpu=8, memory=16384, gpu=1)
    assert stored.config.cohort == "research" and stored.config.borrowing_limit.cpu == 4
    assert stored.config.allow_shell is False and stored.config.allow_root is True

    # the built-in default queue keeps its own defaults (shell allowed, unlimited borrowing)
    assert cli(live_api, ADMIN, "queues", "set", "default", "--cpu", "unlimited").exit_code == 0

    listed = cli(live_api, ADMIN, "queues", "list")
    assert listed.exit_code == 0, listed.output
    # piped: plain aligned columns, a header line then one line a queue
    header, *lines = listed.output.splitlines()
    assert header.split()[:2] == ["QUEUE", "WEIGHT"] and "│" not in listed.output
    rows = {line.split()[0]: line for line in lines}
    assert "16Gi" in rows["vision"] and "research" in rows["vision"] and " no " in rows["vision"]
    assert " yes " in rows["default"]

    bad = cli(live_api, ADMIN, "queues", "set", "vision", "--cpu", "lots")
    assert bad.exit_code == 2 and "--cpu" in bad.output
    invalid = cli(live_api, ADMIN, "queues", "set", "vision", "--weight", "-1")
    assert invalid.exit_code == 2 and "weight" in invalid.output
    assert cli(live_api, ADMIN, "queues", "delete", "vision").exit_code == 0
    assert cli(live_api, ADMIN, "queues", "delete", "vision").exit_code == 4


def test_cli_tokens_create_list_revoke(live_api, wide_consoles):
    unknown = cli(live_api, ADMIN, "tokens", "create", "--team", "alpha")
    assert unknown.exit_code == 2 and "unknown queue 'alpha'" in unknown.output, unknown.output
    assert cli(live_api, ADMIN, "queues", "set", "alpha").exit_code == 0
    created = cli(live_api, ADMIN, "tokens", "create", "--team", "alpha", "--description", "alpha CI")
    assert created.exit_code == 0, created.output
    token = next(line for line in created.output.splitlines() if line.startswith("ty_"))
    token_id = token.split("_")[1]

    listed = cli(live_api, ADMIN, "tokens", "list")
    assert listed.exit_code == 0 and token_id in listed.output and "alpha CI" in listed.output
    assert token not in listed.output

    refused = cli(live_api, token, "queues", "set", "alpha", "--weight", "9")
    assert refused.exit_code == 4 and "403 forbidden" in refused.output
    assert cli(live_api, token, "tokens", "list").exit_code == 4
    assert cli(live_api, ADMIN, "tokens", "create").exit_code == 2  # neither --team nor --admin

    assert cli(live_api, ADMIN, "tokens", "revoke", token_id).exit_code == 0
    gone = cli(live_api, token, "status")
    assert gone.exit_code == 4 and "401" in gone.output


def test_queues_and_tokens_list_as_the_api_records(live_api):
    assert cli(live_api, ADMIN, "queues", "set", "vision", "--weight", "2", "-o", "json").exit_code == 0
    listed = cli(live_api, ADMIN, "queues", "list", "-o", "json")
    assert listed.exit_code == 0, listed.output
    by_name = {row["name"]: row for row in json.loads(listed.stdout)}
    assert by_name["vision"]["weight"] == 2 and by_name["vision"]["revision"] > 0
    assert sorted(cli(live_api, ADMIN, "queues", "list", "-o", "name").stdout.split()) == sorted(by_name)
    assert cli(live_api, ADMIN, "tokens", "create", "--team", "vision").exit_code == 0
    tokens = json.loads(cli(live_api, ADMIN, "tokens", "list", "-o", "json").stdout)
    assert "vision" in {t["team"] for t in tokens} and all(t.get("token") is None for t in tokens)


def test_status_filters_by_label_name_and_state_on_the_server(live_api):
    with TrainyardClient(live_api, ADMIN) as admin:
        ids = {
            (name, sweep): admin.submit(
                {"name": name, "command": ["true"], "labels": {"sweep": sweep, "owner": "ana"}}
            ).job_id
            for name, sweep in (("a", "lr"), ("b", "lr"), ("c", "bs"))
        }

    def listed(*args: str) -> set[str]:
        result = cli(live_api, ADMIN, "status", "-o", "json", *args)
        assert result.exit_code == 0, result.output
        return {row["job_id"] for row in json.loads(result.stdout)}

    assert listed("-l", "sweep=lr") == {ids["a", "lr"], ids["b", "lr"]}
    assert listed("-l", "sweep=lr,owner=ana", "--name", "b") == {ids["b", "lr"]}
    assert listed("-l", "sweep=lr", "-l", "owner=bob") == set()
    assert len(listed()) == 3

    def in_order(*args: str) -> list[str]:
        return [
            row["job_id"] for row in json.loads(cli(live_api, ADMIN, "status", "-o", "json", *args).stdout)
        ]

    submitted = [ids["a", "lr"], ids["b", "lr"], ids["c", "bs"]]
    assert in_order("--oldest", "--limit", "2") == submitted[:2]
    assert in_order("--limit", "2") == submitted[::-1][:2]
    with TrainyardClient(live_api, ADMIN) as admin:  # the SDK pages with the API's cursor
        assert [j.job_id for j in admin.each(page_size=1)] == submitted[::-1]
        assert [j.job_id for j in admin.each(oldest_first=True, page_size=2)] == submitted
        assert [j.job_id for j in admin.list(limit=1, oldest_first=True)] == submitted[:1]
    (row,) = json.loads(cli(live_api, ADMIN, "status", "-o", "json", "-l", "sweep=bs").stdout)
    assert row["labels"] == {"sweep": "bs", "owner": "ana"}
    assert listed("--state", row["state"], "-l", "sweep=bs") == {ids["c", "bs"]}
    assert listed("--state", "succeeded") == set()
    bad = cli(live_api, ADMIN, "status", "-l", "sweep")
    assert bad.exit_code == 2 and "key=value" in bad.output
    with TrainyardClient(live_api, ADMIN) as admin, pytest.raises(TrainyardError) as refused:
        admin._request("GET", "/v1/jobs", params={"label": "nokey"})
    assert refused.value.status == 422 and "key=value" in refused.value.detail


def test_cli_queues_set_metric_names_narrows_and_clears(live_api):
    narrowed = cli(live_api, ADMIN, "queues", "set", "vision", "--metric-names", "loss, eval/*", "-o", "json")
    assert narrowed.exit_code == 0, narrowed.output
    with TrainyardClient(live_api, ADMIN) as admin:
        assert admin.get_queue("vision").config.metric_names == ["loss", "eval/*"]  # type: ignore[union-attr]
    bad = cli(live_api, ADMIN, "queues", "set", "vision", "--metric-names", "loss rate")
    assert bad.exit_code == 2 and "metric_names" in bad.output
    assert cli(live_api, ADMIN, "queues", "set", "vision", "--metric-names", "").exit_code == 0
    with TrainyardClient(live_api, ADMIN) as admin:
        assert admin.get_queue("vision").config.metric_names is None  # type: ignore[union-attr]
