"""The container engines' own rate, for issue 23's docker/podman comparison (bench_e2e.py).

``docker run --rm IMAGE true`` (``podman run --rm ...``) N times, one after another and with a given
concurrency, timed from the first start to the last exit. The CLI is what a person compares
against; Trainyard's backend speaks the engine's API and adds what the CLI here does not (an init,
a non-root uid, limits, labels, log streaming, a wait): the ratio names that whole difference.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from typing import Any

IMAGE = "trainyard-test/busybox:1"  # the executor tests' image (services/executor/tests/images)
# Podman here needs explicit ulimits on every run (/work/shared/ENVIRONMENT.md); the backend sets them
CLI_EXTRA = {
    "docker": [],
    "podman": ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"],
}
PODMAN_SOCKET = "/run/podman/podman.sock"


def engine_unavailable(engine: str) -> str:
    """'' when the engine's CLI runs and has the test image, else why this part is skipped."""
    cli = shutil.which(engine)
    if cli is None:
        return f"no `{engine}` CLI on PATH"
    probe = subprocess.run([cli, "image", "inspect", IMAGE], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"{engine}: image {IMAGE} missing or engine not answering ({probe.stderr.strip()[:200]})"
    if engine == "podman":
        from pathlib import Path

        if not Path(PODMAN_SOCKET).exists():
            return f"podman system service not running at {PODMAN_SOCKET} (scripts/engines.sh starts it)"
    return ""


async def run_loop(engine: str, n: int, concurrency: int) -> dict[str, Any]:
    """N `run --rm IMAGE true`, at most ``concurrency`` at a time."""
    cli = shutil.which(engine) or engine
    gate = asyncio.Semaphore(concurrency)
    errors: list[str] = []

    async def one() -> None:
        async with gate:
            process = await asyncio.create_subprocess_exec(
                cli,
                "run",
                "--rm",
                *CLI_EXTRA[engine],
                IMAGE,
                "true",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await process.communicate()
            if process.returncode != 0:
                errors.append(err.decode(errors="replace").strip()[:200])

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    seconds = time.perf_counter() - t0
    return {
        "command": f"{engine} run --rm {' '.join(CLI_EXTRA[engine])} {IMAGE} true".replace("  ", " "),
        "runs": n,
        "concurrency": concurrency,
        "seconds": round(seconds, 2),
        "rate": round((n - len(errors)) / seconds, 2),
        "failed": len(errors),
        "first_error": errors[0] if errors else None,
    }
