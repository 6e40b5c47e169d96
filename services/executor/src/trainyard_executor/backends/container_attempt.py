"""One container of an attempt, or one rank of a gang: its wait, its log streams and their cursor."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docker.errors import APIError, DockerException, NotFound

from trainyard_contracts.records import AttemptRuntime
from trainyard_executor.backends.base import (
    AttemptLaunch,
    AttemptOutcome,
    LineSink,
)
from trainyard_executor.backends.container_dirs import META_DIR
from trainyard_executor.backends.cursor import keep_cursor
from trainyard_executor.backends.lines import drain_pumps, pump_lines
from trainyard_executor.backends.threads import in_thread
from trainyard_executor.sampling import Reading, stats_reading
from trainyard_shared.hostpaths import write_in

if TYPE_CHECKING:
    from trainyard_executor.backends.docker import DockerBackend


log = logging.getLogger("trainyard.executor.docker")


CURSOR_EVERY_S = 1.0
IMAGE_ID = re.compile(r"^(sha256:)?[0-9a-f]{64}$")


# after the exit: how long a follow stream may take to end by itself before it is closed (what it
# had not delivered is then read back from the stored log), and how long that read may take
LOG_DRAIN_S = 5.0


LOG_CATCH_UP_S = 60.0
WAIT_POLL_S = 300.0


def engine_error(exc: BaseException) -> str:
    if isinstance(exc, APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc) or type(exc).__name__


def cursor_name(rank: int | None) -> str:
    return f"container-{rank or 0}-cursor.json"


class ContainerAttempt:
    """One container: one attempt, or one rank of a gang (``rank`` set: lines are tagged)."""

    def __init__(
        self,
        backend: DockerBackend,
        container: Any,
        launch: AttemptLaunch,
        output_dir: Path,
        on_line: LineSink,
        *,
        rank: int | None = None,
        started_at: float | None = None,
        skip: dict[str, int] | None = None,
    ) -> None:
        self.backend = backend
        self.container = container
        self.container_id: str = container.id
        self.pid: int | None = (container.attrs.get("State") or {}).get("Pid") or None
        self.launch = launch
        self.output_dir = output_dir
        self.rank = rank
        self.started_at = started_at if started_at is not None else time.time()
        self._cancelled = False
        self._timed_out = False
        self._outcome_kind: str | None = None
        self._stopping: asyncio.Future[Any] | None = None
        self._streams: list[Any] = []
        self._skip = dict(skip or {})
        self._consumed: dict[str, int] = dict(self._skip)
        self._cursor_name = cursor_name(rank)
        self._exit = in_thread(self._wait_blocking, name=f"wait-{launch.job_id}")
        sink = on_line
        if rank is not None:
            prefix = f"[rank {rank}] "

            async def sink(stream: str, line: str) -> None:
                await on_line(stream, prefix + line)

        self._pumps = [
            asyncio.create_task(pump_lines(self._follow(name), name, sink)) for name in ("stdout", "stderr")
        ]
        self._cursor_task = asyncio.create_task(
            keep_cursor(lambda: self._consumed, self._write_cursor, CURSOR_EVERY_S)
        )

    # -- blocking parts (threads) -------------------------------------------------------------

    def _wait_exit(self) -> dict[str, Any]:
        """The engine's answer to "wait", asked again every ``WAIT_POLL_S`` while the container
        is still there: no wait can hang an attempt forever (an engine that never answers a wait
        on a container removed under it), and the engine going away still ends it at once."""
        while True:
            try:
                result: dict[str, Any] = self.container.wait(timeout=WAIT_POLL_S)
                return result
            except OSError:  # what the HTTP client raises on a read timeout or a lost connection
                try:
                    self.container.reload()
                except NotFound as exc:
                    raise ContainerGone("the container was removed before its exit status was read") from exc
                # still there (a reload on an engine that went away raises): wait again

    def _wait_blocking(self) -> tuple[int, str | None, bool]:
        result = self._wait_exit()
        oom = False
        try:
            self.container.reload()
            oom = bool((self.container.attrs.get("State") or {}).get("OOMKilled"))
        except NotFound as exc:
            # removed under us (only this attempt's release() removes it, after the outcome is
            # recorded: this is another executor's reaper or an operator); podman's wait then
            # may answer exit code 0 (seen in CI), so its status is not the job's
            raise ContainerGone("the container was removed before its exit status was read") from exc
        except DockerException:
            pass
        error = (result.get("Error") or {}).get("Message") if isinstance(result.get("Error"), dict) else None
        return int(result.get("StatusCode", -1)), error, oom

    def _follow(self, name: str) -> asyncio.StreamReader:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()

        def feed(data: bytes) -> None:
            loop.call_soon_threadsafe(reader.feed_data, data)

        def stream() -> None:
            skip = self._skip.get(name, 0)  # already shipped by the executor before a restart
            delivered = 0
            try:
                chunks = self.container.logs(
                    stream=True, follow=True, stdout=name == "stdout", stderr=name == "stderr"
                )
                self._streams.append(chunks)
                for chunk in chunks:
                    if delivered + len(chunk) > skip:
                        feed(chunk[max(0, skip - delivered) :])
                    delivered += len(chunk)
                    self._consumed[name] = max(delivered, skip)
            except Exception as exc:  # closed by _drain while a read was under way, or the engine
                log.debug("log stream ended", extra={"job_id": self.launch.job_id, "error": str(exc)})
            try:
                # ended, failed or closed by _drain: the log is whole once the job has exited
                self._wait_exit()
                self._catch_up(name, max(delivered, skip), feed)
                self._consumed[name] = max(delivered, skip, self._consumed.get(name, 0))
            except Exception as exc:  # the engine went away: the wait reports it
                log.debug("log not caught up", extra={"job_id": self.launch.job_id, "error": str(exc)})
            finally:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(reader.feed_eof)

        threading.Thread(target=stream, name=f"logs-{name}-{self.launch.job_id}", daemon=True).start()
        return reader

    def _catch_up(self, name: str, delivered: int, feed: Callable[[bytes], Any]) -> None:
        """What a follow stream missed, read back once the job has ended.

        The engines' follow mode now and then ends early: Docker 20.10 drops a last line without a
        newline (1 run in 3 here), and a stream that ended after its first line was seen once.
        The stored log is the reference; everything past the bytes already delivered is sent.
        """
        seen = 0
        missed = 0
        for chunk in self.container.logs(
            stream=True, follow=False, stdout=name == "stdout", stderr=name == "stderr"
        ):
            if seen + len(chunk) > delivered:
                part = chunk[max(0, delivered - seen) :]
                missed += len(part)
                feed(part)
            seen += len(chunk)
        self._consumed[name] = max(seen, delivered)
        if missed:
            log.info(
                "log stream caught up after the exit",
                extra={"job_id": self.launch.job_id, "stream": name, "bytes": missed},
            )

    def read_usage(self) -> Reading | None:
        """(Blocking: the metrics shipper calls it in a worker thread, once per sample interval.)
        The container's CPU and memory from one stats read of its engine (sampling.py); None when
        the engine does not answer or the container no longer runs."""
        try:
            stats = self.container.stats(stream=False)
        except (DockerException, OSError, ValueError):
            return None
        return stats_reading(stats) if isinstance(stats, dict) else None

    # -- the protocol -------------------------------------------------------------------------

    async def wait(self) -> AttemptOutcome:
        outcome = await self._wait()
        self._outcome_kind = outcome.kind
        # the image the container ran, by content: its id (sha256:...), from the container's own
        # inspect (the tag it was started by may point elsewhere since)
        image = (getattr(self.container, "attrs", None) or {}).get("Image")
        if isinstance(image, str) and IMAGE_ID.match(image):
            digest = image if ":" in image else f"sha256:{image}"  # Podman may leave the algorithm out
            return dataclasses.replace(outcome, runtime=AttemptRuntime(image_digest=digest))
        return outcome

    async def release(self) -> None:
        """The outcome is recorded: remove the container (a failed one stays if so configured)."""
        if self._outcome_kind in ("succeeded", "cancelled") or not self.backend.keep_failed:
            await self.backend._remove(self.container_id)

    async def detach(self) -> None:
        """Stop following; leave the container running for the next executor to adopt."""
        self._cursor_task.cancel()
        for stream in list(self._streams):
            with contextlib.suppress(Exception):
                stream.close()
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(self._cursor_task, *self._pumps, return_exceptions=True)

    def _write_cursor(self, consumed: Mapping[str, int]) -> None:
        # the work dir is the container's: a link planted there is replaced, never written through
        try:
            write_in(self.launch.workdir, META_DIR, self._cursor_name, json.dumps(dict(consumed)).encode())
        except OSError as exc:
            log.debug("log cursor not written", extra={"job_id": self.launch.job_id, "error": str(exc)})

    async def _wait(self) -> AttemptOutcome:
        timeout = self.launch.timeout_s
        if timeout is not None:
            timeout = max(0.0, self.started_at + timeout - time.time())
        try:
            try:
                await asyncio.wait_for(asyncio.shield(self._exit), timeout)
            except TimeoutError:
                self._timed_out = True
                self._stop(self.launch.grace_s)
            code, error, oom = await self._exit
        except Exception as exc:
            await self._drain()
            return AttemptOutcome("failed", None, f"lost the container: {engine_error(exc)}", self.output_dir)
        await self._drain()
        if self._stopping is not None:
            with contextlib.suppress(Exception):
                await self._stopping
        return self._outcome(code, error, oom)

    async def cancel(self, grace_s: float | None = None) -> None:
        self._cancelled = True
        self._stop(self.launch.grace_s if grace_s is None else grace_s)

    # -- helpers ------------------------------------------------------------------------------

    def _stop(self, grace_s: float) -> None:
        """The engine's own stop: its stop signal (SIGTERM), then SIGKILL after the grace."""
        if self._stopping is None and not self._exit.done():
            self._stopping = in_thread(
                self.container.stop, timeout=max(0, math.ceil(grace_s)), name=f"stop-{self.launch.job_id}"
            )

    async def _drain(self) -> None:
        """Every line up to the exit; a stream that does not end by itself is closed (and caught up)."""
        await drain_pumps(self._pumps, self._streams, LOG_DRAIN_S, LOG_CATCH_UP_S)
        self._cursor_task.cancel()
        self._write_cursor(self._consumed)

    def _outcome(self, code: int, error: str | None, oom: bool) -> AttemptOutcome:
        out = self.output_dir
        if self._timed_out:
            return AttemptOutcome("timed_out", code, f"timed out after {self.launch.timeout_s:g}s", out)
        if self._cancelled:
            return AttemptOutcome("cancelled", code, "cancelled", out)
        if code == 0:
            return AttemptOutcome("succeeded", 0, "exit code 0", out)
        if oom:
            limit = f" (limit {self.launch.memory_mb} MiB)" if self.launch.memory_mb else ""
            return AttemptOutcome("failed", code, f"killed: out of memory{limit}, exit code {code}", out)
        reason = f"exit code {code}"
        if code in (126, 127):  # what an init or a shell says when it cannot run the program
            what = "not found" if code == 127 else "not executable"
            reason += f" (command {what}? argv[0] is {self.launch.argv[0]!r})"
        if 128 < code <= 128 + 64 and (code - 128) in signal.Signals._value2member_map_:
            # what an init (or a shell) reports for a child killed by a signal
            hint = ""
            if code == 128 + signal.SIGKILL and self.launch.memory_mb:
                hint = f"; out of memory? limit {self.launch.memory_mb} MiB"
            reason += f" (killed by signal {signal.Signals(code - 128).name}{hint})"
        if error:
            reason += f": {error}"
        return AttemptOutcome("failed", code, reason, out)


class ContainerGone(RuntimeError):
    """The attempt's container was removed by someone else before its exit was read."""
