"""A local job runs as a user of its own and reaches its own files only: not the API token in the
data dir, not the executor's environment, not another job's work dir, not the shared runtime-env
cache. Real processes under real uids (the executor side runs as root here, as in CI); no mocks.

The data dir is made the way an operator's would be for this (``0711``: others may pass through,
not list) in /tmp, and the jobs run /usr/bin/python3: pytest's own temporary directories and this
checkout's Python live under ``0700`` directories that no other user may enter, which is what the
executor's start-up check reports (``test_auto_falls_back_and_says_which_directory_blocks``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainyard_executor.app import settings_for_jobs
from trainyard_executor.backends import AttemptLaunch, LocalBackend, RuntimeEnvCache
from trainyard_executor.backends.cgroups import Containment
from trainyard_executor.backends.jobusers import JobUsers, RunAsError, job_users
from trainyard_executor.backends.runtime_env import readable_not_writable
from trainyard_executor.settings import ExecutorSettings
from trainyard_executor.testengines import Lines, pid_alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.local, pytest.mark.security]

SYSTEM_PYTHON = "/usr/bin/python3"
TOKEN = "ty-admin-token-that-no-job-may-read"

if os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK):
    pytest.skip("needs root (to switch users) and the system python", allow_module_level=True)


class ReportLines(Lines):
    """The job's lines, and the JSON report it prints."""

    def report(self) -> dict[str, Any]:
        for stream, text in self.got:
            if stream == "stdout" and text.startswith("{"):
                return dict(json.loads(text))
        raise AssertionError(f"the job printed no report: {self.got}")


@pytest.fixture
def data() -> Iterator[Path]:
    """A data dir laid out as the stack's: the admin token (0600) at its top."""
    path = Path(tempfile.mkdtemp(prefix="trainyard-isolation-", dir="/tmp"))
    path.chmod(0o711)
    token = path / "api-token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def backend(data: Path) -> LocalBackend:
    root = data / "executor" / "iso"
    users, note, warn = job_users(
        "per-attempt", tag=str(root), uid_base=None, needs=[root / "work", data / "checkpoints"]
    )
    assert users is not None and not warn, note
    return LocalBackend(root=root, runtime_env_cache=RuntimeEnvCache(data / "runtime-envs"), job_users=users)


def launch(data: Path, script: str, env: dict[str, str] | None = None, **kw: Any) -> AttemptLaunch:
    job_id = "job" + uuid.uuid4().hex[:12]
    return AttemptLaunch(
        job_id=job_id,
        attempt=1,
        argv=[SYSTEM_PYTHON, "-c", textwrap.dedent(PROBE) + textwrap.dedent(script)],
        env={"TRAINYARD_JOB_ID": job_id, **(env or {})},
        workdir=data / "executor" / "iso" / "work" / job_id / "attempt-1",
        timeout_s=60,
        grace_s=2.0,
        checkpoint_dir=data / "checkpoints" / job_id,
        **kw,
    )


PROBE = """
    import json, os, sys
    seen = {}
    def probe(name, action):
        try:
            action()
            seen[name] = "allowed"
        except PermissionError:
            seen[name] = "denied"
        except OSError as exc:
            seen[name] = type(exc).__name__
    def read(path):
        return lambda: open(path, "rb").read()
    def write(path):
        return lambda: open(path, "w").write("x")
"""


