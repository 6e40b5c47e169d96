"""Check out a job's source code at a given commit."""

from __future__ import annotations

import os
from pathlib import Path

from trainyard_contracts.spec import strip_url_credentials

from ._proc import run_captured, tail

__all__ = ["SourceError", "checkout"]


class SourceError(RuntimeError):
    """The source checkout failed; the message carries git's stderr."""


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    # never block on a credential / host-key prompt: there is no terminal
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env


async def _git(what: str, *args: str) -> None:
    argv = ["git", *args]
    try:
        res = await run_captured(argv, env=_git_env())
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
    dest.parent.mkdir(parents=True, exist_ok=True)
    # "--" so that a repo string starting with "-" cannot be read as an option
    await _git("clone", "clone", "--quiet", "--no-checkout", "--", repo, str(dest))
    clean = strip_url_credentials(repo)
    if clean != repo:  # the checkout (which the job reads) keeps no credential in its remote
        await _git("remote set-url", "-C", str(dest), "remote", "set-url", "origin", clean)
    await _git("checkout", "-C", str(dest), "checkout", "--quiet", "--detach", rev)
