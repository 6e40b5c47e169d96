"""``workdir:``: the folder as the user sees it (uncommitted edit included) is what runs.

Real parts throughout: a nats-server with its Object Store bucket, the submission API served by
uvicorn on a loopback port and driven by the SDK (sync httpx, over a real socket), the scheduler,
and an executor on the local backend, or on Docker / Podman with the busybox test image.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import subprocess
import sys
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from trainyard_client.sdk import TrainyardClient, TrainyardError
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_executor.testengines import ENGINE_URLS, IMAGE
from trainyard_scheduler.app import create_app as scheduler_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.blobs import digest_of
from trainyard_shared.testing.helpers import serving_http
from trainyard_submission.app import create_app as submission_app
from trainyard_submission.settings import SubmissionSettings

from .harness import common_settings, running

pytest_plugins = ["trainyard_executor.testengines"]  # the engine fixture (docker, podman)
pytestmark = [pytest.mark.service]
TOKEN = "workdir-token-123456"
PY = sys.executable


@contextlib.asynccontextmanager
async def services(
    nats_server: Any, prefix: str, tmp_path: Path, executor: ExecutorSettings, **api: Any
) -> AsyncIterator[TrainyardClient]:
    common = common_settings(nats_server.url, prefix, tmp_path / "data")
    app = submission_app(common, SubmissionSettings(token=TOKEN, port=0, **api))
    scheduler = scheduler_app(common, SchedulerSettings(tick_seconds=0.2))
    async with serving_http(app) as url, running(scheduler), running(executor_app(common, executor)):
        with TrainyardClient(url, TOKEN) as client:
            yield client


def _git(folder: Path, *args: str) -> str:
    base = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t"]
    return subprocess.run([*base, *args], check=True, capture_output=True, text=True).stdout.strip()


def project(tmp_path: Path) -> tuple[Path, str]:
    """A git checkout whose committed message.txt says "committed" and whose working copy says
    "edited, not committed"; a .gitignore'd weights file that must not travel."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "show.py").write_text("print(open('message.txt').read().strip())\n")
    (folder / "message.txt").write_text("committed\n")
    (folder / ".gitignore").write_text("weights.bin\n")
    _git(folder, "init", "-q")
    _git(folder, "add", ".")
    _git(folder, "commit", "-qm", "first")
    (folder / "message.txt").write_text("edited, not committed\n")
    (folder / "weights.bin").write_bytes(b"w" * 4096)
    return folder, _git(folder, "rev-parse", "HEAD")


async def _run(client: TrainyardClient, spec: dict[str, Any]) -> tuple[Any, str]:
    result = await asyncio.to_thread(client.submit, spec)
    record = await asyncio.to_thread(client.wait, result.job_id, 90, 0.2)
    return record, await asyncio.to_thread(client.logs, result.job_id)


def _check_provenance(record: Any, folder: Path, commit: str) -> None:
    workdir = record.spec.workdir
    assert workdir.path is None and workdir.digest.startswith("sha256:")
    assert workdir.commit == commit and workdir.diff is not None and workdir.diff.startswith("sha256:")


@pytest.mark.local
async def test_a_local_job_runs_the_folder_with_its_uncommitted_edit(nats_server, prefix, tmp_path):
    folder, commit = project(tmp_path)
    executor = ExecutorSettings(id="exec-wd", cpu=1, memory=2048, heartbeat_seconds=0.5)
    async with services(nats_server, prefix, tmp_path, executor) as client:
        spec = {"name": "wd", "command": [PY, "show.py"], "workdir": str(folder)}
        record, logs = await _run(client, spec)
        assert record.state.value == "succeeded", (record.reason, logs)
        assert "edited, not committed" in logs and "committed\n" not in logs.replace("not committed", "")
        _check_provenance(record, folder, commit)
        # the same folder again: the API has the digest, nothing is sent (HEAD answered 204)
        again = await asyncio.to_thread(client.upload_workdir, folder)
        assert again.digest == record.spec.workdir.digest and again.uploaded is False
        assert again.files == 3  # .gitignore, message.txt, show.py: weights.bin is ignored
        (folder / "weights.bin").write_bytes(b"other")  # an ignored file changes nothing
        assert (await asyncio.to_thread(client.upload_workdir, folder)).digest == again.digest


async def test_a_container_job_runs_the_folder_with_its_uncommitted_edit(
    nats_server, prefix, tmp_path, engine
):
    folder, commit = project(tmp_path)
    executor = ExecutorSettings(
        id=f"exec-{engine}-{uuid.uuid4().hex[:6]}",
        backend=engine,
        cpu=1,
        memory=2048,
        heartbeat_seconds=0.5,
        docker_host=ENGINE_URLS["docker"],
        podman_socket=ENGINE_URLS["podman"],
    )
    async with services(nats_server, prefix, tmp_path, executor) as client:
        spec = {"name": "wd", "image": IMAGE, "command": ["cat", "message.txt"], "workdir": str(folder)}
        record, logs = await _run(client, spec)
    assert record.state.value == "succeeded", (record.reason, logs)
    assert "edited, not committed" in logs
    _check_provenance(record, folder, commit)


def _hostile_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../../escape")
        tar.addfile(info, io.BytesIO(b""))
    return gzip.compress(buffer.getvalue(), mtime=0)


@pytest.mark.local
async def test_the_api_refuses_bad_uploads_and_unknown_digests(nats_server, prefix, tmp_path):
    executor = ExecutorSettings(id="exec-wd2", cpu=1, memory=2048, heartbeat_seconds=0.5)
    async with services(nats_server, prefix, tmp_path, executor, max_workdir_bytes=4096) as client:
        http = client._http  # the SDK's own authenticated connection, for raw requests

        def put(digest: str, body: bytes) -> Any:
            return http.put(f"/v1/workdirs/{digest}", content=body)

        hostile = _hostile_archive()
        answer = await asyncio.to_thread(put, digest_of(hostile), hostile)
        assert answer.status_code == 422 and "'..' leads outside" in answer.json()["detail"]
        answer = await asyncio.to_thread(put, digest_of(b"other"), hostile)
        assert answer.status_code == 400 and "not sha256:" in answer.json()["detail"]
        big = b"x" * 5000
        answer = await asyncio.to_thread(put, digest_of(big), big)
        assert answer.status_code == 413 and "at most 4096 bytes" in answer.json()["detail"]
        assert (await asyncio.to_thread(http.head, f"/v1/workdirs/{digest_of(big)}")).status_code == 404

        unknown = "sha256:" + "0" * 64
        with pytest.raises(TrainyardError) as err:
            await asyncio.to_thread(
                client.submit, {"name": "x", "command": ["true"], "workdir": {"digest": unknown}}
            )
        assert err.value.status == 422 and err.value.errors[0].field == "workdir.digest"
        raw = await asyncio.to_thread(
            http.post, "/v1/jobs", json={"name": "x", "command": ["true"], "workdir": "."}
        )
        assert raw.status_code == 422 and raw.json()["errors"][0]["field"] == "workdir"
