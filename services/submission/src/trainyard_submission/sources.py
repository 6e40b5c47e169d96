"""Resolve a spec's git ref to a commit at submission, so every attempt runs the same code.

The repo and ref come from whoever submits, so git runs with no shell, no terminal prompt, the
``ext::`` transport (which runs a command) disabled, ``--end-of-options``/``--`` before anything the
user wrote, and a timeout; a ref that starts with ``-`` is refused. Credentials in the URL never
appear in an error message. Before any of it, the installation's rule (trainyard_shared.gitpolicy)
decides whether the repository may be fetched at all: schemes, hosts, public addresses only,
local paths under allowed roots; git then runs with that rule's protocol options and no gitconfig.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from trainyard_contracts import FieldError, JobSpec, SpecError
from trainyard_contracts.spec import Source, redact_url
from trainyard_shared.gitpolicy import Checked, GitPolicy, GitSettings, RepoRefused, check_repo, git_env

FULL_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


async def _git(*args: str, timeout: float, config: tuple[str, ...] = ()) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "git",
        "-c",
        "protocol.ext.allow=never",
        *config,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=git_env({"PATH": "/usr/local/bin:/usr/bin:/bin"}),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "", f"git {args[0]} timed out after {timeout:g}s"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _refused(ref: str, repo: str, why: str) -> SpecError:
    shown = redact_url(repo)
    why = why.replace(repo, shown)
    return SpecError([FieldError(field="source.ref", message=f"cannot resolve {ref!r} in {shown}: {why}")])


async def resolve_commit(
    repo: str, ref: str, timeout: float, config: tuple[str, ...] = (), fetch_options: tuple[str, ...] = ()
) -> str:
    if FULL_SHA.match(ref):
        return ref
    if ref.startswith("-") or any(ord(c) < 32 for c in ref):
        raise SpecError([FieldError(field="source.ref", message="must be a branch, tag or commit name")])
    if Path(repo).is_dir():
        code, out, err = await _git(
            "-C",
            repo,
            "rev-parse",
            "--verify",
            "--end-of-options",
            f"{ref}^{{commit}}",
            timeout=timeout,
            config=config,
        )
        if code == 0:
            return out.strip()
        raise _refused(ref, repo, err.strip() or "unknown ref")
    code, out, err = await _git("ls-remote", *fetch_options, "--", repo, ref, timeout=timeout, config=config)
    lines = [line.split("\t") for line in out.splitlines() if "\t" in line]
    if code != 0 or not lines:
        raise _refused(ref, repo, err.strip() or "no such ref")
    # prefer an exact branch, then a tag's peeled commit, then whatever matched first
    by_name = {name: sha for sha, name in lines}
    for name in (f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}", ref):
        if name in by_name:
            return by_name[name]
    return lines[0][0]


async def checked_source(source: Source, policy: GitPolicy) -> Checked:
    """The installation's verdict on ``source.repo`` (gitpolicy.py), as a ``source.repo`` field
    error naming the repo without its credential.

    Checked whether or not the commit is given: the executor fetches the same repo."""
    try:
        # resolving the host blocks: off the event loop
        return await asyncio.to_thread(check_repo, source.repo, policy)
    except RepoRefused as exc:
        shown = redact_url(source.clone_url())
        raise SpecError([FieldError(field="source.repo", message=f"cannot fetch {shown}: {exc}")]) from exc


async def with_resolved_source(spec: JobSpec, timeout: float, policy: GitPolicy | None = None) -> JobSpec:
    if spec.source is None:
        return spec
    checked = await checked_source(spec.source, policy or GitSettings().policy())
    if spec.source.commit:
        return spec
    # the credential (split out of the URL when the spec was read) is needed to reach the repo
    commit = await resolve_commit(
        spec.source.clone_url(), spec.source.ref, timeout, checked.config, checked.fetch_options
    )
    return spec.model_copy(update={"source": spec.source.model_copy(update={"commit": commit})})