async def test_a_job_cannot_read_the_token_the_executors_environment_or_the_runtime_env_cache(
    backend: LocalBackend, data: Path
) -> None:
    """Before ``run_as``, every one of these was allowed: the job ran as root."""
    venv_bin = data / "runtime-envs" / "0123abcd" / "bin"  # a cached venv, as the cache makes it
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text("#!/bin/sh\n")
    script = f"""
        up = os.getcwd()
        while up != "/" and not os.path.lexists(os.path.join(up, "api-token")):
            up = os.path.dirname(up)
        probe("token", read(os.path.join(up, "api-token")))
        supervisor = os.getppid()
        stat = open(f"/proc/{{supervisor}}/stat").read()
        executor = int(stat[stat.rfind(")") + 2 :].split()[1])
        probe("executor_environ", read(f"/proc/{{executor}}/environ"))
        probe("supervisor_environ", read(f"/proc/{{supervisor}}/environ"))
        probe("list_work_root", lambda: os.listdir(os.path.dirname(os.path.dirname(os.getcwd()))))
        probe("runtime_env_write", write({str(venv_bin / "injected")!r}))
        probe("runtime_env_replace", write({str(venv_bin / "python")!r}))
        probe("outputs", write(os.path.join(os.environ["TRAINYARD_OUTPUT_DIR"], "model.txt")))
        probe("checkpoint", write(os.path.join(os.environ["TRAINYARD_CHECKPOINT_DIR"], "state")))
        probe("tmpdir", write(os.path.join(os.environ.get("TMPDIR", "/nonexistent"), "scratch")))
        seen["uid"] = os.getuid()
        seen["groups"] = os.getgroups()
        print(json.dumps(seen), flush=True)
    """
    lines = ReportLines()
    job = launch(data, script, env={"TRAINYARD_CHECKPOINT_DIR": str(data / "checkpoints" / "x")})
    job.env["TRAINYARD_CHECKPOINT_DIR"] = str(job.checkpoint_dir)
    outcome = await (await backend.start(job, lines)).wait()
    assert outcome.kind == "succeeded", (outcome, lines.got)
    seen = lines.report()

    assert seen["token"] == "denied"
    assert seen["executor_environ"] == "denied"
    assert seen["supervisor_environ"] == "denied"
    assert seen["list_work_root"] == "denied"
    assert seen["runtime_env_write"] == "denied"
    assert seen["runtime_env_replace"] == "denied"
    assert (seen["outputs"], seen["checkpoint"], seen["tmpdir"]) == ("allowed", "allowed", "allowed")
    assert seen["uid"] != 0 and seen["groups"] == []
    assert (job.workdir / "outputs" / "model.txt").read_text() == "x"


async def test_a_job_cannot_read_another_jobs_work_dir(backend: LocalBackend, data: Path) -> None:
    """Two attempts at once get two uids; each work dir is 0700 and its own."""
    first = launch(
        data, "open('secret.txt', 'w').write('mine'); print('{}', flush=True); import time; time.sleep(60)"
    )
    lines_first = ReportLines()
    running = await backend.start(first, lines_first)
    secret = first.workdir / "secret.txt"
    await wait_until(secret.exists, "the first job's secret file")

    script = f"""
        probe("read_other", read({str(secret)!r}))
        probe("list_other", lambda: os.listdir({str(first.workdir)!r}))
        probe("write_other", write({str(first.workdir / "planted.py")!r}))
        print(json.dumps(seen), flush=True)
    """
    lines = ReportLines()
    outcome = await (await backend.start(launch(data, script), lines)).wait()
    await running.cancel(1.0)

    assert outcome.kind == "succeeded", (outcome, lines.got)
    assert lines.report() == {"read_other": "denied", "list_other": "denied", "write_other": "denied"}


async def test_what_the_executor_keeps_is_private_and_the_work_dir_is_taken_back(
    backend: LocalBackend, data: Path
) -> None:
    """At rest: the executor's records 0600 in 0700 directories; once the attempt ends its work dir
    is the executor's again, so the next attempt given the same uid cannot read it."""
    job = launch(data, "print(json.dumps({'uid': os.getuid()}), flush=True)")
    attempt = await backend.start(job, (lines := ReportLines()))
    outcome = await attempt.wait()
    assert outcome.kind == "succeeded", (outcome, lines.got)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    meta = job.workdir / ".trainyard"
    assert mode(backend.attempts_dir) == 0o700
    assert mode(backend.state_file(job.job_id, 1)) == 0o600
    assert mode(meta) == 0o700 and meta.stat().st_uid == 0
    assert {mode(f) for f in meta.iterdir()} == {0o600}
    assert mode(job.workdir) == 0o700 and job.workdir.stat().st_uid == 0
    assert (job.workdir / "outputs").stat().st_uid == lines.report()["uid"]  # the job's own files
    await attempt.release()
    assert backend.job_users is not None and backend.job_users.in_use == {}


def test_auto_falls_back_and_says_which_directory_blocks(tmp_path: Path) -> None:
    """pytest's tmp dirs are under /tmp/pytest-of-root (0700): no job user could reach them."""
    users, note, warn = job_users("auto", tag="t", uid_base=None, needs=[tmp_path / "work"])
    assert users is None and warn
    assert "pytest-of-root is mode 0700" in note
    with pytest.raises(RunAsError, match="pytest-of-root is mode 0700"):
        job_users("per-attempt", tag="t", uid_base=None, needs=[tmp_path / "work"])


