"""The local backend after an executor restart: pid files, adoption, discarding, exit status.

The executor that started an attempt goes away (``detach()``: it stops watching and leaves the
processes running, as a killed executor does); a new backend on the same root finds the attempt
by its pid file and adopts or discards it. Real processes throughout; the integration test
``tests/integration/test_executor_restart.py`` does the same with a SIGKILLed executor process.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from trainyard_executor.backends import AttemptLaunch, LocalBackend
from trainyard_executor.backends.local import META_DIR
from trainyard_executor.core import free_loopback_port
from trainyard_executor.jobenv import plan_gang
from trainyard_executor.testengines import Lines, pid_alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.local]

PY = sys.executable


def launch_of(tmp_path: Path, script: str, **kw: Any) -> AttemptLaunch:
    job_id = "job" + uuid.uuid4().hex[:10]
    defaults: dict[str, Any] = {
        "job_id": job_id,
        "attempt": 1,
        "argv": [PY, "-c", textwrap.dedent(script)],
        "env": {"GO": str(tmp_path / "go")},
        "workdir": tmp_path / "work" / job_id / "attempt-1",
        "timeout_s": None,
        "grace_s": 5.0,
    }
    defaults.update(kw)
    return AttemptLaunch(**defaults)


WAIT_FOR_GO = """
    import os, sys, time
    print("first", os.getpid(), flush=True)
    while not os.path.exists(os.environ["GO"]):
        time.sleep(0.05)
    print("second", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    sys.exit(int(os.environ.get("EXIT", "0")))
"""


async def started_then_left(root: Path, launch: AttemptLaunch) -> tuple[Any, Lines]:
    """An attempt started by one executor, which then went away without stopping it."""
    lines = Lines()
    attempt = await LocalBackend(root=root).start(launch, lines)
    await wait_until(lambda: any(t.startswith("first") for t in lines.of("stdout")), "the first line")
    await attempt.detach()
    return attempt, lines


async def test_an_adopted_attempt_keeps_streaming_and_reports_its_exit_code(tmp_path: Path) -> None:
    root = tmp_path / "root"
    launch = launch_of(tmp_path, WAIT_FOR_GO, env={"GO": str(tmp_path / "go"), "EXIT": "7"})
    old, _ = await started_then_left(root, launch)
    assert old.pid is not None and pid_alive(old.pid)  # still running, unwatched

    again = LocalBackend(root=root)  # the restarted executor
    [found] = await again.find_attempts()
    assert (found.job_id, found.attempt) == (launch.job_id, 1)
    lines = Lines()
    adopted = await again.adopt(found, lines)
    assert adopted.pid == old.pid
    (tmp_path / "go").write_text("")
    outcome = await adopted.wait()
    assert (outcome.kind, outcome.exit_code, outcome.reason) == ("failed", 7, "exit code 7")
    assert outcome.output_dir == launch.workdir / "outputs"
    assert "second" in lines.of("stdout") and lines.of("stderr") == ["to stderr"]
    assert await again.find_attempts() == [found]  # until the executor has recorded the outcome
    await adopted.release()
    assert await again.find_attempts() == []


async def test_an_attempt_that_ended_while_no_executor_watched_reports_how_it_ended(tmp_path: Path) -> None:
    root = tmp_path / "root"
    old, _ = await started_then_left(root, launch_of(tmp_path, WAIT_FOR_GO))
    (tmp_path / "go").write_text("")
    await wait_until(lambda: old.pid is not None and not pid_alive(old.pid), "the attempt to end alone")
    again = LocalBackend(root=root)
    [found] = await again.find_attempts()
    lines = Lines()
    outcome = await (await again.adopt(found, lines)).wait()
    assert (outcome.kind, outcome.exit_code) == ("succeeded", 0)  # from the supervisor's exit file
    assert "second" in lines.of("stdout")  # written while nobody watched, shipped now


async def test_the_shipped_offset_is_where_an_adopted_attempt_resumes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    launch = launch_of(tmp_path, WAIT_FOR_GO)
    await started_then_left(root, launch)
    first = (launch.workdir / META_DIR / "rank-0.stdout").read_text().splitlines()[0]
    # as the cursor says once the first line has left the shipper
    cursor = launch.workdir / META_DIR / "log-cursor.json"
    cursor.write_text(json.dumps({"rank-0.stdout": len(first) + 1}))
    again = LocalBackend(root=root)
    [found] = await again.find_attempts()
    lines = Lines()
    adopted = await again.adopt(found, lines)
    (tmp_path / "go").write_text("")
    assert (await adopted.wait()).kind == "succeeded"
    assert lines.of("stdout") == ["second"]  # not the first line again
    assert lines.of("stderr") == ["to stderr"]


async def test_discarding_stops_every_rank_and_forgets_the_attempt(tmp_path: Path) -> None:
    root = tmp_path / "root"
    script = """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # even one that ignores SIGTERM
        print("first", os.getpid(), flush=True)
        time.sleep(300)
    """
    launch = launch_of(tmp_path, script, gang=plan_gang(2, None, free_loopback_port))
    lines = Lines()
    attempt = await LocalBackend(root=root).start(launch, lines)
    await wait_until(lambda: len([t for t in lines.of("stdout") if "first" in t]) == 2, "both ranks")
    await attempt.detach()
    pids = [int(t.split()[-1]) for t in lines.of("stdout")]
    assert all(pid_alive(p) for p in pids)
    again = LocalBackend(root=root)
    [found] = await again.find_attempts()
    await again.discard(found, grace_s=0.5)
    assert not any(pid_alive(p) for p in pids)
    assert await again.find_attempts() == []


async def test_a_reused_pid_is_not_mistaken_for_the_attempt_nor_signalled(tmp_path: Path) -> None:
    """The pid file names a pid that now belongs to another process (here: this test's own, with
    another start time): adoption must neither wait for it nor kill it."""
    root = tmp_path / "root"
    await started_then_left(root, launch_of(tmp_path, WAIT_FOR_GO))
    [found] = await LocalBackend(root=root).find_attempts()
    state = json.loads(Path(found.ref).read_text())
    real_pid = state["ranks"][0]["pid"]
    state["ranks"][0]["pid"] = os.getpid()
    Path(found.ref).write_text(json.dumps(state))
    lines = Lines()
    outcome = await (await LocalBackend(root=root).adopt(found, lines)).wait()
    assert outcome.kind == "failed" and outcome.exit_code is None
    assert outcome.reason == "ended while the executor was away; its exit status is unknown"
    assert pid_alive(os.getpid())  # (we are still here)
    if state.get("cgroup") or state.get("user"):
        # where the attempt has a cgroup or a uid of its own, its end empties them: the real
        # process went with it (the containment promise, not a signal to the reused pid)
        await wait_until(lambda: not pid_alive(real_pid), "the attempt's cgroup to be emptied")
    else:
        os.killpg(real_pid, 9)  # the test's own cleanup of the real attempt


async def test_an_adopted_attempt_keeps_its_timeout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    old, _ = await started_then_left(root, launch_of(tmp_path, WAIT_FOR_GO, timeout_s=3, grace_s=1))
    again = LocalBackend(root=root)
    [found] = await again.find_attempts()
    outcome = await (await again.adopt(found, Lines())).wait()
    assert (outcome.kind, outcome.reason) == ("timed_out", "timed out after 3s")
    assert old.pid is not None and not pid_alive(old.pid)


async def test_a_rank_spawned_just_before_the_executor_died_is_found_by_its_own_pid_file(
    tmp_path: Path,
) -> None:
    """Killed between spawning a rank and writing its pid into the attempt's pid file: the
    rank's supervisor has recorded itself, so the attempt is still adopted, not run twice."""
    root = tmp_path / "root"
    old, _ = await started_then_left(root, launch_of(tmp_path, WAIT_FOR_GO))
    [found] = await LocalBackend(root=root).find_attempts()
    state = json.loads(Path(found.ref).read_text())
    state["ranks"][0]["pid"] = state["ranks"][0]["start_ticks"] = None  # as written before the spawn
    Path(found.ref).write_text(json.dumps(state))
    adopted = await LocalBackend(root=root).adopt(found, Lines())
    assert adopted.pid == old.pid
    (tmp_path / "go").write_text("")
    assert (await adopted.wait()).kind == "succeeded"
