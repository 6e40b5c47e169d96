"""Resolve a spec's git ref to a commit at submission, so every attempt runs the same code."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from trainyard_contracts import FieldError, JobSpec, SpecError

FULL_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


async def _git(*args: str, timeout: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "", f"git {args[0]} timed out after {timeout:g}s"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def resolve_commit(repo: str, ref: str, timeout: float) -> str:
    if FULL_SHA.match(ref):
        return ref
    if Path(repo).is_dir():
        code, out, err = await _git("-C", repo, "rev-parse", "--verify", f"{ref}^{{commit}}", timeout=timeout)
        if code == 0:
            return out.strip()
        raise SpecError(
            [
                FieldError(
                    field="source.ref",
                    message=f"cannot resolve {ref!r} in {repo}: {err.strip() or 'unknown ref'}",
                )
            ]
        )
    code, out, err = await _git("ls-remote", "--", repo, ref, timeout=timeout)
    lines = [line.split("\t") for line in out.splitlines() if "\t" in line]
    if code != 0 or not lines:
        raise SpecError(
            [
                FieldError(
                    field="source.ref",
                    message=f"cannot resolve {ref!r} in {repo}: {err.strip() or 'no such ref'}",
                )
            ]
        )
    # prefer an exact branch, then a tag's peeled commit, then whatever matched first
    by_name = {name: sha for sha, name in lines}
    for name in (f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", ref):
        if name in by_name:
            return by_name[name]
    return lines[0][0]


async def with_resolved_source(spec: JobSpec, timeout: float) -> JobSpec:
    if spec.source is None or spec.source.commit:
        return spec
    commit = await resolve_commit(spec.source.repo, spec.source.ref, timeout)
    return spec.model_copy(update={"source": spec.source.model_copy(update={"commit": commit})})