def test_uids_are_one_per_running_attempt_and_come_back() -> None:
    users = JobUsers(base=2_000_000_000)
    a, b = users.allocate("a.1"), users.allocate("b.1")
    assert a == (2_000_000_000, 2_000_000_000) and b[0] == 2_000_000_001
    users.release(a[0], "a.1")
    assert users.allocate("c.1") == a
    users.release(b[0], "someone else")  # only its owner gives a uid back
    assert b[0] in users.in_use


async def test_without_a_cgroup_a_setsid_child_is_still_killed_by_its_attempts_uid(data: Path) -> None:
    """The process-group fallback (no cgroup v2) loses a child that calls setsid(); a uid that
    belongs to one attempt finds it again."""
    root = data / "executor" / "nocg"
    backend = LocalBackend(
        root=root,
        containment=Containment("process-group", reason="as on a machine without cgroup v2"),
        job_users=JobUsers(base=2_100_000_000),
    )
    pid_file = data / "grandchild.pid"
    pid_file.touch()
    pid_file.chmod(0o666)
    child = (
        f"import os, time; os.setsid(); open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    )
    job = launch(
        data, f"import subprocess, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(120)"
    )
    job = dataclasses.replace(job, workdir=root / "work" / job.job_id / "attempt-1")
    attempt = await backend.start(job, ReportLines())
    await wait_until(lambda: pid_file.read_text().strip() != "", "the grandchild")
    grandchild = int(pid_file.read_text())
    try:
        await attempt.cancel(1.0)
        await wait_until(lambda: not pid_alive(grandchild), "the setsid grandchild to be gone", 10.0)
    finally:
        if pid_alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_a_built_runtime_env_is_readable_by_every_job_and_writable_by_none(tmp_path: Path) -> None:
    """Whatever the executor's umask (under 0o000 everything pip writes is world-writable,
    and another team's job could change a venv this one runs), a venv is 0755/0644 before it is
    put in place; setuid bits and modes like 0o700 (unreadable to jobs) go too."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib").mkdir(mode=0o700)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    (venv / "bin" / "python").chmod(0o4777)
    (venv / "lib" / "mod.py").write_text("x = 1\n")
    (venv / "lib" / "mod.py").chmod(0o600)
    (venv / "bin").chmod(0o777)
    (venv / "bin" / "link").symlink_to("python")

    readable_not_writable(venv)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.lstat().st_mode)

    assert {mode(venv), mode(venv / "bin"), mode(venv / "lib")} == {0o755}
    assert mode(venv / "bin" / "python") == 0o755
    assert mode(venv / "lib" / "mod.py") == 0o644


def test_jobs_of_their_own_users_are_not_handed_the_stacks_local_mlflow_store(data: Path) -> None:
    """The embedded stack's ``sqlite:///<data>/mlflow/mlflow.db`` is the stack's file: a job of
    another uid cannot open it (by design), so it is not given to jobs, while a server's URL is."""
    isolated = LocalBackend(root=data / "executor" / "x", job_users=JobUsers(base=2_200_000_000))
    shared = LocalBackend(root=data / "executor" / "y")
    local_store = ExecutorSettings(id="x", mlflow_tracking_uri=f"sqlite:///{data}/mlflow/mlflow.db")
    server = ExecutorSettings(id="x", mlflow_tracking_uri="http://127.0.0.1:5000")

    assert settings_for_jobs(local_store, isolated).mlflow_tracking_uri is None
    assert settings_for_jobs(server, isolated).mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert settings_for_jobs(local_store, shared) is local_store  # jobs as the executor's user


async def test_a_job_of_its_own_uid_owns_its_checkout(backend: LocalBackend, data: Path) -> None:
    """The executor (root) checks the source out; the job reads it and may change it."""
    repo = data / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    for args in (["init", "-q"], ["add", "data.txt"], ["commit", "-qm", "one"]):
        if args[0] == "add":
            (repo / "data.txt").write_text("from git")
        subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True)
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    script = """
        seen["data"] = open("data.txt").read()
        probe("change_checkout", write("data.txt"))
        seen["uid"] = os.getuid()
        print(json.dumps(seen), flush=True)
    """
    lines = ReportLines()
    job = launch(data, script, source_repo=str(repo), source_commit=commit)
    outcome = await (await backend.start(job, lines)).wait()
    assert outcome.kind == "succeeded", (outcome, lines.got)
    seen = lines.report()
    assert seen["data"] == "from git" and seen["change_checkout"] == "allowed" and seen["uid"] != 0
