"""Check out a job's source code at a given commit.

The repository is checked against the installation's rule first (trainyard_shared.gitpolicy:
schemes, hosts, public addresses, local roots; ``TRAINYARD_GIT_*`` in the executor's environment),
and git runs with that rule's ``protocol.*`` options (``ext`` and ``file`` never, unless the repo is
an allowed local path), no redirects, no user or system gitconfig and no prompt.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from trainyard_contracts.spec import strip_url_credentials
from trainyard_shared.gitpolicy import GitSettings, RepoRefused, check_repo, git_env

from ._proc import run_captured, tail

__all__ = ["SourceError", "checkout"]


class SourceError(RuntimeError):
    """The source checkout failed; the message carries git's stderr."""


async def _git(what: str, *args: str, config: tuple[str, ...] = ()) -> None:
    argv = ["git", *config, *args]
    try:
        # never block on a credential / host-key prompt (there is no terminal); no gitconfig
        res = await run_captured(argv, env=git_env())
    except FileNotFoundError as e:
        raise SourceError("git is not installed (command not found: git)") from e
    except OSError as e:
        raise SourceError(f"could not run git: {e}") from e
    if res.returncode != 0:
        detail = tail(res.stderr) or tail(res.stdout) or "(no output)"
        raise SourceError(f"`git {what}` failed with exit code {res.returncode}: {detail}")


async def checkout(repo: str, commit: str | None, dest: Path) -> None:
    """Clone ``repo`` into ``dest`` (which must not exist or be empty) and detach at ``commit``.

    ``commit`` may be any revision git understands (full or abbreviated sha, tag, branch);
    None checks out the repo's default HEAD. Raises :class:`SourceError` on failure.
    """
    if not repo:
        raise SourceError("empty source repository")
    rev = commit or "HEAD"
    if rev.startswith("-"):
        raise SourceError(f"invalid source commit: {rev!r}")
    try:
        # resolving the host blocks: off the event loop
        checked = await asyncio.to_thread(check_repo, repo, GitSettings().policy())
    except RepoRefused as exc:
        raise SourceError(f"source repository refused: {exc}") from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    # "--" so that a repo string starting with "-" cannot be read as an option
    await _git(
        "clone",
        "clone",
        "--quiet",
        "--no-checkout",
        *checked.fetch_options,
        "--",
        repo,
        str(dest),
        config=checked.config,
    )
    clean = strip_url_credentials(repo)
    if clean != repo:  # the checkout (which the job reads) keeps no credential in its remote
        await _git("remote set-url", "-C", str(dest), "remote", "set-url", "origin", clean)
    await _git("checkout", "-C", str(dest), "checkout", "--quiet", "--detach", rev)
