"""The local backend: each attempt is a process group on this machine, in its own work dir."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from trainyard_executor.backends.base import (
    AttemptLaunch,
    AttemptOutcome,
    LineSink,
    Resources,
)
from trainyard_executor.backends.runtime_env import RuntimeEnvCache
from trainyard_executor.backends.source import checkout

MAX_LINE = 64 * 1024
READ_CHUNK = 64 * 1024


def detect_capacity() -> Resources:
    cpu = float(len(os.sched_getaffinity(0)))
    memory_mb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
                break
    gpu = 0
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
            )
            gpu = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    return Resources(cpu=cpu, memory_mb=memory_mb, gpu=gpu)


class LocalAttempt:
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        launch: AttemptLaunch,
        output_dir: Path,
        on_line: LineSink,
    ) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid
        self.launch = launch
        self.output_dir = output_dir
        self._cancelled = False
        self._timed_out = False
        self._escalation: asyncio.Task[None] | None = None
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [
            asyncio.create_task(_pump(proc.stdout, "stdout", on_line)),
            asyncio.create_task(_pump(proc.stderr, "stderr", on_line)),
        ]

    async def wait(self) -> AttemptOutcome:
        try:
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), self.launch.timeout_s)
        except TimeoutError:
            self._timed_out = True
            await self._terminate(self.launch.grace_s)
            await self.proc.wait()
        self._kill_group()  # leftovers of a finished job must not outlive it
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._escalation is not None:
            self._escalation.cancel()
        return self._outcome(self.proc.returncode)

    def _outcome(self, code: int | None) -> AttemptOutcome:
        out = self.output_dir
        if self._timed_out:
            return AttemptOutcome("timed_out", code, f"timed out after {self.launch.timeout_s:g}s", out)
        if self._cancelled:
            return AttemptOutcome("cancelled", code, "cancelled", out)
        if code == 0:
            return AttemptOutcome("succeeded", 0, "exit code 0", out)
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else "?"
            return AttemptOutcome("failed", code, f"killed by signal {name}", out)
        return AttemptOutcome("failed", code, f"exit code {code}", out)

    async def cancel(self, grace_s: float | None = None) -> None:
        self._cancelled = True
        await self._terminate(self.launch.grace_s if grace_s is None else grace_s)

    async def _terminate(self, grace_s: float) -> None:
        if self.proc.returncode is not None:
            return
        self._signal_group(signal.SIGTERM)
        if self._escalation is None:
            self._escalation = asyncio.create_task(self._kill_after(grace_s))

    async def _kill_after(self, grace_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), grace_s)
            return
        self._kill_group()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def _kill_group(self) -> None:
        self._signal_group(signal.SIGKILL)


async def _pump(stream: asyncio.StreamReader, name: str, on_line: LineSink) -> None:
    """Lines as they come; a line longer than MAX_LINE is delivered in pieces."""
    buffer = b""
    while chunk := await stream.read(READ_CHUNK):
        buffer += chunk
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            line, buffer = buffer[:newline], buffer[newline + 1 :]
            for start in range(0, max(len(line), 1), MAX_LINE):
                await on_line(name, line[start : start + MAX_LINE].decode(errors="replace"))
        while len(buffer) >= MAX_LINE:
            await on_line(name, buffer[:MAX_LINE].decode(errors="replace"))
            buffer = buffer[MAX_LINE:]
    if buffer:
        await on_line(name, buffer.decode(errors="replace"))


class LocalBackend:
    name = "local"

    def __init__(
        self,
        root: Path,
        runtime_env_cache: RuntimeEnvCache | None = None,
        capacity_override: Resources | None = None,
    ) -> None:
        self.root = root
        self.runtime_envs = runtime_env_cache
        self._capacity = capacity_override

    def capacity(self) -> Resources:
        if self._capacity is None:
            self._capacity = detect_capacity()
        return self._capacity

    async def start(self, launch: AttemptLaunch, on_line: LineSink) -> LocalAttempt:
        launch.workdir.mkdir(parents=True, exist_ok=True)
        cwd = launch.workdir
        if launch.source_repo and launch.source_commit:
            cwd = launch.workdir / "src"
            if not (cwd / ".git").exists():
                await checkout(launch.source_repo, launch.source_commit, cwd)
        output_dir = cwd / launch.output_subdir
        output_dir.mkdir(parents=True, exist_ok=True)
        env = dict(launch.env)
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        if launch.runtime_pip:
            if self.runtime_envs is None:
                raise RuntimeError("runtime_env.pip is set but this executor has no env cache")
            bin_dir = await self.runtime_envs.ensure(launch.runtime_pip)
            if bin_dir is not None:
                env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
                env["VIRTUAL_ENV"] = str(bin_dir.parent)
        env["TRAINYARD_OUTPUT_DIR"] = str(output_dir.resolve())
        env["TRAINYARD_WORKDIR"] = str(cwd.resolve())
        try:
            proc = await asyncio.create_subprocess_exec(
                *launch.argv,
                cwd=cwd,
                env=env,
                start_new_session=True,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise RuntimeError(f"command not found: {launch.argv[0]}") from exc
        except PermissionError as exc:
            raise RuntimeError(f"command not executable: {launch.argv[0]}") from exc
        return LocalAttempt(proc, launch, output_dir, on_line)
