"""The local backend's fork server (forkserver.py and its client) with real processes: a forked
rank is the supervisor it would be as its own interpreter, leads its own session the moment its
pid is known, never sees the executor's environment, and a fork server that dies hands what
waits on it to polling and the next rank to the old way."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from trainyard_executor.backends.local.forkserver_client import ForkedRank, ForkServer, ForkServerUnavailable
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
        await wait_until(lambda: (tmp_path / "s.pid").exists(), "the supervisor's pid record")
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
