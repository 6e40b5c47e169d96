"""``trainyard models promote | rollback | show | compare`` and ``trainyard audit`` against the real
API (uvicorn on 127.0.0.1), the registry service and a real MLflow store; the CLI runs in a
thread, as a user's terminal would. ``--if-better`` is the pipeline step's promotion."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from services.registry.tests.modelstack import ADMIN_TOKEN
from trainyard_client.cli import app as cli_app

pytestmark = [pytest.mark.service, pytest.mark.registry]


async def trainyard(url: str, *args: str, token: str = ADMIN_TOKEN):
    return await asyncio.to_thread(CliRunner().invoke, cli_app, ["--url", url, "--token", token, *args])


async def test_promote_show_rollback_from_the_cli(stack) -> None:
    async with stack as s, s.served() as url:
        v1 = await s.register("cli-model", {"accuracy": 0.9}, C="1.0")
        v2 = await s.register("cli-model", {"accuracy": 0.93}, C="0.5")
        first = await trainyard(url, "models", "promote", "cli-model", str(v1), "--alias", "production")
        assert first.exit_code == 0, first.output
        assert "promoted cli-model@production: unset -> v1" in first.output
        second = await trainyard(
            url, "models", "promote", "cli-model", str(v2), "-a", "production", "-o", "json"
        )
        assert json.loads(second.stdout)["state"]["version"] == v2
        shown = await trainyard(url, "models", "show", "cli-model@production")
        assert "cli-model@production -> v2" in shown.output and "before: v1" in shown.output
        back = await trainyard(url, "models", "rollback", "cli-model", "--alias", "production", "-o", "json")
        assert back.exit_code == 0, back.output
        assert json.loads(back.stdout)["state"]["version"] == v1
        empty = await trainyard(url, "models", "rollback", "cli-model", "--alias", "production")
        assert empty.exit_code == 4 and "no previous holder" in empty.output
        version = await trainyard(url, "models", "show", "cli-model", str(v1), "-o", "json")
        assert json.loads(version.stdout)["aliases"] == ["production"]
        assert json.loads(version.stdout)["params"] == {"C": "1.0"}
        listed = await trainyard(url, "models", "-o", "json")  # the listing as before the subcommands
        assert listed.exit_code == 0, listed.output
        audit = await trainyard(url, "audit", "--model", "cli-model", "--since", "1h", "-o", "json")
        assert [e["action"] for e in json.loads(audit.stdout)] == ["model.promote"] * 2 + ["model.rollback"]
        table = await trainyard(url, "audit", "--who", "bootstrap")
        assert "model:cli-model@production" in table.output and "v2 -> v1" in table.output


async def test_if_better_promotes_only_a_better_version_and_says_why(stack) -> None:
    async with stack as s, s.served() as url:
        v1 = await s.register("gate", {"accuracy": 0.90, "loss": 0.30})
        v2 = await s.register("gate", {"accuracy": 0.92, "loss": 0.35})
        v3 = await s.register("gate", {"accuracy": 0.925, "loss": 0.20})
        step = ["models", "promote", "gate"]
        none_yet = await trainyard(url, *step, str(v1), "--if-better", "accuracy", "-o", "json")
        assert json.loads(none_yet.stdout)["changed"] is True
        assert "no current holder" in json.loads(none_yet.stdout)["reason"]
        better = await trainyard(url, *step, str(v2), "--if-better", "accuracy", "-o", "json")
        assert json.loads(better.stdout)["changed"] is True
        assert "0.92 vs 0.9 of v1" in json.loads(better.stdout)["reason"]
        # v3 is better by 0.005 only: not by the 0.01 asked
        small = await trainyard(url, *step, str(v3), "--if-better", "accuracy", "--min-delta", "0.01")
        assert small.exit_code == 0, small.output  # a pipeline step goes on
        assert "not promoted" in small.output and "is not better" in small.output
        # v2's loss is worse than v1's, but v2 holds now: v3's 0.20 beats v2's 0.35
        lower = await trainyard(url, *step, str(v3), "--if-better", "loss", "--lower-is-better", "-o", "json")
        assert json.loads(lower.stdout)["changed"] is True
        worse = await trainyard(url, *step, str(v1), "--if-better", "loss", "--lower-is-better", "-o", "json")
        answer = json.loads(worse.stdout)
        assert answer["changed"] is False and answer["state"]["version"] == v3
        missing = await trainyard(url, *step, str(v1), "--if-better", "f1")
        assert missing.exit_code == 2 and "no metric 'f1'" in " ".join(missing.output.split())
        lonely = await trainyard(url, *step, str(v1), "--lower-is-better")
        assert lonely.exit_code == 2


async def test_compare_sets_two_versions_side_by_side(stack) -> None:
    async with stack as s, s.served() as url:
        v1 = await s.register("cmp", {"accuracy": 0.9}, C="1.0", max_iter="100")
        v2 = await s.register("cmp", {"accuracy": 0.95, "f1": 0.9}, C="0.5", max_iter="100")
        found = await trainyard(url, "models", "compare", "cmp", str(v1), str(v2), "-o", "json")
        assert found.exit_code == 0, found.output
        data = json.loads(found.stdout)
        assert [v["version"] for v in data["versions"]] == [v1, v2]
        assert "params.C" in data["differs"] and "params.max_iter" not in data["differs"]
        assert {"metrics.accuracy", "metrics.f1", "git_commit", "job_id"} <= set(data["differs"])
        table = await trainyard(url, "models", "compare", "cmp", str(v1), str(v2))
        rows = {line.split()[1]: line for line in table.stdout.splitlines()}
        assert rows["params.C"].startswith("*") and "1.0" in rows["params.C"] and "0.5" in rows["params.C"]
        assert rows["params.max_iter"].startswith("=")
        assert "-" in rows["metrics.f1"] and "0.9" in rows["metrics.f1"]
        gone = await trainyard(url, "models", "compare", "cmp", str(v1), "99")
        assert gone.exit_code == 4 and "no version 99" in gone.output
