"""A workdir job with every service as its own NATS user (the deployed users and config): the API
stores the packed folder, the executor reads it back, the job prints a file from it, and the server
logged no permission violation (a missing right shows up here, not in production)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from trainyard_shared.blobs import pack_dir
from trainyard_shared.testing.helpers import eventually

from .natsconf import provisioned, secured_server, violations
from .test_nats_users_job_path import stack

pytestmark = [pytest.mark.nats_auth, pytest.mark.service, pytest.mark.local]


async def test_a_workdir_job_runs_with_every_service_as_its_own_nats_user(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "show.py").write_text("print(open('note.txt').read().strip())\n")
    (folder / "note.txt").write_text("from the packed folder\n")
    packed = pack_dir(folder)
    with secured_server(tmp_path / "store") as server:
        await provisioned(server)
        async with stack(server.url, tmp_path) as (http, _):
            url = f"/v1/workdirs/{packed.digest}"
            assert (await http.head(url)).status_code == 404
            put = await http.put(url, content=packed.archive)
            assert put.status_code == 201 and put.json()["stored"] is True
            assert (await http.head(url)).status_code == 204
            spec = {
                "name": "wd",
                "command": [sys.executable, "show.py"],
                "workdir": {"digest": packed.digest},
            }
            submitted = await http.post("/v1/jobs", json=spec)
            assert submitted.status_code == 201, submitted.text
            job_id = submitted.json()["job_id"]

            async def ended():
                record = (await http.get(f"/v1/jobs/{job_id}")).json()
                return record if record["state"] in ("succeeded", "failed") else None

            record = await eventually(ended, 60, "the workdir job ending")
            logs = (await http.get(f"/v1/jobs/{job_id}/logs")).text
            assert record["state"] == "succeeded", (record.get("reason"), logs)
            assert "from the packed folder" in logs
        refused = violations(server)
    assert not refused, "a service was refused by NATS:\n" + "\n".join(refused)
