"""Promote, roll back, who may, racing promotions and the audit trail: the API and the registry
service on a real nats-server and a real MLflow SQLite store."""

from __future__ import annotations

import asyncio

import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.service, pytest.mark.registry]
PRODUCTION = "/v1/models/{}/aliases/production"


def mlflow_alias(stack, name: str, alias: str) -> int:
    client = MlflowClient(tracking_uri=stack.store.tracking_uri)
    return int(client.get_model_version_by_alias(name, alias).version)


async def test_promote_then_rollback_moves_the_alias_in_mlflow_and_keeps_its_history(stack) -> None:
    async with stack as s:
        v1 = await s.register("digits", {"accuracy": 0.91})
        v2 = await s.register("digits", {"accuracy": 0.95})
        first = await s.http.post("/v1/models/digits/aliases/production", json={"version": v1})
        assert first.status_code == 200, first.text
        assert first.json()["changed"] is True and first.json()["previous"] is None
        second = await s.http.post("/v1/models/digits/aliases/production", json={"version": v2})
        assert second.json()["state"]["version"] == v2
        assert [h["version"] for h in second.json()["state"]["history"]] == [v1]
        assert second.json()["previous"]["version"] == v1
        assert await asyncio.to_thread(mlflow_alias, s, "digits", "production") == v2

        back = await s.http.post("/v1/models/digits/aliases/production/rollback")
        assert back.status_code == 200, back.text
        assert back.json()["state"]["version"] == v1 and back.json()["state"]["history"] == []
        assert await asyncio.to_thread(mlflow_alias, s, "digits", "production") == v1
        shown = await s.http.get("/v1/models/digits/aliases/production")
        assert shown.json()["state"]["version"] == v1 and shown.json()["version"]["metrics"] == {
            "accuracy": 0.91
        }

        # nothing before v1: a clear refusal, and the alias stays where it is
        again = await s.http.post("/v1/models/digits/aliases/production/rollback")
        assert again.status_code == 409
        assert "no previous holder" in again.json()["detail"]
        assert await asyncio.to_thread(mlflow_alias, s, "digits", "production") == v1


async def test_rollback_of_an_alias_never_set_and_a_missing_version_are_404(stack) -> None:
    async with stack as s:
        await s.register("never", {"accuracy": 0.5})
        unset = await s.http.post("/v1/models/never/aliases/production/rollback")
        assert unset.status_code == 404 and "nothing to roll back" in unset.json()["detail"]
        missing = await s.http.post("/v1/models/never/aliases/production", json={"version": 7})
        assert missing.status_code == 404 and "no version 7" in missing.json()["detail"]
        reserved = await s.http.post("/v1/models/never/aliases/v3", json={"version": 1})
        assert reserved.status_code == 422


async def test_a_team_may_not_move_production_but_may_move_its_own_other_aliases(stack) -> None:
    async with stack as s:
        mine = await s.register("churn", {"auc": 0.8}, queue="team-a")
        theirs = await s.register("churn", {"auc": 0.9}, queue="team-b")
        token = await s.team_token("team-a")
        await s.team_token("team-b")
        async with s.as_token(token) as team:
            refused = await team.post("/v1/models/churn/aliases/production", json={"version": mine})
            assert refused.status_code == 403
            assert "admin" in refused.json()["detail"] and "production" in refused.json()["detail"]
            staged = await team.post("/v1/models/churn/aliases/staging", json={"version": mine})
            assert staged.status_code == 200, staged.text
            other = await team.post("/v1/models/churn/aliases/staging", json={"version": theirs})
            assert other.status_code == 403
        # nothing moved for the refused requests
        assert await asyncio.to_thread(mlflow_alias, s, "churn", "staging") == mine
        with pytest.raises(Exception, match="alias"):
            await asyncio.to_thread(mlflow_alias, s, "churn", "production")


async def test_two_racing_promotions_decided_on_one_revision_have_one_winner_and_one_409(stack) -> None:
    async with stack as s:
        v1 = await s.register("race", {"accuracy": 0.1})
        v2 = await s.register("race", {"accuracy": 0.2})
        v3 = await s.register("race", {"accuracy": 0.3})
        await s.http.post("/v1/models/race/aliases/production", json={"version": v1})
        seen = (await s.http.get("/v1/models/race/aliases/production")).json()["state"]["revision"]
        answers = await asyncio.gather(
            *(
                s.http.post(
                    "/v1/models/race/aliases/production", json={"version": v, "expected_revision": seen}
                )
                for v in (v2, v3)
            )
        )
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 409], [a.text for a in answers]
        winner = next(a for a in answers if a.status_code == 200).json()["state"]["version"]
        loser = next(a for a in answers if a.status_code == 409).json()
        assert "changed" in loser["detail"]
        assert await asyncio.to_thread(mlflow_alias, s, "race", "production") == winner


async def test_every_change_is_an_audit_entry_with_the_identity_that_made_it(stack) -> None:
    async with stack as s:
        v1 = await s.register("audited", {"f1": 0.5}, queue="team-a")
        v2 = await s.register("audited", {"f1": 0.6}, queue="team-a")
        token = await s.team_token("team-a")
        token_id = token.split("_")[1]
        async with s.as_token(token) as team:
            assert (
                await team.post("/v1/models/audited/aliases/staging", json={"version": v1})
            ).status_code == 200
            assert (
                await team.post("/v1/models/audited/aliases/staging", json={"version": v2})
            ).status_code == 200
        assert (await s.http.post("/v1/models/audited/aliases/staging/rollback")).status_code == 200
        entries = (await s.http.get("/v1/audit", params={"model": "audited"})).json()["entries"]
        assert [(e["action"], e["before"], e["after"]["version"]) for e in entries] == [
            ("model.promote", None, v1),
            ("model.promote", {"version": v1}, v2),
            ("model.rollback", {"version": v2}, v1),
        ]
        assert [(e["token_id"], e["team"]) for e in entries] == [
            (token_id, "team-a"),
            (token_id, "team-a"),
            ("bootstrap", None),
        ]
        assert all(e["target"] == "model:audited@staging" for e in entries)
        # a team reads its own entries only; --who narrows to one identity
        async with s.as_token(token) as team:
            own = (await team.get("/v1/audit")).json()["entries"]
        assert len(own) == 2
        by_admin = (await s.http.get("/v1/audit", params={"who": "bootstrap", "model": "audited"})).json()[
            "entries"
        ]
        assert [e["action"] for e in by_admin] == ["model.rollback"]
