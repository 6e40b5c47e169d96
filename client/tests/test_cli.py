"""The ``trainyard`` CLI: local validation, exit codes, and every command against ``fake_api``
(conftest: a real HTTP server standing in for the submission service)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from trainyard_client.cli import _is_local_path, age, app, resolve_source

runner = CliRunner()

BAD_SPEC = 'name: bad\ncommand: "python train.py"\nresources: {gpus: 1}\n'
GOOD_SPEC = "name: digits\ncommand: [python, train.py]\noutputs: {model: digits-classifier}\n"


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def invoke(api_url: str, *args: str, token: str = "t"):
    return runner.invoke(app, ["--url", api_url, "--token", token, *args])


@pytest.mark.unit
def test_invalid_spec_names_both_fields_and_exits_2_without_contacting_the_server(
    tmp_path, closed_port_url, wide_consoles
):
    result = invoke(closed_port_url, "submit", str(write(tmp_path, BAD_SPEC)))
    assert result.exit_code == 2, result.output
    assert "command" in result.output and "argv list" in result.output
    assert "resources.gpus" in result.output and "unknown field" in result.output
    # had it tried the server, it would have found nothing listening and exited 3
    assert "cannot reach" not in result.output


@pytest.mark.unit
def test_unparseable_document_exits_2(tmp_path, closed_port_url, wide_consoles):
    result = invoke(closed_port_url, "submit", str(write(tmp_path, "name: [unclosed\n")))
    assert result.exit_code == 2
    assert "(document)" in result.output and "not valid YAML" in result.output


@pytest.mark.unit
def test_unreachable_server_exits_3_with_a_clear_message(tmp_path, closed_port_url, wide_consoles):
    result = invoke(closed_port_url, "submit", str(write(tmp_path, GOOD_SPEC)))
    assert result.exit_code == 3, result.output
    assert f"cannot reach Trainyard at {closed_port_url}" in result.output
    assert "trainyard up" in result.output
    assert invoke(closed_port_url, "status").exit_code == 3


@pytest.mark.service
def test_submit_prints_the_job_id_and_makes_a_relative_repo_absolute(tmp_path, fake_api, wide_consoles):
    spec = GOOD_SPEC + "source: {repo: ../.., ref: main}\n"
    path = write(tmp_path, spec, "examples/digits/job.yaml")
    result = invoke(fake_api.url, "submit", str(path), token=fake_api.token)
    assert result.exit_code == 0, result.output
    (job_id,) = fake_api.jobs
    assert job_id in result.output
    assert f"{fake_api.url}/ui/jobs/{job_id}" in result.output  # the job's page in the web UI
    sent = yaml.safe_load(fake_api.requests[-1]["body"])
    assert sent["source"] == {"repo": str(tmp_path.resolve()), "ref": "main"}
    assert sent["command"] == ["python", "train.py"]


@pytest.mark.service
def test_submit_quiet_prints_only_the_id_and_forwards_the_idempotency_key(tmp_path, fake_api):
    path = str(write(tmp_path, GOOD_SPEC))
    result = invoke(fake_api.url, "submit", "-q", "--idempotency-key", "k9", path, token=fake_api.token)
    assert result.exit_code == 0
    (job_id,) = fake_api.jobs
    assert result.stdout.strip() == job_id
    assert fake_api.requests[-1]["headers"]["Idempotency-Key"] == "k9"
    assert fake_api.requests[-1]["body"] == GOOD_SPEC.encode()  # unchanged spec goes as written


@pytest.mark.service
def test_server_422_prints_the_field_table_and_exits_2(tmp_path, fake_api, wide_consoles):
    path = write(tmp_path, "name: server-rejects\ncommand: [x]\nsource: {repo: /r, ref: nope}\n")
    result = invoke(fake_api.url, "submit", str(path), token=fake_api.token)
    assert result.exit_code == 2, result.output
    assert "source.ref" in result.output and "no branch or tag" in result.output


@pytest.mark.service
def test_wrong_token_exits_4(tmp_path, fake_api, wide_consoles):
    result = invoke(fake_api.url, "submit", str(write(tmp_path, GOOD_SPEC)), token="nope")
    assert result.exit_code == 4
    assert "401" in result.output and "unauthorised" in result.output


@pytest.mark.service
def test_submit_wait_shows_states_logs_result_and_model(tmp_path, fake_api, wide_consoles):
    result = invoke(fake_api.url, "submit", "--wait", str(write(tmp_path, GOOD_SPEC)), token=fake_api.token)
    assert result.exit_code == 0, result.output
    out = result.output
    order = ["queued", "scheduled", "running", "epoch 1 loss=0.50", "accuracy=0.97", "succeeded"]
    positions = [out.index(word) for word in order]
    assert positions == sorted(positions), out
    assert "warning: [not markup]" in out  # log text is printed verbatim, never as markup
    assert "exit code 0" in out
    assert "model digits-classifier version 3" in out
    assert "accuracy" in out and "0.9722" in out


@pytest.mark.service
@pytest.mark.parametrize("final", ["failed", "timed_out", "cancelled"])
def test_submit_wait_exits_1_when_the_job_does_not_succeed(tmp_path, fake_api, wide_consoles, final):
    fake_api.final_state = final
    result = invoke(fake_api.url, "submit", "-w", str(write(tmp_path, GOOD_SPEC)), token=fake_api.token)
    assert result.exit_code == 1, result.output
    assert final in result.output
    assert "digits-classifier version" not in result.output


@pytest.mark.service
def test_status_list_and_one_job(tmp_path, fake_api, wide_consoles):
    path = str(write(tmp_path, GOOD_SPEC))
    assert invoke(fake_api.url, "submit", "--wait", path, token=fake_api.token).exit_code == 0
    (job_id,) = fake_api.jobs
    listing = invoke(fake_api.url, "status", token=fake_api.token)
    assert listing.exit_code == 0
    row = next(line for line in listing.output.splitlines() if job_id in line)
    assert "digits" in row and "succeeded" in row and "digits-classifier v3" in row

    detail = invoke(fake_api.url, "status", job_id, token=fake_api.token)
    assert detail.exit_code == 0, detail.output
    assert "attempts" in detail.output and "local-fake" in detail.output
    assert f"{fake_api.url}/ui/jobs/{job_id}" in detail.output
    assert "digits-classifier version 3" in detail.output and "accuracy=0.9722" in detail.output

    missing = invoke(fake_api.url, "status", "nosuchjob1", token=fake_api.token)
    assert missing.exit_code == 4 and "no such job" in missing.output
    assert invoke(fake_api.url, "status", "--state", "bogus", token=fake_api.token).exit_code == 2


@pytest.mark.service
def test_logs_cancel_and_models(tmp_path, fake_api, wide_consoles):
    submitted = invoke(fake_api.url, "submit", "-q", str(write(tmp_path, GOOD_SPEC)), token=fake_api.token)
    job_id = submitted.stdout.strip()

    logs = invoke(fake_api.url, "logs", job_id, "--attempt", "1", token=fake_api.token)
    assert logs.exit_code == 0 and logs.stdout.splitlines()[0] == "epoch 1 loss=0.50"

    cancelled = invoke(fake_api.url, "cancel", job_id, token=fake_api.token)
    assert cancelled.exit_code == 0 and f"cancel requested for {job_id}" in cancelled.output

    followed = invoke(fake_api.url, "logs", "-f", job_id, token=fake_api.token)
    assert followed.exit_code == 0
    assert "accuracy=0.97" in followed.stdout and "ended: succeeded" in followed.output

    again = invoke(fake_api.url, "cancel", job_id, token=fake_api.token)
    assert again.exit_code == 4 and "409" in again.output

    models = invoke(fake_api.url, "models", "digits-classifier", token=fake_api.token)
    assert models.exit_code == 0
    row = next(line for line in models.output.splitlines() if "digits-classifier" in line)
    assert "job000001fake" in row and "0123456789" in row and "accuracy=0.9722" in row
    assert "0123456789abcdef0123" not in row  # the commit is shortened
    none = invoke(fake_api.url, "models", "nope", token=fake_api.token)
    assert none.exit_code == 4 and "no registered versions of nope" in none.output
    beyond = invoke(fake_api.url, "logs", job_id, "--attempt", "2", token=fake_api.token)
    assert beyond.exit_code == 4 and "has 1 attempt(s)" in beyond.output


@pytest.mark.unit
def test_up_without_the_stack_extra_says_what_to_install(monkeypatch, wide_consoles):
    from trainyard_client import stack

    monkeypatch.setattr(stack, "missing_packages", lambda: ["trainyard_scheduler"])
    result = runner.invoke(app, ["up", "--data-dir", "/nonexistent/never-created"])
    assert result.exit_code == 1
    assert "install trainyard-client[stack]" in result.output
    assert not Path("/nonexistent/never-created").exists()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("repo", "local"),
    [
        ("../..", True),
        (".", True),
        ("repo", True),
        ("/abs/repo", True),
        ("~/code/repo", True),
        ("https://github.com/org/repo.git", False),
        ("git@github.com:org/repo.git", False),
        ("github.com:org/repo", False),
        ("file:///srv/repo", False),
        ("./dir:with-colon", True),
    ],
)
def test_is_local_path(repo, local):
    assert _is_local_path(repo) is local


@pytest.mark.unit
def test_resolve_source(tmp_path):
    data = {"source": {"repo": "../.."}}
    assert resolve_source(data, tmp_path / "a" / "b")
    assert data["source"]["repo"] == str(tmp_path.resolve())
    others = ({"source": {"repo": "/abs"}}, {"source": {"repo": "https://x/y.git"}}, {}, {"source": 3})
    for unchanged in others:
        before = repr(unchanged)
        assert not resolve_source(unchanged, tmp_path)
        assert repr(unchanged) == before


@pytest.mark.unit
def test_age():
    from datetime import UTC, datetime, timedelta

    now = datetime(2025, 1, 2, tzinfo=UTC)
    assert age(now - timedelta(seconds=5), now) == "5s"
    assert age(now - timedelta(minutes=3, seconds=5), now) == "3m"
    assert age(now - timedelta(hours=2), now) == "2h"
    assert age(now - timedelta(days=4), now) == "4d"
    assert age(None, now) == "-"


@pytest.mark.service
def test_every_listing_speaks_json_yaml_and_name_and_pipes_as_plain_columns(tmp_path, fake_api):
    long_name = "digits-" + "x" * 50  # with the other columns, wider than 80: still one line piped
    path = str(write(tmp_path, GOOD_SPEC.replace("name: digits", f"name: {long_name}")))
    assert invoke(fake_api.url, "submit", "--wait", path, token=fake_api.token).exit_code == 0
    (job_id,) = fake_api.jobs

    as_json = invoke(fake_api.url, "status", "-o", "json", token=fake_api.token)
    assert as_json.exit_code == 0, as_json.output
    (row,) = json.loads(as_json.stdout)
    assert row["job_id"] == job_id and row["state"] == "succeeded" and row["name"] == long_name
    one = json.loads(invoke(fake_api.url, "status", job_id, "-o", "json", token=fake_api.token).stdout)
    assert one["job_id"] == job_id and one["spec"]["name"] == long_name and one["attempts"]
    as_yaml = yaml.safe_load(invoke(fake_api.url, "status", "-o", "yaml", token=fake_api.token).stdout)
    assert as_yaml[0]["job_id"] == job_id
    assert invoke(fake_api.url, "status", "-o", "name", token=fake_api.token).stdout == f"{job_id}\n"

    table = invoke(fake_api.url, "status", token=fake_api.token).stdout.splitlines()
    assert table[0].split() == ["JOB", "NAME", "QUEUE", "STATE", "ATTEMPT", "AGE", "EXIT", "MODEL", "REASON"]
    assert len(table) == 2 and len(table[1]) > 80 and long_name in table[1]
    assert table[1].split()[3] == "succeeded"
    wide = invoke(fake_api.url, "status", "-o", "wide", token=fake_api.token).stdout.splitlines()
    assert "EXECUTOR" in wide[0].split() and "local-fake" in wide[1]

    models = invoke(fake_api.url, "models", "-o", "json", token=fake_api.token)
    versions = json.loads(models.stdout)
    assert {v["name"] for v in versions} >= {"digits-classifier"}
    assert all(isinstance(v["version"], int) and "metrics" in v for v in versions)
    names = invoke(fake_api.url, "models", "-o", "name", token=fake_api.token).stdout.split()
    assert names == [f"{v['name']}/{v['version']}" for v in versions]
    bad = invoke(fake_api.url, "status", "-o", "xml", token=fake_api.token)
    assert bad.exit_code == 2 and "xml" in bad.output


@pytest.mark.service
def test_url_and_token_work_after_the_subcommand_too(fake_api, closed_port_url):
    later = runner.invoke(app, ["status", "-o", "json", "--url", fake_api.url, "--token", fake_api.token])
    assert later.exit_code == 0, later.output
    assert json.loads(later.stdout) == []
    equals = runner.invoke(app, ["status", f"--url={closed_port_url}"])
    assert equals.exit_code == 3 and closed_port_url in equals.output


@pytest.mark.unit
def test_a_table_on_a_terminal_fits_its_width_and_piped_keeps_whole_rows(monkeypatch, capsys):
    from rich.console import Console

    from trainyard_client import cli
    from trainyard_client.cli.output import Column, Output, emit

    rows = [{"id": "a1", "text": "word " * 30}]
    columns = [Column("id", lambda r: r["id"]), Column("text", lambda r: r["text"], wrap=True)]
    monkeypatch.setattr(cli, "out", Console(width=60, force_terminal=True, color_system=None))
    emit(rows, columns, Output.TABLE, name=lambda r: r["id"], empty="none")
    boxed = capsys.readouterr().out.splitlines()
    assert "│" in boxed[3] and max(len(line) for line in boxed) <= 60 and len(boxed) > 4
    monkeypatch.setattr(cli, "out", Console(width=60, no_color=True))  # piped
    emit(rows, columns, Output.TABLE, name=lambda r: r["id"], empty="none")
    plain = capsys.readouterr().out.splitlines()
    assert plain == ["ID  TEXT", "a1  " + ("word " * 30).strip()]


@pytest.mark.service
def test_a_failed_wait_says_the_exit_code_once_and_quiet_wait_prints_only_the_id(
    tmp_path, fake_api, wide_consoles
):
    fake_api.final_state = "failed"
    path = str(write(tmp_path, GOOD_SPEC))
    loud = invoke(fake_api.url, "submit", "--wait", path, token=fake_api.token)
    assert loud.exit_code == 1
    (summary,) = [line for line in loud.output.splitlines() if line.startswith("job ") and "failed" in line]
    assert summary.endswith("failed, exit code 3"), summary  # not "exit code 3: exit code 3"
    quiet = invoke(fake_api.url, "submit", "-q", "--wait", path, token=fake_api.token)
    assert quiet.exit_code == 1
    assert len(quiet.stdout.splitlines()) == 1 and quiet.stdout.strip() in fake_api.jobs


@pytest.mark.service
def test_status_finds_the_token_file_of_the_stack_like_every_other_command(tmp_path, fake_api, monkeypatch):
    (tmp_path / "api-token").write_text(fake_api.token + "\n")
    monkeypatch.delenv("TRAINYARD_TOKEN", raising=False)
    monkeypatch.setenv("TRAINYARD_DATA_DIR", str(tmp_path))
    listed = runner.invoke(app, ["--url", fake_api.url, "status", "-o", "json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == []
