"""The local-process backend against real processes, git repos and virtualenvs (no mocks)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from trainyard_executor.backends import (
    AttemptLaunch,
    AttemptOutcome,
    LocalBackend,
    Resources,
    RuntimeEnvCache,
    RuntimeEnvError,
)
from trainyard_executor.backends.local import MAX_LINE, detect_capacity
from trainyard_executor.backends.local.forkserver_client import ForkServer
from trainyard_executor.backends.runtime_env import MARKER_NAME
from trainyard_executor.supervise import EXIT_DELAY_VAR
from trainyard_executor.testengines import Lines, pid_alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.local]

PY = sys.executable


def make_launch(tmp_path: Path, argv: list[str], **kw: Any) -> AttemptLaunch:
    job_id = kw.pop("job_id", "job" + uuid.uuid4().hex[:12])
    defaults: dict[str, Any] = {
        "job_id": job_id,
        "attempt": 1,
        "argv": argv,
        "env": {"TRAINYARD_JOB_ID": job_id, "TRAINYARD_ATTEMPT": "1"},
        "workdir": tmp_path / "work" / job_id / "attempt-1",
        "timeout_s": None,
        "grace_s": 10.0,
    }
    defaults.update(kw)
    return AttemptLaunch(**defaults)


def py(script: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(script)]


@pytest.fixture(params=["interpreter", "forked"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> LocalBackend:
    """Each rank's supervisor as its own interpreter, and forked by the fork server
    (settings' local_fork_server): every test here holds for both."""
    backend = LocalBackend(root=tmp_path / "root")
    if request.param == "forked":
        backend.fork_server = ForkServer()
    return backend


async def run(backend: LocalBackend, launch: AttemptLaunch) -> tuple[AttemptOutcome, Lines]:
    lines = Lines()
    attempt = await backend.start(launch, lines)
    return await attempt.wait(), lines


# -- exit codes and output -------------------------------------------------------------------------


async def test_success_sees_its_env_and_gets_every_line_in_order(
    backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINYARD_TEST_EXECUTOR_ONLY", "leak")  # in the executor's env, not the job's
    script = """
        import json, os, sys
        out = os.environ["TRAINYARD_OUTPUT_DIR"]
        with open(os.path.join(out, "model.txt"), "w") as f:
            f.write("weights")
        print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}), flush=True)
        for i in range(200):
            print(f"out {i}", flush=True)
            print(f"err {i}", file=sys.stderr, flush=True)
        sys.stdout.write("no newline at the end")
    """
    launch = make_launch(tmp_path, py(script), env={"GREETING": "hello", "TRAINYARD_JOB_ID": "j1"})
    lines = Lines()
    attempt = await backend.start(launch, lines)
    outcome = await attempt.wait()

    assert outcome.usage is not None  # measured (test_attempt_usage.py says how)
    assert replace(outcome, usage=None) == AttemptOutcome(
        "succeeded", 0, "exit code 0", launch.workdir / "outputs"
    )
    assert await attempt.wait() == outcome  # wait() can be called again
    assert attempt.pid is not None
    assert (launch.workdir / "outputs" / "model.txt").read_text() == "weights"

    stdout = lines.of("stdout")
    seen = json.loads(stdout[0])
    env = seen["env"]
    assert env["GREETING"] == "hello" and env["TRAINYARD_JOB_ID"] == "j1"
    assert env["TRAINYARD_OUTPUT_DIR"] == str(launch.workdir / "outputs")
    assert env["TRAINYARD_WORKDIR"] == str(launch.workdir) == seen["cwd"]
    assert env["PATH"] == os.environ["PATH"]  # launch.env has no PATH: the executor's
    assert "TRAINYARD_TEST_EXECUTOR_ONLY" not in env
    assert stdout[1:] == [f"out {i}" for i in range(200)] + ["no newline at the end"]
    assert lines.of("stderr") == [f"err {i}" for i in range(200)]


async def test_nonzero_exit_is_failed_with_its_code(backend: LocalBackend, tmp_path: Path) -> None:
    outcome, lines = await run(backend, make_launch(tmp_path, py("print('bye'); raise SystemExit(3)")))
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("failed", 3, "exit code 3")
    assert lines.of("stdout") == ["bye"]


async def test_death_by_signal_is_failed_with_a_negative_code(backend: LocalBackend, tmp_path: Path) -> None:
    outcome, _ = await run(backend, make_launch(tmp_path, py("import os, signal; os.kill(os.getpid(), 9)")))
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("failed", -9, "killed by signal SIGKILL")


async def test_a_job_starts_with_no_signal_ignored(backend: LocalBackend, tmp_path: Path) -> None:
    """Python ignores SIGPIPE and SIGXFSZ at start-up and an ignored signal stays ignored across
    exec: the job (grep, exec'd by the rank's supervisor) must start with both at their default."""
    outcome, lines = await run(backend, make_launch(tmp_path, ["grep", "^SigIgn:", "/proc/self/status"]))
    assert outcome.kind == "succeeded", lines.got
    ignored = int(lines.of("stdout")[0].split()[1], 16)
    assert ignored & (1 << (13 - 1)) == 0, "SIGPIPE ignored"
    assert ignored & (1 << (25 - 1)) == 0, "SIGXFSZ ignored"


async def test_command_not_found_fails_cleanly(backend: LocalBackend, tmp_path: Path) -> None:
    outcome, lines = await run(backend, make_launch(tmp_path, ["trainyard-no-such-command", "--x"]))
    assert outcome.kind == "failed" and outcome.exit_code is None
    assert outcome.reason == "command not found: trainyard-no-such-command"
    assert lines.got == []


async def test_command_not_executable_fails_cleanly(backend: LocalBackend, tmp_path: Path) -> None:
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    outcome, _ = await run(backend, make_launch(tmp_path, [str(script)]))
    assert outcome.kind == "failed" and outcome.exit_code is None
    assert outcome.reason == f"command not executable: {script}"


async def test_path_of_the_launch_env_is_used_for_the_lookup(backend: LocalBackend, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "trainyard-test-tool"
    tool.write_text('#!/bin/sh\necho "tool ran with PATH=$PATH"\n')
    tool.chmod(0o755)
    path = f"{bindir}:/usr/bin:/bin"
    outcome, lines = await run(backend, make_launch(tmp_path, ["trainyard-test-tool"], env={"PATH": path}))
    assert outcome.kind == "succeeded"
    assert lines.of("stdout") == [f"tool ran with PATH={path}"]


async def test_a_200kb_line_does_not_break_streaming(backend: LocalBackend, tmp_path: Path) -> None:
    script = """
        import sys
        sys.stdout.write("x" * 200_000 + "\\n")
        sys.stdout.write("\\u00e9" * 100_000 + "\\n")  # 200 KB of two-byte characters
        print("after")
    """
    outcome, lines = await run(backend, make_launch(tmp_path, py(script)))
    assert outcome.kind == "succeeded"
    got = lines.of("stdout")
    assert got[-1] == "after"
    assert all(len(piece.encode()) <= MAX_LINE for piece in got)
    xs = [p for p in got if p.startswith("x")]
    es = [p for p in got if p.startswith("\u00e9")]
    assert len(xs) > 1 and "".join(xs) == "x" * 200_000
    assert len(es) > 1 and "".join(es) == "\u00e9" * 100_000  # no character split into U+FFFD
    assert len(got) == len(xs) + len(es) + 1


async def test_a_failing_line_sink_does_not_stop_the_attempt(backend: LocalBackend, tmp_path: Path) -> None:
    delivered: list[str] = []

    async def sink(stream: str, text: str) -> None:
        delivered.append(text)
        if text == "boom":
            raise RuntimeError("sink failed")

    attempt = await backend.start(make_launch(tmp_path, py("print('boom'); print('still here')")), sink)
    outcome = await attempt.wait()
    assert outcome.kind == "succeeded"
    assert delivered == ["boom", "still here"]


# -- timeouts, cancellation, process groups ---------------------------------------------------------

SPAWN_GRANDCHILD = """
    import subprocess, sys, time
    # a child shell that starts a grandchild sleep and reports its pid
    subprocess.Popen(["sh", "-c", "sleep 300 & echo grandchild=$!; wait"])
    time.sleep(300)
"""


async def test_timeout_kills_the_whole_process_group(backend: LocalBackend, tmp_path: Path) -> None:
    launch = make_launch(tmp_path, py(SPAWN_GRANDCHILD), timeout_s=3, grace_s=5)
    outcome, lines = await run(backend, launch)
    assert (outcome.kind, outcome.reason) == ("timed_out", "timed out after 3s")
    assert outcome.exit_code == -15  # the job died of the SIGTERM
    [grandchild] = [int(t.split("=")[1]) for t in lines.of("stdout") if t.startswith("grandchild=")]
    assert not pid_alive(grandchild)


async def test_a_background_process_left_behind_does_not_hang_wait(
    backend: LocalBackend, tmp_path: Path
) -> None:
    # the leader exits at once; its background sleep still holds stdout open
    launch = make_launch(tmp_path, ["sh", "-c", "sleep 300 & echo bg=$!"], grace_s=5)
    outcome, lines = await run(backend, launch)
    assert (outcome.kind, outcome.exit_code) == ("succeeded", 0)
    [bg] = [int(t.split("=")[1]) for t in lines.of("stdout") if t.startswith("bg=")]
    assert not pid_alive(bg)


async def test_cancel_gives_the_job_its_grace_period(backend: LocalBackend, tmp_path: Path) -> None:
    marker = tmp_path / "cleanup-done"
    script = f"""
        import os, signal, sys, time
        def on_term(signum, frame):
            time.sleep(0.5)  # some cleanup that takes a while
            with open({str(marker)!r}, "w") as f:
                f.write("checkpoint saved")
            print("cleaned up", flush=True)
            os._exit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        time.sleep(300)
    """
    lines = Lines()
    attempt = await backend.start(make_launch(tmp_path, py(script)), lines)
    await wait_until(lambda: "ready" in lines.of("stdout"), "the job to install its handler")
    await attempt.cancel(grace_s=30)
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("cancelled", 0, "cancelled")
    assert marker.read_text() == "checkpoint saved"
    assert lines.of("stdout") == ["ready", "cleaned up"]
    await attempt.cancel()  # once ended, a no-op
    assert await attempt.wait() == outcome


async def test_a_cancel_that_comes_after_the_job_ended_with_0_finds_it_done(
    backend: LocalBackend, tmp_path: Path
) -> None:
    """The job has exited 0 and its supervisor recorded it, but the executor has not heard yet
    (the test hook keeps the supervisor a moment, as a poll's delay does) when the cancel comes:
    a shutdown at that instant handed the attempt back and the completed work ran again (chaos,
    test_stack_interrupt). Now the supervisor's record says no stop reached the job, and the
    attempt ends as it did: succeeded. (A job that exits 0 once told to stop is still
    cancelled: test_cancel_gives_the_job_its_grace_period.)"""
    launch = make_launch(tmp_path, ["true"])
    launch = replace(launch, env={**launch.env, EXIT_DELAY_VAR: "3"})
    attempt = await backend.start(launch, Lines())
    exit_file = launch.workdir / ".trainyard" / "rank-0.exit"
    await wait_until(exit_file.exists, "the supervisor to record the job's end")
    await attempt.cancel(grace_s=0.2)
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.exit_code) == ("succeeded", 0), outcome
    assert "signalled" not in json.loads(exit_file.read_text())


async def test_a_job_ignoring_sigterm_is_killed_after_the_grace(
    backend: LocalBackend, tmp_path: Path
) -> None:
    script = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(300)
    """
    lines = Lines()
    attempt = await backend.start(make_launch(tmp_path, py(script)), lines)
    await wait_until(lambda: "ready" in lines.of("stdout"), "the job to ignore SIGTERM")
    assert attempt.pid is not None and pid_alive(attempt.pid)
    await attempt.cancel(grace_s=0.5)
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.exit_code) == ("cancelled", -9)
    assert not pid_alive(attempt.pid)


async def test_cancel_before_the_process_started_spawns_nothing(
    backend: LocalBackend, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    attempt = await backend.start(make_launch(tmp_path, ["touch", str(marker)]), Lines())
    await attempt.cancel()
    outcome = await attempt.wait()
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("cancelled", None, "cancelled")
    assert attempt.pid is None
    assert not marker.exists()


# -- source checkout -------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    res = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True)
    return res.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A repo with two commits of data.txt: ("first", "second"). Returns (path, sha1, sha2)."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "--quiet", "--initial-branch=main")
    (path / "data.txt").write_text("first")
    git(path, "add", "data.txt")
    git(path, "commit", "--quiet", "-m", "one")
    sha1 = git(path, "rev-parse", "HEAD")
    (path / "data.txt").write_text("second")
    git(path, "commit", "--quiet", "-am", "two")
    return path, sha1, git(path, "rev-parse", "HEAD")


READ_DATA = """
    import os
    print(open("data.txt").read())
    print(os.environ["TRAINYARD_OUTPUT_DIR"])
    print(os.environ["TRAINYARD_WORKDIR"])
"""


async def test_checkout_of_an_older_commit(
    backend: LocalBackend, tmp_path: Path, repo: tuple[Path, str, str]
) -> None:
    path, sha1, _ = repo
    launch = make_launch(tmp_path, py(READ_DATA), source_repo=str(path), source_commit=sha1)
    outcome, lines = await run(backend, launch)
    src = launch.workdir / "src"
    assert replace(outcome, usage=None) == AttemptOutcome("succeeded", 0, "exit code 0", src / "outputs")
    assert lines.of("stdout") == ["first", str(src / "outputs"), str(src)]
    assert (src / "outputs").is_dir()


async def test_checkout_without_a_commit_takes_head(
    backend: LocalBackend, tmp_path: Path, repo: tuple[Path, str, str]
) -> None:
    path, _, _ = repo
    outcome, lines = await run(backend, make_launch(tmp_path, py(READ_DATA), source_repo=str(path)))
    assert outcome.kind == "succeeded"
    assert lines.of("stdout")[0] == "second"


async def test_a_failed_checkout_fails_the_attempt_with_gits_reason(
    backend: LocalBackend, tmp_path: Path, repo: tuple[Path, str, str]
) -> None:
    path, _, _ = repo
    marker = tmp_path / "ran"
    bad = "0123456789abcdef0123456789abcdef01234567"
    launch = make_launch(tmp_path, ["touch", str(marker)], source_repo=str(path), source_commit=bad)
    outcome, _ = await run(backend, launch)
    assert outcome.kind == "failed" and outcome.exit_code is None
    assert outcome.reason.startswith("source checkout failed: `git checkout` failed")
    assert bad in outcome.reason  # git's own message names the unknown revision
    assert not marker.exists()

    missing = make_launch(
        tmp_path, ["true"], source_repo=str(tmp_path / "no-such-repo"), source_commit="HEAD"
    )
    outcome, _ = await run(backend, missing)
    assert outcome.kind == "failed"
    assert outcome.reason.startswith("source checkout failed: `git clone` failed")


# -- runtime envs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache root per module: the venv is built once and shared by the tests below."""
    return tmp_path_factory.mktemp("runtime-envs")


@pytest.fixture(autouse=True)
def _offline_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # nothing here may need a download


async def test_runtime_env_is_built_once_and_reused(env_root: Path) -> None:
    cache = RuntimeEnvCache(env_root)
    # built concurrently by two attempts asking for the same (differently spelt) requirements
    bin1, bin2 = await asyncio.gather(cache.ensure(["Pydantic"]), cache.ensure([" pydantic", ""]))
    assert bin1 is not None and bin1 == bin2
    venv = bin1.parent
    assert venv.parent == env_root
    assert sorted(p.name for p in env_root.iterdir() if not p.name.endswith(".lock")) == [venv.name]
    marker = json.loads((venv / MARKER_NAME).read_text())
    assert marker["requirements"] == ["pydantic"]
    mtime = (venv / MARKER_NAME).stat().st_mtime_ns

    # another cache on the same root (an executor restart) reuses it
    again = await RuntimeEnvCache(env_root).ensure(["pydantic"])
    assert again == bin1
    assert json.loads((venv / MARKER_NAME).read_text())["build_id"] == marker["build_id"]
    assert (venv / MARKER_NAME).stat().st_mtime_ns == mtime

    # built under a temporary name: the scripts in bin/ were re-pointed at the final location
    pip = subprocess.run([str(bin1 / "pip"), "--version"], capture_output=True, text=True, check=False)
    assert pip.returncode == 0, pip.stderr
    assert str(venv) in pip.stdout

    assert await cache.ensure([]) is None
    assert await cache.ensure(["  "]) is None


async def test_job_python_is_the_venvs_and_sees_the_executors_packages(
    env_root: Path, tmp_path: Path
) -> None:
    backend = LocalBackend(root=tmp_path / "root", runtime_env_cache=RuntimeEnvCache(env_root))
    script = "import sys, pydantic; print(sys.prefix); print(pydantic.__file__)"
    launch = make_launch(tmp_path, ["python", "-c", script], runtime_pip=("pydantic",))
    outcome, lines = await run(backend, launch)
    assert outcome.kind == "succeeded", (outcome, lines.got)
    prefix, pydantic_file = lines.of("stdout")
    assert Path(prefix).parent == env_root
    assert Path(pydantic_file).is_relative_to(sysconfig.get_paths()["purelib"])


async def test_a_runtime_env_that_cannot_be_built_fails_the_attempt(env_root: Path, tmp_path: Path) -> None:
    backend = LocalBackend(root=tmp_path / "root", runtime_env_cache=RuntimeEnvCache(env_root))
    marker = tmp_path / "ran"
    launch = make_launch(
        tmp_path, ["touch", str(marker)], runtime_pip=("trainyard-surely-not-a-package==0.0.1",)
    )
    outcome, _ = await run(backend, launch)
    assert outcome.kind == "failed" and outcome.exit_code is None
    assert outcome.reason.startswith("runtime env setup failed: pip install failed")
    assert "trainyard-surely-not-a-package" in outcome.reason  # pip's stderr
    assert not marker.exists()
    assert not [p for p in env_root.iterdir() if p.name.startswith(".build-")]  # no half-built venv left


async def test_pip_options_are_not_accepted_as_requirements(env_root: Path) -> None:
    with pytest.raises(RuntimeEnvError, match="options are not allowed"):
        await RuntimeEnvCache(env_root).ensure(["--index-url=https://example.invalid/simple", "x"])


async def test_runtime_pip_without_a_cache_fails_the_attempt(backend: LocalBackend, tmp_path: Path) -> None:
    outcome, _ = await run(backend, make_launch(tmp_path, ["true"], runtime_pip=("pydantic",)))
    assert outcome.kind == "failed"
    assert outcome.reason == "runtime_pip requested but no runtime env cache configured"


# -- capacity --------------------------------------------------------------------------------------


def test_capacity_is_detected_or_overridden(tmp_path: Path) -> None:
    detected = LocalBackend(root=tmp_path).capacity()
    assert detected == detect_capacity()
    assert detected.cpu == float(len(os.sched_getaffinity(0)))
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    [total_kb] = [int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:")]
    assert detected.memory_mb == total_kb // 1024
    if shutil.which("nvidia-smi") is None:
        assert detected.gpu == 0

    override = Resources(cpu=3.5, memory_mb=1234, gpu=2)
    assert LocalBackend(root=tmp_path, capacity_override=override).capacity() == override
