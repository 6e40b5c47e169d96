"""Check out the job's code at the commit resolved at submission."""

from __future__ import annotations

import asyncio
from pathlib import Path


class SourceError(RuntimeError):
    pass


async def _git(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SourceError(f"git {args[0]} failed: {err.decode(errors='replace').strip()[-2000:]}")


async def checkout(repo: str, commit: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    await _git("clone", "--quiet", "--no-checkout", repo, str(dest))
    await _git("-C", str(dest), "checkout", "--quiet", "--detach", commit)
