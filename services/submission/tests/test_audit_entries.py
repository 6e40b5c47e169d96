"""The API's own changes (cancel, purge, queue and token changes) are audit entries with the
identity that made them, read back through GET /v1/audit (a team sees its own)."""

from __future__ import annotations

import pytest

from .conftest import AUTH

pytestmark = [pytest.mark.service, pytest.mark.registry]


async def test_cancel_queue_and_token_changes_are_audited_with_who_made_them(api) -> None:
    assert (await api.put("/v1/queues/team-a", json={"weight": 2}, headers=AUTH)).status_code == 201
    created = await api.post("/v1/tokens", json={"team": "team-a"}, headers=AUTH)
    token, token_id = created.json()["token"], created.json()["token_id"]
    team = {"Authorization": f"Bearer {token}"}
    job = await api.post("/v1/jobs", json={"name": "audited", "command": ["true"]}, headers=team)
    assert job.status_code == 201, job.text
    job_id = job.json()["job_id"]
    assert (await api.post(f"/v1/jobs/{job_id}/cancel", headers=team)).status_code == 202
    assert (await api.delete(f"/v1/tokens/{token_id}", headers=AUTH)).status_code == 204
    assert (await api.delete("/v1/queues/team-a", headers=AUTH)).status_code == 204

    entries = (await api.get("/v1/audit", headers=AUTH)).json()["entries"]
    assert [(e["action"], e["target"], e["actor"]) for e in entries] == [
        ("queue.put", "queue:team-a", "api"),
        ("token.create", f"token:{token_id}", "api"),
        ("job.cancel", f"job:{job_id}", f"api:team-a:{token_id}"),
        ("token.revoke", f"token:{token_id}", "api"),
        ("queue.delete", "queue:team-a", "api"),
    ]
    assert entries[0]["detail"] == "created" and entries[0]["after"]["weight"] == 2
    assert entries[1]["after"] == {"team": "team-a", "admin": False}
    assert entries[2]["team"] == "team-a" and entries[2]["service"] == "submission"
    assert all(token not in str(e) for e in entries)  # the token itself is never written
    by_team = (await api.get("/v1/audit", params={"who": "team-a"}, headers=AUTH)).json()["entries"]
    assert [e["action"] for e in by_team] == ["job.cancel"]
