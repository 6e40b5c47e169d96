"""Ray-style runtime environments for the local backend: a cached venv per requirement set.

The venv sees the executor's own packages (a .pth file adds its site-packages), so requirements the
executor already has cost nothing; others are installed once and reused by every later attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import uuid
from collections.abc import Sequence
from pathlib import Path


class RuntimeEnvError(RuntimeError):
    pass


def env_key(requirements: Sequence[str], python_version: str | None = None) -> str:
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    normal = sorted({r.strip() for r in requirements if r.strip()})
    digest = hashlib.sha256(json.dumps([version, normal]).encode()).hexdigest()
    return digest[:20]


class RuntimeEnvCache:
    def __init__(self, root: Path, base_python: str = sys.executable) -> None:
        self.root = root
        self.base_python = base_python
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, requirements: Sequence[str]) -> Path | None:
        """The bin dir of a venv with ``requirements`` installed (None when there are none)."""
        if not any(r.strip() for r in requirements):
            return None
        key = env_key(requirements)
        final = self.root / key
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if (final / ".ready").exists():
                return final / "bin"
            self.root.mkdir(parents=True, exist_ok=True)
            building = self.root / f".build-{key}-{uuid.uuid4().hex[:8]}"
            try:
                await self._run(self.base_python, "-m", "venv", str(building))
                self._inherit_executor_packages(building)
                await self._run(
                    str(building / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "-q",
                    *requirements,
                )
                (building / "requirements.json").write_text(json.dumps(sorted(requirements)))
                (building / ".ready").write_text("ok")
                if final.exists():
                    shutil.rmtree(final)
                os.rename(building, final)
            finally:
                if building.exists():
                    shutil.rmtree(building, ignore_errors=True)
            return final / "bin"

    def _inherit_executor_packages(self, venv: Path) -> None:
        site = next((venv / "lib").glob("python*/site-packages"))
        paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        (site / "_trainyard_executor_env.pth").write_text("\n".join(sorted(paths)) + "\n")

    async def _run(self, *argv: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip()[-3000:]
            raise RuntimeEnvError(f"building the runtime env failed ({argv[2:4]}): {tail}")
