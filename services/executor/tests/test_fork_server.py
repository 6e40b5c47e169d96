"""The local backend's fork server (forkserver.py and its client) with real processes: a forked
rank is the supervisor it would be as its own interpreter, leads its own session the moment its
pid is known, never sees the executor's environment, and a fork server that dies hands what
waits on it to polling and the next rank to the old way."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from trainyard_executor.backends.local.forkserver_client import (
    ForkedRank,
    ForkServer,
    ForkServerUnavailable,
    RankNotStarted,
)
from trainyard_executor.backends.local.ranks import Rank
from trainyard_executor.testengines import pid_alive, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.local]

PATH = {"PATH": os.environ["PATH"]}


class Files:
    def __init__(self, root: Path) -> None:
        self.root = root

    def out(self, name: str) -> int:
        return os.open(self.root / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def record(self, name: str) -> Any:
        return json.loads((self.root / name).read_text())


async def spawn(
    server: ForkServer, files: Files, name: str, argv: list[str], env: dict[str, str]
) -> ForkedRank:
    out = files.out(f"{name}.out")
    try:
        return await server.spawn(
            [str(files.root / f"{name}.exit"), "--", *argv], cwd=files.root, env=env, stdout=out, stderr=out
        )
    finally:
        os.close(out)


async def test_a_forked_rank_runs_its_job_with_its_own_env_and_cwd_and_its_end_is_heard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINYARD_NATS_PASSWORD", "executor-only")  # the executor's, never a rank's
    server, files = ForkServer(), Files(tmp_path)
    try:
        rank = await spawn(
            server,
            files,
            "a",
            ["sh", "-c", 'echo "$FOO|${TRAINYARD_NATS_PASSWORD:-}"; pwd; exit 3'],
            {**PATH, "FOO": "bar"},
        )
        assert await rank.exited == 3  # the supervisor's own exit code: the job's
        assert files.record("a.exit")["returncode"] == 3
        assert (tmp_path / "a.out").read_text().split() == ["bar|", str(tmp_path)]
        assert server._process is not None
        environ = Path(f"/proc/{server._process.pid}/environ").read_bytes()
        assert b"executor-only" not in environ  # the fork server holds none of it either
    finally:
        await server.close()


async def test_a_forked_rank_leads_its_own_session_when_its_pid_is_known_and_takes_group_signals(
    tmp_path: Path,
) -> None:
    server, files = ForkServer(), Files(tmp_path)
    try:
        rank = await spawn(server, files, "s", ["sleep", "60"], PATH)
        assert os.getsid(rank.pid) == rank.pid and os.getpgid(rank.pid) == rank.pid
        children = Path(f"/proc/{rank.pid}/task/{rank.pid}/children")
        await wait_until(lambda: children.read_text().strip() != "", "the supervisor to start its job")
        os.killpg(rank.pid, signal.SIGTERM)  # what the backend's cancel does
        assert await rank.exited == 128 + signal.SIGTERM
        assert files.record("s.exit")["returncode"] == -signal.SIGTERM
    finally:
        await server.close()


async def test_what_the_supervisor_records_for_a_missing_command_and_a_missing_cwd(tmp_path: Path) -> None:
    server, files = ForkServer(), Files(tmp_path)
    try:
        rank = await spawn(server, files, "n", ["no-such-command-here"], PATH)
        assert await rank.exited == 127
        assert files.record("n.exit") == {"error": "command not found: no-such-command-here"}
        out = files.out("gone.out")
        with pytest.raises(FileNotFoundError):  # as create_subprocess_exec raises it: the rank fails
            await server.spawn(
                ["x.exit", "--", "true"], cwd=tmp_path / "gone", env=PATH, stdout=out, stderr=out
            )
        os.close(out)
    finally:
        await server.close()


async def test_a_fork_server_that_dies_leaves_its_ranks_running_and_their_ends_are_still_seen(
    tmp_path: Path,
) -> None:
    server, files = ForkServer(), Files(tmp_path)
    try:
        rank = await spawn(server, files, "k", ["sleep", "60"], PATH)
        assert server._process is not None
        server._process.kill()  # the fork server, not the rank
        await wait_until(lambda: server._broken, "the client to hear the fork server end")
        assert pid_alive(rank.pid) and not rank.exited.done()
        with pytest.raises(ForkServerUnavailable):  # the backend starts the next rank the old way
            await spawn(server, files, "next", ["true"], PATH)
        os.killpg(rank.pid, signal.SIGKILL)
        assert await rank.exited is None  # seen by polling: no exit code to hear
    finally:
        await server.close()


async def test_a_request_too_large_for_the_fork_server_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    server, files = ForkServer(), Files(tmp_path)
    try:
        with pytest.raises(ForkServerUnavailable, match="over"):
            await spawn(server, files, "big", ["true"], {**PATH, "BIG": "x" * 300_000})
        rank = await spawn(server, files, "small", ["true"], PATH)  # and the server still serves
        assert await rank.exited == 0
    finally:
        await server.close()


async def _sent_to_a_frozen_fork_server(
    server: ForkServer, files: Files, name: str, argv: list[str]
) -> asyncio.Task[ForkedRank]:
    """A request on the socket of a fork server stopped with SIGSTOP (as chaos scenario 7 freezes a
    process tree): started, then frozen, then asked."""
    warm = await spawn(server, files, "warm", ["true"], PATH)
    assert await warm.exited == 0
    assert server._process is not None
    os.kill(server._process.pid, signal.SIGSTOP)
    task = asyncio.ensure_future(spawn(server, files, name, argv, PATH))
    # registered, then sent with no wait in between (the socket is empty and nobody else sends)
    await wait_until(lambda: len(server._answers) == 1, "the request to be sent")
    return task


async def _woken_without_running_the_late_rank(server: ForkServer, files: Files, marker: Path) -> None:
    """The record of "late" claimed by the executor; the frozen fork server woken forks it, and its
    child, whose claim fails, runs nothing (no marker, no supervisor's exit file)."""
    assert files.record("late.pid")["claimed_by"] == "executor"
    assert server._process is not None
    os.kill(server._process.pid, signal.SIGCONT)
    after = await spawn(server, files, "after", ["true"], PATH)  # answered after "late": in order
    assert await after.exited == 0
    assert not marker.exists()
    assert not (files.root / "late.exit").exists()


async def test_a_sent_request_given_up_never_runs_even_when_the_frozen_fork_server_wakes_and_forks_it(
    tmp_path: Path,
) -> None:
    """The double run: a caller that stops waiting (here cancelled; before, a 30 s timeout that then
    started the rank as its own interpreter) while the fork server is frozen, which then wakes and
    forks the request. The executor's claim of the rank's pid record keeps the late child from
    running the job."""
    server, files = ForkServer(), Files(tmp_path)
    marker = tmp_path / "ran"
    try:
        task = await _sent_to_a_frozen_fork_server(server, files, "late", ["touch", str(marker)])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _woken_without_running_the_late_rank(server, files, marker)
    finally:
        await server.close()


async def test_a_restarted_executor_that_finds_no_pid_for_a_rank_claims_it_so_a_late_fork_never_runs(
    tmp_path: Path,
) -> None:
    """The executor died with a request still queued at the fork server, which forks it after the
    executor is gone. The restarted executor finds the rank with no pid (its state file, no pid
    record yet) and concludes "not started": reading the rank claims its pid record, so the late
    child's own claim fails and the job never runs a second time."""
    server, files = ForkServer(), Files(tmp_path)
    marker = tmp_path / "ran"
    try:
        task = await _sent_to_a_frozen_fork_server(server, files, "late", ["touch", str(marker)])
        stored = {"rank": 0, "local_rank": 0, "pid": None, "start_ticks": None}
        paths = {"stdout": tmp_path / "o", "stderr": tmp_path / "e", "exit_file": tmp_path / "late.exit"}
        found = Rank.from_json({**stored, **{k: str(v) for k, v in paths.items()}})
        assert found.pid is None  # not started, and now it will not be
        await _woken_without_running_the_late_rank(server, files, marker)
        with pytest.raises(FileExistsError, match="its pid record exists"):  # the late child's answer
            await task
    finally:
        await server.close()


def test_a_rank_found_with_its_supervisors_pid_record_is_adopted_by_that_pid(tmp_path: Path) -> None:
    (tmp_path / "r.pid").write_text('{"pid": 4242, "start_ticks": 17}')
    stored = {"rank": 0, "local_rank": 0, "pid": None, "start_ticks": None, "stdout": "o", "stderr": "e"}
    found = Rank.from_json({**stored, "exit_file": str(tmp_path / "r.exit")})
    assert (found.pid, found.start_ticks) == (4242, 17)


async def test_a_fork_server_that_dies_before_answering_fails_the_rank_when_the_rank_did_not_start(
    tmp_path: Path,
) -> None:
    """Sent, then the fork server killed unanswered: not a fallback to an interpreter (which could run
    the job a second time) but a clear failure, with the record claimed so nothing runs later."""
    server, files = ForkServer(), Files(tmp_path)
    try:
        task = await _sent_to_a_frozen_fork_server(server, files, "lost", ["true"])
        assert server._process is not None
        os.kill(server._process.pid, signal.SIGKILL)
        with pytest.raises(RankNotStarted, match="the rank was not started and will not be"):
            await task
        assert files.record("lost.pid")["claimed_by"] == "executor"
        with pytest.raises(ForkServerUnavailable):  # never sent: the next rank starts the old way
            await spawn(server, files, "next", ["true"], PATH)
    finally:
        await server.close()


async def test_a_fork_server_that_dies_before_answering_a_rank_it_started_hands_that_rank_over(
    tmp_path: Path,
) -> None:
    """Sent, and the child claimed its pid record before the fork server died unanswered: the rank
    is adopted by the pid it recorded. The child is stood in for by a real process whose record is
    written as the child writes it (the window between the child's claim and the answer is too
    short to kill the fork server in on purpose)."""
    server, files = ForkServer(), Files(tmp_path)
    stand_in = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
    try:
        task = await _sent_to_a_frozen_fork_server(server, files, "adopted", ["true"])
        ticks = int(Path(f"/proc/{stand_in.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        (tmp_path / "adopted.pid").write_text(json.dumps({"pid": stand_in.pid, "start_ticks": ticks}))
        assert server._process is not None
        os.kill(server._process.pid, signal.SIGKILL)
        rank = await task
        assert (rank.pid, rank.start_ticks) == (stand_in.pid, ticks)
        assert not rank.exited.done()
        stand_in.kill()
        await stand_in.wait()
        assert await rank.exited is None  # seen by polling
    finally:
        if stand_in.returncode is None:
            stand_in.kill()
            await stand_in.wait()
        await server.close()


async def test_malformed_requests_are_answered_and_the_fork_server_serves_on(tmp_path: Path) -> None:
    """A request without an id used to fork, then close its descriptors twice (EBADF ended the fork
    server); an env of non-strings killed the child after it was reported started."""
    server, files = ForkServer(), Files(tmp_path)
    try:
        rank = await spawn(server, files, "first", ["true"], PATH)
        assert await rank.exited == 0
        assert server._requests is not None
        answers: list[dict[str, Any]] = []
        server._dispatch = answers.append  # type: ignore[method-assign]  # hear the raw answers
        good = {
            "argv": [str(tmp_path / "x.exit"), "--", "true"],
            "cwd": str(tmp_path),
            "record": str(tmp_path / "x.pid"),
        }
        for request in ({**good, "env": PATH}, {**good, "id": 9, "env": {"N": 1}}):
            out = files.out("raw.out")
            socket.send_fds(server._requests, [json.dumps(request).encode()], [out, out])
            os.close(out)
        await wait_until(lambda: len(answers) == 2, "both answers")
        assert answers[0] == {"id": None, "errno": 0, "error": "a JSON object with an integer id expected"}
        assert answers[1] == {"id": 9, "errno": 0, "error": "env: an object of strings expected"}
        assert not (tmp_path / "x.pid").exists()  # nothing was forked for either
        del server._dispatch
        rank = await spawn(server, files, "last", ["true"], PATH)
        assert await rank.exited == 0
    finally:
        await server.close()
