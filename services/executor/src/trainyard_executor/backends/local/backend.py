"""The local backend: attempts as process groups on this host, found again after a restart
by their pid files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

from trainyard_contracts import Isolation
from trainyard_executor.backends.local.attempt import LocalAttempt
from trainyard_executor.backends.local.ranks import GROUP_POLL_S, KILL_WAIT_S, Rank, is_ours, user_of

from .._proc import signal_group
from ..base import AttemptLaunch, FoundAttempt, LineSink, Resources
from ..capacity import detect_capacity
from ..cgroups import AttemptCgroup, Containment, detect_containment
from ..isolation import local_isolation
from ..jobfiles import PRIVATE_DIR, kill_user, take_back
from ..jobusers import JobUsers
from ..runtime_env import RuntimeEnvCache
from .forkserver_client import ForkServer

log = logging.getLogger(__name__)


class LocalBackend:
    """Runs each attempt as a local process group under ``root``."""

    name = "local"
    reads_job_metrics = True  # the job's work dir is on this host (backends/jobmetrics.py)
    work_dir_on_host = True  # a step's outputs folder is packed here for its dependents

    def __init__(
        self,
        root: Path,
        runtime_env_cache: RuntimeEnvCache | None = None,
        capacity_override: Resources | None = None,
        containment: Containment | None = None,
        job_users: JobUsers | None = None,
    ) -> None:
        self.root = Path(os.path.abspath(root))
        self.containment = containment or detect_containment(str(self.root))
        self.job_users = job_users
        self.python_bin: Path | None = None  # the Python jobs get on PATH (app.make_backend)
        self.runtime_envs = runtime_env_cache
        self._capacity_override = capacity_override
        self._capacity: Resources | None = None
        # the memory limit (settings' local_memory_limit): an attempt whose processes together hold
        # more resident memory than its spec asks is killed and fails "out of memory"
        self.memory_limit = False
        self.memory_check_seconds = 1.0
        # settings' local_fork_server: ranks forked by one long-lived supervisor process instead
        # of an interpreter each (forkserver.py); None: every rank its own interpreter
        self.fork_server: ForkServer | None = None

    def describe_isolation(self) -> str:
        """What keeps a job's processes together (said once when the executor starts)."""
        users = self.job_users.describe() if self.job_users is not None else "the executor's user"
        return f"{self.containment.describe()}; jobs run as {users}"

    def isolation(self) -> Isolation:
        return local_isolation(self.containment, self.job_users)

    def resolve_workdir(self, workdir: Path) -> Path:
        """Absolute workdirs are used as given; relative ones live under ``root``."""
        return Path(os.path.abspath(workdir if Path(workdir).is_absolute() else self.root / workdir))

    async def start(self, launch: AttemptLaunch, on_line: LineSink) -> LocalAttempt:
        return LocalAttempt(self, launch, on_line)

    # -- after a restart ----------------------------------------------------------------------

    @property
    def attempts_dir(self) -> Path:
        return self.root / "attempts"

    def state_file(self, job_id: str, attempt: int) -> Path:
        """The attempt's pid file (written once its first rank is about to start)."""
        self.attempts_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        return self.attempts_dir / f"{job_id}.{attempt}.json"

    def _load(self, ref: str) -> dict[str, Any]:
        data = json.loads(Path(ref).read_text())
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("not a pid file of this executor version")
        return data

    async def find_attempts(self) -> list[FoundAttempt]:
        """The attempts a previous run of this executor left, running or ended but not recorded."""
        found = []
        for path in sorted(self.attempts_dir.glob("*.json")) if self.attempts_dir.is_dir() else []:
            try:
                data = self._load(str(path))
                pids = [r.get("pid") for r in data["ranks"]]
                found.append(
                    FoundAttempt(
                        job_id=str(data["job_id"]),
                        attempt=int(data["attempt"]),
                        ref=str(path),
                        detail=f"pids {pids}",
                    )
                )
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("unreadable pid file %s (%s): removed", path, e)
                path.unlink(missing_ok=True)
        return found

    async def adopt(self, found: FoundAttempt, on_line: LineSink) -> LocalAttempt:
        """Watch an attempt a previous run of this executor started (see :meth:`find_attempts`)."""
        data = self._load(found.ref)
        launch = AttemptLaunch(
            job_id=found.job_id,
            attempt=found.attempt,
            argv=list(data.get("argv") or []),
            env={},
            workdir=Path(data["workdir"]),
            timeout_s=data.get("timeout_s"),
            grace_s=float(data.get("grace_s", 10.0)),
            checkpoint_dir=Path(data["checkpoint_dir"]) if data.get("checkpoint_dir") else None,
        )
        return LocalAttempt(self, launch, on_line, adopted=data)

    async def discard(self, found: FoundAttempt, grace_s: float) -> None:
        """Stop an attempt that is no longer current (SIGTERM, SIGKILL after the grace) and forget it."""
        try:
            data = self._load(found.ref)
        except (OSError, ValueError):
            Path(found.ref).unlink(missing_ok=True)
            return
        ranks = [Rank.from_json(r) for r in data.get("ranks", [])]
        live = [r for r in ranks if is_ours(r)]
        for rank in live:
            assert rank.pid is not None
            signal_group(rank.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace_s, 0.0)
        while any(is_ours(r) for r in live) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(GROUP_POLL_S)
        for rank in live:
            if is_ours(rank):
                assert rank.pid is not None
                signal_group(rank.pid, signal.SIGKILL)
        deadline = loop.time() + KILL_WAIT_S  # SIGKILL is delivered asynchronously: see it done
        while any(is_ours(r) for r in live) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(GROUP_POLL_S)
        if data.get("cgroup"):
            await AttemptCgroup(Path(data["cgroup"])).kill_and_remove(KILL_WAIT_S)
        user = user_of(data)
        if user is not None:
            if self.job_users is None or self.job_users.per_attempt:
                kill_user(user[0])
            take_back(Path(data["workdir"]))
        Path(found.ref).unlink(missing_ok=True)

    def capacity(self) -> Resources:
        if self._capacity_override is not None:
            return self._capacity_override
        if self._capacity is None:
            self._capacity = detect_capacity()
        return self._capacity
