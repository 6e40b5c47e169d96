"""One local attempt: its ranks spawned under the supervisor, watched, tailed, stopped; or adopted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from trainyard_contracts.records import AttemptRuntime
from trainyard_executor.backends.local.ranks import (
    GROUP_POLL_S,
    KILL_WAIT_S,
    META_DIR,
    Rank,
    exit_reason,
    fmt_s,
    is_ours,
    lingers,
    ranks_usage,
    stop_that_counted,
    user_of,
    write_json,
)

from ...sampling import Reading, read_cgroup, read_process_groups
from .._proc import group_alive, same_process, signal_group, start_ticks
from ..base import AttemptLaunch, AttemptOutcome, LineSink, OutcomeKind
from ..cgroups import AttemptCgroup
from ..cursor import keep_cursor
from ..devices import rank_devices, visible_devices_env
from ..jobfiles import PRIVATE_DIR, hand_over, kill_user, open_private, private_dir, take_back
from ..jobmetrics import install_reporter, metrics_env
from ..jobusers import RunAsError
from ..runtime_env import RuntimeEnvError, runtime_lock
from ..source import SourceError, checkout
from ..workdir import WorkdirError, unpack_workdir
from .forkserver_client import ForkServerUnavailable
from .oom import cgroup_oom_kills, machine_oom_kills, name_oom
from .output import drain, follow_output

if TYPE_CHECKING:
    from trainyard_executor.backends.local.backend import LocalBackend


log = logging.getLogger(__name__)
SUPERVISOR = Path(__file__).resolve().parent.parent.parent / "supervise.py"
CURSOR_NAME = "log-cursor.json"
_ADOPTED_POLL_S = 0.1
_CURSOR_EVERY_S = 1.0
T = TypeVar("T")


class _Cancelled(Exception):
    """Internal: the attempt was cancelled while preparing."""


class LocalAttempt:
    """A running attempt: one process group per rank. Created by :meth:`LocalBackend.start` (or
    :meth:`LocalBackend.adopt` after an executor restart). Preparation (source checkout, runtime
    env) and the processes run in a background task, so ``start()`` returns at once, ``pid`` is
    None until the first rank has been spawned, and ``cancel()`` works in every phase.

    Each rank runs under ``supervise.py`` with its output going to files in the attempt's
    ``.trainyard/`` dir; those files are tailed to the line sink, so an executor that restarts can
    pick up the output (from the offsets it had shipped) and the exit status of processes it did
    not spawn.
    """

    def __init__(
        self,
        backend: LocalBackend,
        launch: AttemptLaunch,
        on_line: LineSink,
        adopted: Mapping[str, Any] | None = None,
    ) -> None:
        self.pid: int | None = None
        self._backend = backend
        self._launch = launch
        self._on_line = on_line
        self._sink_lock = asyncio.Lock()
        self._cancel_event = asyncio.Event()
        self._cancel_grace: float | None = None
        self._detached = False
        self._ranks: list[Rank] = []
        self._runtime: AttemptRuntime | None = None  # the runtime env's lock, once it is ready
        self._offsets: dict[str, int] = {}
        self._started_at = time.time()
        self._machine_ooms: int | None = None  # the kernel's OOM kills before it ran (oom.py)
        self._oom_kills: int | None = None  # counted in its cgroup, read before it is removed
        self._owner = f"{launch.job_id}.{launch.attempt}"
        self._user: tuple[int, int] | None = None
        if adopted is None:
            self._workdir = backend.resolve_workdir(launch.workdir)
            has_src = launch.source_repo or launch.workdir_archive
            self._cwd = self._workdir / "src" if has_src else self._workdir
            self._output_dir = self._cwd / launch.output_subdir
            self._cgroup = backend.containment.attempt(launch.job_id, launch.attempt)
            runner = self._run()
        else:
            self._workdir = Path(adopted["workdir"])
            self._cwd = Path(adopted["cwd"])
            self._output_dir = Path(adopted["output_dir"])
            self._started_at = float(adopted["started_at"])
            self._ranks = [Rank.from_json(r) for r in adopted["ranks"]]
            self.pid = self._ranks[0].pid if self._ranks else None
            self._offsets = self._read_cursor()
            self._cgroup = AttemptCgroup(Path(adopted["cgroup"])) if adopted.get("cgroup") else None
            self._user = user_of(adopted)
            self._machine_ooms = machine_oom_kills()
            if self._user is not None and backend.job_users is not None:
                backend.job_users.hold(self._user[0], self._owner)
            runner = self._run_adopted()
        self._state_file = backend.state_file(launch.job_id, launch.attempt)
        self._task: asyncio.Task[AttemptOutcome] = asyncio.create_task(
            runner, name=f"attempt:{launch.job_id}:{launch.attempt}"
        )

    @property
    def output_dir(self) -> Path:
        return self._output_dir

    @property
    def meta_dir(self) -> Path:
        """The attempt's bookkeeping: rank logs, exit files, the shipped-log cursor."""
        return self._workdir / META_DIR

    def done(self) -> bool:
        return self._task.done()

    async def wait(self) -> AttemptOutcome:
        # shielded: a caller giving up on wait() must not kill the attempt
        return await asyncio.shield(self._task)

    async def cancel(self, grace_s: float | None = None) -> None:
        """Request cancellation and wait until the attempt has ended (at most ~grace later).

        Every rank gets SIGTERM, then SIGKILL after the grace. A no-op once the attempt has ended;
        the first call's grace wins."""
        if self._task.done():
            return
        if not self._cancel_event.is_set():
            self._cancel_grace = self._launch.grace_s if grace_s is None else grace_s
            self._cancel_event.set()
        with contextlib.suppress(Exception):
            await asyncio.shield(self._task)

    async def release(self) -> None:
        """The outcome is recorded: a restarted executor must not find this attempt any more."""
        await asyncio.to_thread(self._state_file.unlink, missing_ok=True)
        if self._user is not None and self._backend.job_users is not None:
            self._backend.job_users.release(self._user[0], self._owner)

    async def detach(self) -> None:
        """Stop watching and leave the processes running, for the next executor to adopt (what an
        executor that is killed does; also how tests stand in for that kill)."""
        self._detached = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def read_usage(self) -> Reading | None:
        """(Blocking: the metrics shipper calls it in a worker thread.) What the attempt's
        processes use now: its cgroup's files where it has one, else its ranks' process groups
        (sampling.py). None before the ranks started or once they are gone."""
        if self._cgroup is not None:
            reading = read_cgroup(self._cgroup.path)
            if reading is not None:
                return reading
        return read_process_groups(rank.pid for rank in self._ranks if rank.pid is not None)

    # ------------------------------------------------------------------------------- internals

    def _outcome(self, kind: OutcomeKind, exit_code: int | None, reason: str) -> AttemptOutcome:
        return AttemptOutcome(
            kind=kind,
            exit_code=exit_code,
            reason=reason,
            output_dir=self._output_dir,
            usage=ranks_usage(self._ranks),
            runtime=self._runtime,
        )

    async def _emit(self, stream: str, line: str) -> None:
        # serialised, so the sink is never re-entered; a failing sink is logged, never fatal
        async with self._sink_lock:
            try:
                await self._on_line(stream, line)
            except Exception:
                log.exception("line sink failed for %s attempt %s", self._launch.job_id, self._launch.attempt)

    async def _unless_cancelled(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a preparation step; abort it (cancelling its subprocesses) if cancel() is called."""
        step = asyncio.ensure_future(coro)
        cancelled = asyncio.ensure_future(self._cancel_event.wait())
        try:
            await asyncio.wait({step, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await step
        if self._cancel_event.is_set():  # also when the step finished at the same time: cancel wins
            if step.done() and not step.cancelled():
                step.exception()  # retrieved, so an error of the abandoned step is not logged as unhandled
            raise _Cancelled
        return step.result()

    async def _run(self) -> AttemptOutcome:
        try:
            prepared = await self._prepare()
        except _Cancelled:
            return self._outcome("cancelled", None, "cancelled")
        if isinstance(prepared, AttemptOutcome):
            return prepared
        return await self._execute(prepared)

    async def _run_adopted(self) -> AttemptOutcome:
        for rank in self._ranks:
            rank.exited = asyncio.ensure_future(self._poll_exit(rank))
        return await self._watch()

    async def _prepare(self) -> dict[str, str] | AttemptOutcome:
        launch = self._launch
        if not launch.argv:
            return self._outcome("failed", None, "empty argv")
        sub = PurePosixPath(launch.output_subdir)
        if sub.is_absolute() or ".." in sub.parts or str(sub) in ("", "."):
            return self._outcome("failed", None, f"invalid output_subdir: {launch.output_subdir!r}")
        if launch.source_commit and not launch.source_repo:
            return self._outcome("failed", None, "source_commit given without source_repo")
        if launch.runtime_pip and self._backend.runtime_envs is None:
            return self._outcome("failed", None, "runtime_pip requested but no runtime env cache configured")
        if launch.gang is not None and not launch.gang.ranks:
            return self._outcome("failed", None, "a gang without ranks")
        if self._backend.job_users is not None:
            try:
                self._user = self._backend.job_users.allocate(self._owner)
            except RunAsError as e:
                return self._outcome("failed", None, str(e))
        try:
            if launch.source_repo or launch.workdir_archive is not None:
                await asyncio.to_thread(self._workdir.mkdir, mode=PRIVATE_DIR, parents=True, exist_ok=True)
            if launch.source_repo:
                if self._cwd.exists():  # a re-run of the same attempt dir starts from a fresh checkout
                    await asyncio.to_thread(shutil.rmtree, self._cwd)
                try:
                    await self._unless_cancelled(
                        checkout(launch.source_repo, launch.source_commit, self._cwd)
                    )
                except SourceError as e:
                    return self._outcome("failed", None, f"source checkout failed: {e}")
            elif launch.workdir_archive is not None:
                try:
                    await unpack_workdir(launch.workdir_archive, self._workdir, launch.workdir_limits)
                except WorkdirError as e:
                    return self._outcome("failed", None, str(e))
            tmp = await asyncio.to_thread(self._lay_out)
        except OSError as e:
            return self._outcome("failed", None, f"cannot prepare workdir {self._workdir}: {e}")

        venv_bin: Path | None = None
        cache = self._backend.runtime_envs
        if launch.runtime_pip and cache is not None:
            try:
                venv_bin = await self._unless_cancelled(cache.ensure(launch.runtime_pip))
            except RuntimeEnvError as e:
                return self._outcome("failed", None, f"runtime env setup failed: {e}")
            lock = runtime_lock(venv_bin) if venv_bin is not None else None
            self._runtime = AttemptRuntime(runtime_lock=lock) if lock else None

        env = dict(launch.env)
        path = env.get("PATH")
        if path is None:
            path = os.environ.get("PATH", os.defpath)
        if venv_bin is not None:
            path = f"{venv_bin}{os.pathsep}{path}" if path else str(venv_bin)
            env["VIRTUAL_ENV"] = str(venv_bin.parent)
        env["PATH"] = path
        env["TRAINYARD_OUTPUT_DIR"] = str(self._output_dir)
        env["TRAINYARD_WORKDIR"] = str(self._cwd)  # the job's cwd: the checkout when there is one
        metrics_env(env, str(self._workdir))
        if tmp is not None and ("TMPDIR" not in env or "TMPDIR" in launch.inherited_env):
            env["TMPDIR"] = str(tmp)  # /tmp is shared by every user: a file there is easily read
        return env

    def _lay_out(self) -> Path | None:
        """(Blocking: one worker-thread call per attempt, its file system calls off the event
        loop.) The work dir's folders and the reporter, handed over to the job's user; returns
        its private temporary directory (jobfiles.hand_over)."""
        launch = self._launch
        self._machine_ooms = machine_oom_kills()  # /proc/vmstat: before the ranks start
        self._workdir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        self._output_dir.mkdir(parents=True, exist_ok=True)
        install_reporter(self._workdir)  # trainyard.report(); handed over with the work dir
        if launch.checkpoint_dir is not None:
            launch.checkpoint_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        return hand_over(self._backend.root, self._workdir, launch.checkpoint_dir, self._user, META_DIR)

    def _before_spawn(self) -> None:
        """(Blocking: one worker-thread call per attempt.) The bookkeeping dir made ours and
        emptied of a re-run's records, the cgroup made, and the pid file written before anything
        runs: a restart finds the attempt even mid-spawn."""
        private_dir(self.meta_dir)
        for rank in self._ranks:  # a re-run of the same attempt dir: nothing from before counts
            rank.exit_file.unlink(missing_ok=True)
            rank.exit_file.with_suffix(".pid").unlink(missing_ok=True)
        (self.meta_dir / CURSOR_NAME).unlink(missing_ok=True)
        if self._cgroup is not None:
            self._cgroup.create()
        self._started_at = time.time()
        self._write_state()

    def _plan_ranks(self) -> list[Rank]:
        meta = self.meta_dir
        gang = self._launch.gang
        globals_ = gang.ranks if gang is not None else (0,)
        return [
            Rank(
                rank=rank,
                local_rank=local,
                stdout=meta / f"rank-{rank}.stdout",
                stderr=meta / f"rank-{rank}.stderr",
                exit_file=meta / f"rank-{rank}.exit",
            )
            for local, rank in enumerate(globals_)
        ]

    def _write_state(self) -> None:
        """The attempt's pid file: what a restarted executor needs to find and adopt it."""
        launch = self._launch
        state = {
            "version": 1,
            "job_id": launch.job_id,
            "attempt": launch.attempt,
            "argv": launch.argv,
            "workdir": str(self._workdir),
            "cwd": str(self._cwd),
            "output_dir": str(self._output_dir),
            "timeout_s": launch.timeout_s,
            "grace_s": launch.grace_s,
            "started_at": self._started_at,
            "gang": launch.gang is not None,
            "cgroup": str(self._cgroup.path) if self._cgroup is not None else None,
            "user": list(self._user) if self._user is not None else None,
            "checkpoint_dir": str(launch.checkpoint_dir) if launch.checkpoint_dir is not None else None,
            "ranks": [r.to_json() for r in self._ranks],
        }
        write_json(self._state_file, state)

    def _read_cursor(self) -> dict[str, int]:
        try:
            data = json.loads((self.meta_dir / CURSOR_NAME).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}

    async def _spawn(self, rank: Rank, env: dict[str, str]) -> None:
        supervisor_args = [
            str(rank.exit_file),
            *(("--cgroup", str(self._cgroup.path)) if self._cgroup is not None else ()),
            *(("--user", f"{self._user[0]}:{self._user[1]}") if self._user is not None else ()),
            "--",
            *self._launch.argv,
        ]
        # local files, opened without blocking to speak of; handed to the child, closed right after
        out = open_private(rank.stdout)
        err = open_private(rank.stderr)
        try:
            forks = self._backend.fork_server
            if forks is not None:
                with contextlib.suppress(ForkServerUnavailable):
                    forked = await forks.spawn(
                        supervisor_args, cwd=self._cwd, env=env, stdout=out, stderr=err
                    )
                    rank.pid, rank.start_ticks = forked.pid, forked.start_ticks
                    rank.exited = forked.exited
                    forked.exited.add_done_callback(rank.note_forked_exit)
                    return
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                str(SUPERVISOR),
                *supervisor_args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self._cwd,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(out)
            os.close(err)
        rank.proc = proc
        rank.pid = proc.pid
        rank.start_ticks = start_ticks(proc.pid)
        rank.exited = asyncio.ensure_future(proc.wait())

    async def _execute(self, env: dict[str, str]) -> AttemptOutcome:
        launch = self._launch
        if self._cancel_event.is_set():
            return self._outcome("cancelled", None, "cancelled")
        self._ranks = self._plan_ranks()
        try:
            await asyncio.to_thread(self._before_spawn)
        except OSError as e:
            return self._outcome("failed", None, f"cannot prepare workdir {self._workdir}: {e}")
        for rank in self._ranks:
            rank_env = env if launch.gang is None else {**env, **launch.gang.env(rank.local_rank)}
            if launch.gpu_devices is not None:  # only this rank's own devices
                own = rank_devices(launch.gpu_devices, launch.gpu, rank.local_rank)
                rank_env = {**rank_env, **visible_devices_env(own)}
            try:
                await self._spawn(rank, rank_env)
            except BaseException as e:
                for started in self._ranks:
                    if started.pid is not None:
                        signal_group(started.pid, signal.SIGKILL)
                if self._cgroup is not None:
                    await self._cgroup.kill_and_remove(KILL_WAIT_S)
                self._state_file.unlink(missing_ok=True)
                if not isinstance(e, OSError):
                    raise
                return self._outcome("failed", None, f"cannot start rank {rank.rank}: {e}")
            if self.pid is None:
                self.pid = rank.pid
            await asyncio.to_thread(self._write_state)  # its pid and start time, for a restart
        return await self._watch()

    def _take_back(self) -> None:
        """The attempt's processes are stopped: none of its uid may live on (inside its cgroup or
        not), and the next attempt given the same uid must not read what this one left."""
        assert self._user is not None
        users = self._backend.job_users
        if users is None or users.per_attempt:  # a shared uid is other jobs' too
            kill_user(self._user[0])
        take_back(self._workdir)
        if self._launch.checkpoint_dir is not None:
            take_back(self._launch.checkpoint_dir)

    async def _poll_exit(self, rank: Rank) -> None:
        """An adopted rank is not our child: nothing tells us when it ends, so look."""
        if rank.pid is None:
            return
        while same_process(rank.pid, rank.start_ticks):  # noqa: ASYNC110
            await asyncio.sleep(_ADOPTED_POLL_S)

    async def _watch(self) -> AttemptOutcome:
        """Stream every rank's output, wait for the end (all ranks, the first failure, timeout or
        cancel), stop what is left, and say how it went."""
        finished = asyncio.Event()
        gang = self._launch.gang is not None or len(self._ranks) > 1
        tails = [
            asyncio.create_task(follow_output(rank, stream, finished, self._offsets, self._emit, tagged=gang))
            for rank in self._ranks
            for stream in ("stdout", "stderr")
        ]
        cursor = asyncio.create_task(keep_cursor(lambda: self._offsets, self._write_cursor, _CURSOR_EVERY_S))
        try:
            kind, reason, grace, failed = await self._supervise()
            stop = [r for r in self._ranks if kind is not None or failed is not None or lingers(r)]
            await asyncio.gather(
                *(self._terminate(r, grace if kind is not None else self._launch.grace_s) for r in stop)
            )
            if self._cgroup is not None:
                self._oom_kills = cgroup_oom_kills(self._cgroup.path)  # gone with the cgroup
                # what left the ranks' process groups (a setsid() child) is still in the cgroup
                await self._cgroup.kill_and_remove(KILL_WAIT_S)
            if self._user is not None:
                await asyncio.to_thread(self._take_back)
            finished.set()
            await drain(tails, self._offsets)
            cursor.cancel()
            await asyncio.to_thread(self._write_cursor, dict(self._offsets))
        except BaseException:
            cursor.cancel()
            for task in tails:
                task.cancel()
            if not self._detached:
                # the supervising task itself was cancelled (e.g. executor shutdown): leave nothing
                for rank in self._ranks:
                    if rank.pid is not None and is_ours(rank):
                        signal_group(rank.pid, signal.SIGKILL)
                if self._cgroup is not None:
                    self._cgroup.kill()
                if self._user is not None:
                    self._take_back()
            raise
        first = self._ranks[0]
        if (kind := stop_that_counted(kind, self._ranks)) is not None:
            rc, _ = first.status()
            return self._outcome(kind, rc, reason)
        if failed is not None:
            rc, error = failed.status()
            why = error or self._named_oom(rc, exit_reason(rc))
            return self._outcome("failed", rc, f"rank {failed.rank}: {why}" if gang else why)
        return self._outcome("succeeded", 0, "exit code 0")

    async def _supervise(self) -> tuple[OutcomeKind | None, str, float, Rank | None]:
        """Wait for every rank to end, the first to fail, the timeout or a cancel.

        Returns (kind for timeout/cancel else None, reason, grace, the rank that failed)."""
        launch = self._launch
        cancel_wait: asyncio.Future[Any] = asyncio.ensure_future(self._cancel_event.wait())
        try:
            while True:
                for rank in self._ranks:
                    assert rank.exited is not None
                    if rank.exited.done() and rank.failed():
                        return None, "", launch.grace_s, rank
                running = [r.exited for r in self._ranks if r.exited is not None and not r.exited.done()]
                if not running:
                    return None, "", 0.0, None
                if self._cancel_event.is_set():
                    grace = self._cancel_grace if self._cancel_grace is not None else launch.grace_s
                    return "cancelled", "cancelled", grace, None
                remaining = None
                if launch.timeout_s is not None:
                    remaining = self._started_at + launch.timeout_s - time.time()
                    if remaining <= 0:
                        why = f"timed out after {fmt_s(launch.timeout_s)}"
                        return "timed_out", why, launch.grace_s, None
                limit = self._memory_limit_bytes()
                if limit:
                    over = await self._over_memory(limit)
                    if over is not None:
                        return "failed", over, 0.0, None  # killed at once, as the kernel would
                    every = self._backend.memory_check_seconds
                    remaining = every if remaining is None else min(remaining, every)
                await asyncio.wait(
                    {*running, cancel_wait}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            cancel_wait.cancel()

    def _named_oom(self, rc: int | None, why: str) -> str:
        """``why`` with the kernel's OOM killer named, where it can be known (oom.py)."""
        now, before = machine_oom_kills(), self._machine_ooms
        on_machine = now - before if now is not None and before is not None else None
        return name_oom(rc, why, self._oom_kills, on_machine)

    def _memory_limit_bytes(self) -> int:
        """The attempt's memory limit here (0: none): what its spec asks per replica, for each rank
        on this executor, when the backend enforces it (TRAINYARD_EXECUTOR_LOCAL_MEMORY_LIMIT)."""
        if not self._backend.memory_limit or not self._launch.memory_mb:
            return 0
        return self._launch.memory_mb * 1024 * 1024 * max(len(self._ranks), 1)

    async def _over_memory(self, limit: int) -> str | None:
        """The out-of-memory reason when the attempt's processes hold more than ``limit``."""
        reading = await asyncio.to_thread(self.read_usage)
        if reading is None or reading.rss_bytes <= limit:
            return None
        mib = 1024 * 1024
        return (
            f"killed: out of memory ({reading.rss_bytes // mib} MiB resident over the limit of "
            f"{limit // mib} MiB, resources.memory)"
        )

    async def _terminate(self, rank: Rank, grace: float) -> None:
        """SIGTERM the rank's group; SIGKILL it once ``grace`` has passed with anything still alive."""
        pgid = rank.pid
        if pgid is None or not is_ours(rank):
            return
        exited = rank.exited
        assert exited is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace, 0.0)
        signal_group(pgid, signal.SIGTERM)
        if not exited.done():
            await asyncio.wait({exited}, timeout=max(grace, 0.0))
        # the kernel offers no notification for "process group became empty": poll /proc
        while group_alive(pgid) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(GROUP_POLL_S)
        if not exited.done() or group_alive(pgid):
            rank.killed = rank.killed or not exited.done()
            signal_group(pgid, signal.SIGKILL)
        await exited

    def _write_cursor(self, offsets: Mapping[str, int]) -> None:
        try:
            write_json(self.meta_dir / CURSOR_NAME, dict(offsets))
        except OSError as e:
            log.warning("cannot write the log cursor of %s: %s", self._launch.job_id, e)
