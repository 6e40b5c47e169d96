"""Run attempts as local processes (pure asyncio, one process group per attempt)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Coroutine
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from .base import AttemptLaunch, AttemptOutcome, LineSink, OutcomeKind, Resources
from .runtime_env import RuntimeEnvCache, RuntimeEnvError
from .source import SourceError, checkout

__all__ = ["MAX_LINE", "LocalAttempt", "LocalBackend", "detect_capacity", "pump_lines"]

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
"""A longer output line is delivered as several pieces of at most this many bytes."""
READ_CHUNK = 64 * 1024
_STREAM_LIMIT = 1024 * 1024
_GROUP_POLL_S = 0.05
_DRAIN_TIMEOUT_S = 5.0
"""After the process group is gone, how long to wait for the pipes to reach EOF before closing them
(only matters if a process escaped the group with setsid() and still holds stdout/stderr)."""

T = TypeVar("T")


class _Cancelled(Exception):
    """Internal: the attempt was cancelled while preparing."""


class _ExitAwareProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Resolves ``exited`` as soon as the child exits. ``Process.wait()`` only returns once the
    pipes are closed too, which a grandchild still holding stdout can postpone indefinitely."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


def _fmt_s(seconds: float) -> str:
    return f"{seconds:g}s"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _exit_reason(rc: int) -> str:
    if rc < 0:
        return f"killed by signal {_signal_name(-rc)}"
    return f"exit code {rc}"


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is still in process group ``pgid``."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = None
    if entries is None:  # no procfs: fall back to signal 0 (counts zombies as alive)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." — comm may contain spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class LocalAttempt:
    """A running attempt. Created by :meth:`LocalBackend.start`; preparation (source checkout,
    runtime env) and the process itself run in a background task, so ``start()`` returns at once,
    ``pid`` is None until the process has been spawned, and ``cancel()`` works in every phase."""

    def __init__(self, backend: LocalBackend, launch: AttemptLaunch, on_line: LineSink) -> None:
        self.pid: int | None = None
        self._backend = backend
        self._launch = launch
        self._on_line = on_line
        self._sink_lock = asyncio.Lock()
        self._cancel_event = asyncio.Event()
        self._cancel_grace: float | None = None
        self._workdir = backend.resolve_workdir(launch.workdir)
        self._cwd = self._workdir / "src" if launch.source_repo else self._workdir
        self._output_dir = self._cwd / launch.output_subdir
        self._task: asyncio.Task[AttemptOutcome] = asyncio.create_task(
            self._run(), name=f"attempt:{launch.job_id}:{launch.attempt}"
        )

    @property
    def output_dir(self) -> Path:
        return self._output_dir

    def done(self) -> bool:
        return self._task.done()

    async def wait(self) -> AttemptOutcome:
        # shielded: a caller giving up on wait() must not kill the attempt
        return await asyncio.shield(self._task)

    async def cancel(self, grace_s: float | None = None) -> None:
        """Request cancellation and wait until the attempt has ended (at most ~grace later).

        A no-op once the attempt has ended; the first call's grace wins."""
        if self._task.done():
            return
        if not self._cancel_event.is_set():
            self._cancel_grace = self._launch.grace_s if grace_s is None else grace_s
            self._cancel_event.set()
        with contextlib.suppress(Exception):
            await asyncio.shield(self._task)

    # ------------------------------------------------------------------------------- internals

    def _outcome(self, kind: OutcomeKind, exit_code: int | None, reason: str) -> AttemptOutcome:
        return AttemptOutcome(kind=kind, exit_code=exit_code, reason=reason, output_dir=self._output_dir)

    async def _emit(self, stream: str, line: str) -> None:
        # serialised, so the sink is never re-entered; a failing sink is logged, never fatal
        # (the pipes must keep draining or the child would block on a full pipe)
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
        try:
            self._workdir.mkdir(parents=True, exist_ok=True)
            if launch.source_repo:
                if self._cwd.exists():  # a re-run of the same attempt dir starts from a fresh checkout
                    await asyncio.to_thread(shutil.rmtree, self._cwd)
                try:
                    await self._unless_cancelled(
                        checkout(launch.source_repo, launch.source_commit, self._cwd)
                    )
                except SourceError as e:
                    return self._outcome("failed", None, f"source checkout failed: {e}")
            self._output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return self._outcome("failed", None, f"cannot prepare workdir {self._workdir}: {e}")

        venv_bin: Path | None = None
        cache = self._backend.runtime_envs
        if launch.runtime_pip and cache is not None:
            try:
                venv_bin = await self._unless_cancelled(cache.ensure(launch.runtime_pip))
            except RuntimeEnvError as e:
                return self._outcome("failed", None, f"runtime env setup failed: {e}")

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
        return env

    async def _spawn(self, env: dict[str, str]) -> tuple[asyncio.SubprocessTransport, _ExitAwareProtocol]:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: _ExitAwareProtocol(limit=_STREAM_LIMIT, loop=loop),
            *self._launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self._cwd,
            env=env,
            start_new_session=True,
        )
        return transport, protocol

    async def _execute(self, env: dict[str, str]) -> AttemptOutcome:
        launch = self._launch
        argv0 = launch.argv[0]
        if self._cancel_event.is_set():
            return self._outcome("cancelled", None, "cancelled")
        try:
            transport, protocol = await self._spawn(env)
        except FileNotFoundError:
            return self._outcome("failed", None, f"command not found: {argv0}")
        except PermissionError:
            return self._outcome("failed", None, f"command not executable: {argv0}")
        except OSError as e:
            return self._outcome("failed", None, f"cannot start {argv0}: {e}")

        pgid = transport.get_pid()
        self.pid = pgid
        readers = [
            asyncio.create_task(pump_lines(reader, name, self._emit))
            for name, reader in (("stdout", protocol.stdout), ("stderr", protocol.stderr))
            if reader is not None
        ]
        try:
            kind, reason, grace = await self._supervise(protocol.exited)
            if kind is not None:
                await self._terminate_group(pgid, protocol.exited, grace)
            elif _group_alive(pgid):
                # the main process is done: stragglers it left in its group go too
                await self._terminate_group(pgid, protocol.exited, launch.grace_s)
            await self._drain(readers, transport)
        except BaseException:
            # the supervising task itself was cancelled (e.g. executor shutdown): leave nothing behind
            _signal_group(pgid, signal.SIGKILL)
            for r in readers:
                r.cancel()
            transport.close()
            raise
        rc = transport.get_returncode()
        assert rc is not None
        if kind is None:
            return self._outcome("succeeded" if rc == 0 else "failed", rc, _exit_reason(rc))
        return self._outcome(kind, rc, reason)

    async def _supervise(self, exited: asyncio.Future[None]) -> tuple[OutcomeKind | None, str, float]:
        """Wait for exit, timeout or cancel. Returns (kind or None for a natural exit, reason, grace)."""
        launch = self._launch
        cancel_wait: asyncio.Future[Any] = asyncio.ensure_future(self._cancel_event.wait())
        try:
            await asyncio.wait(
                {exited, cancel_wait},
                timeout=launch.timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            cancel_wait.cancel()
        if exited.done():
            return None, "", 0.0
        if self._cancel_event.is_set():
            grace = self._cancel_grace if self._cancel_grace is not None else launch.grace_s
            return "cancelled", "cancelled", grace
        assert launch.timeout_s is not None
        return "timed_out", f"timed out after {_fmt_s(launch.timeout_s)}", launch.grace_s

    async def _terminate_group(self, pgid: int, exited: asyncio.Future[None], grace: float) -> None:
        """SIGTERM the group; SIGKILL it once ``grace`` has passed with anything still alive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace, 0.0)
        _signal_group(pgid, signal.SIGTERM)
        if not exited.done():
            await asyncio.wait({exited}, timeout=max(grace, 0.0))
        # the kernel offers no notification for "process group became empty": poll /proc
        while _group_alive(pgid) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_GROUP_POLL_S)
        if not exited.done() or _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        await exited

    async def _drain(self, readers: list[asyncio.Task[None]], transport: asyncio.BaseTransport) -> None:
        _, pending = await asyncio.wait(readers, timeout=_DRAIN_TIMEOUT_S)
        if pending:
            # someone outside the group still holds the pipes: close our ends; the readers then see
            # EOF after delivering what was already read
            log.warning(
                "attempt %s/%s: output pipes still open, closing", self._launch.job_id, self._launch.attempt
            )
            transport.close()
            await asyncio.wait(pending)


def _safe_cut(data: bytes | bytearray, limit: int) -> int:
    """A cut point <= ``limit`` (``len(data) > limit``) that does not split a UTF-8 character."""
    cut = limit
    for _ in range(3):
        if data[cut] & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            return cut
        cut -= 1
    return cut if data[cut] & 0xC0 != 0x80 else limit


async def _deliver(line: bytes | bytearray, name: str, on_line: LineSink) -> None:
    if line.endswith(b"\r"):
        line = line[:-1]
    while len(line) > MAX_LINE:
        cut = _safe_cut(line, MAX_LINE)
        await on_line(name, line[:cut].decode("utf-8", errors="replace"))
        line = line[cut:]
    await on_line(name, line.decode("utf-8", errors="replace"))


async def pump_lines(stream: asyncio.StreamReader, name: str, on_line: LineSink) -> None:
    """Deliver the lines of ``stream`` to ``on_line(name, line)`` as they arrive, until EOF.

    Lines are decoded as UTF-8 (invalid bytes replaced) without their "\n" (or "\r\n"). A line
    longer than :data:`MAX_LINE` bytes is delivered as several pieces of at most MAX_LINE bytes,
    never splitting a character; memory stays bounded whatever the line length. A last line without
    a newline is delivered at EOF.
    """
    buf = bytearray()
    while True:
        try:
            chunk = await stream.read(READ_CHUNK)
        except (ConnectionError, OSError):
            break
        if not chunk:
            break
        buf += chunk
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            await _deliver(buf[start:nl], name, on_line)
            start = nl + 1
        del buf[:start]
        while len(buf) > MAX_LINE:
            cut = _safe_cut(buf, MAX_LINE)
            await on_line(name, buf[:cut].decode("utf-8", errors="replace"))
            del buf[:cut]
    if buf:
        await _deliver(buf, name, on_line)


_pump = pump_lines  # the name the container backends import


class LocalBackend:
    """Runs each attempt as a local process group under ``root``."""

    name = "local"

    def __init__(
        self,
        root: Path,
        runtime_env_cache: RuntimeEnvCache | None = None,
        capacity_override: Resources | None = None,
    ) -> None:
        self.root = Path(os.path.abspath(root))
        self.runtime_envs = runtime_env_cache
        self._capacity_override = capacity_override
        self._capacity: Resources | None = None

    def resolve_workdir(self, workdir: Path) -> Path:
        """Absolute workdirs are used as given; relative ones live under ``root``."""
        return Path(os.path.abspath(workdir if Path(workdir).is_absolute() else self.root / workdir))

    async def start(self, launch: AttemptLaunch, on_line: LineSink) -> LocalAttempt:
        return LocalAttempt(self, launch, on_line)

    def capacity(self) -> Resources:
        if self._capacity_override is not None:
            return self._capacity_override
        if self._capacity is None:
            self._capacity = detect_capacity()
        return self._capacity


def detect_capacity() -> Resources:
    """CPUs this process may run on, total memory (/proc/meminfo), GPUs (``nvidia-smi -L``)."""
    return Resources(cpu=float(_cpu_count()), memory_mb=_memory_mb(), gpu=_gpu_count())


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    except (ValueError, OSError):
        return 0


def _gpu_count() -> int:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        res = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    if res.returncode != 0:
        return 0
    return sum(1 for line in res.stdout.splitlines() if line.startswith("GPU "))
