"""Per-job users work on this machine: the executor's Python lives under /root (0700), which made
``run_as=auto`` fall back to root for every job of ``trainyard up``. Now the executor gives jobs a
venv of the system Python (same version) that reads its own packages, and jobs run as uids of their
own with ``python`` on PATH. Real processes under real uids (the tests run as root, as CI does).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainyard_executor.app import job_needs, make_backend, settings_for_jobs
from trainyard_executor.backends import AttemptLaunch
from trainyard_executor.backends.jobusers import unreachable
from trainyard_executor.backends.local import LocalBackend
from trainyard_executor.settings import ExecutorSettings

pytestmark = [pytest.mark.security, pytest.mark.local]

if os.geteuid() != 0:
    pytest.skip("needs root (to switch users)", allow_module_level=True)
if unreachable(Path(os.path.realpath(sys.executable)).parent, None, None) is None:
    pytest.skip(
        "this Python is reachable by every user here: nothing to work around", allow_module_level=True
    )


@pytest.fixture
def data() -> Iterator[Path]:
    """A data dir as `trainyard up` makes it (0711) where others may pass: /tmp, not pytest's."""
    path = Path(tempfile.mkdtemp(prefix="trainyard-runas-", dir="/tmp"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Lines:
    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    async def __call__(self, stream: str, text: str) -> None:
        self.got.append((stream, text))


async def test_auto_runs_jobs_as_their_own_uid_with_the_executors_packages(data: Path) -> None:
    settings = ExecutorSettings(id="runas", backend="local", run_as="auto", cpu=1, memory=512)
    backend = make_backend(settings, data)
    assert isinstance(backend, LocalBackend)
    assert backend.job_users is not None, "auto fell back to root"  # before: the /root Python blocked
    for_jobs = settings_for_jobs(settings, backend)
    assert for_jobs.python_bin is not None and for_jobs.python_bin != Path(sys.executable).parent
    assert all(
        unreachable(p, None, None) is None
        for p in job_needs(for_jobs, data, data / "executor" / "runas", data / "runtime-envs")
    )

    job_id = "job" + uuid.uuid4().hex[:12]
    launch = AttemptLaunch(
        job_id=job_id,
        attempt=1,
        # pydantic: a compiled package; trainyard_contracts: an editable install (a .pth of its own)
        argv=[
            "python",
            "-c",
            "import os, pydantic, trainyard_contracts; print('uid', os.getuid(), flush=True)",
        ],
        env={"PATH": f"{for_jobs.python_bin}:/usr/bin:/bin", "TRAINYARD_JOB_ID": job_id},
        workdir=data / "executor" / "runas" / "work" / job_id / "attempt-1",
        timeout_s=60,
        grace_s=2.0,
    )
    lines = Lines()
    outcome = await (await backend.start(launch, lines)).wait()
    assert outcome.kind == "succeeded", (outcome, lines.got)
    (uid_line,) = [text for stream, text in lines.got if stream == "stdout" and text.startswith("uid ")]
    assert int(uid_line.split()[1]) != 0
