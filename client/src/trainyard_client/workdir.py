"""A job's ``workdir``: the user's folder packed, uploaded once by digest, and its git provenance.

The folder is packed by trainyard_shared.blobs (``.gitignore`` and ``.trainyardignore``
honoured, deterministic, size-capped). The API is asked ``HEAD /v1/workdirs/<digest>`` first and
the bytes are sent (``PUT``) only when it does not have them. The spec then carries
``workdir: {digest, commit, diff}`` instead of the path: ``commit`` is the folder's git HEAD and
``diff`` the sha256 of what is not committed (``git diff HEAD`` plus the untracked files not
ignored), so provenance says exactly what ran.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainyard_shared.blobs import PackLimits, pack_dir

__all__ = [
    "WorkdirUpload",
    "git_provenance",
    "local_repo_edits",
    "resolve_workdir_path",
    "workdir_path",
]

GIT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class WorkdirUpload:
    digest: str
    uploaded: bool
    """False when the API had this digest already (nothing was sent)."""
    commit: str | None
    diff: str | None
    files: int
    size: int

    def spec_field(self) -> dict[str, str]:
        fields = {"digest": self.digest, "commit": self.commit, "diff": self.diff}
        return {k: v for k, v in fields.items() if v is not None}


def _git(folder: Path, *args: str) -> bytes | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_provenance(folder: Path) -> tuple[str | None, str | None]:
    """(HEAD commit, sha256 of the uncommitted changes or None when clean); (None, None) outside git."""
    head = _git(folder, "rev-parse", "--verify", "-q", "HEAD")
    if head is None:
        return None, None
    diff = _git(folder, "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff", "--", ".") or b""
    untracked = _git(folder, "ls-files", "--others", "--exclude-standard", "-z", "--", ".") or b""
    if not diff and not untracked:
        return head.decode().strip(), None
    digest = hashlib.sha256(diff)
    for name in sorted(n for n in untracked.split(b"\0") if n):
        path = folder / name.decode(errors="surrogateescape")
        digest.update(b"\0untracked\0" + name + b"\0")
        if path.is_file() and not path.is_symlink():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return head.decode().strip(), "sha256:" + digest.hexdigest()


def local_repo_edits(repo: str) -> bool:
    """True when ``repo`` is a local git checkout with uncommitted changes (which a job with
    ``source: {repo: ...}`` would not run: it runs the commit)."""
    folder = Path(repo).expanduser()
    if not folder.is_dir():
        return False
    status = _git(folder, "status", "--porcelain", "--untracked-files=normal")
    return bool(status and status.strip())


def workdir_path(data: dict[str, Any]) -> str | None:
    """The local folder a spec mapping names in ``workdir`` (a string or ``{path: ...}``), if any."""
    workdir = data.get("workdir")
    if isinstance(workdir, str):
        return workdir
    if isinstance(workdir, dict):
        path = workdir.get("path")
        if isinstance(path, str):
            return path
    return None


def resolve_workdir_path(data: dict[str, Any], base: Path) -> bool:
    """Make a relative ``workdir`` absolute against ``base`` (the spec file's folder)."""
    path = workdir_path(data)
    if path is None or Path(path).expanduser().is_absolute():
        return False
    data["workdir"] = {"path": str((base / Path(path).expanduser()).resolve())}
    return True


def pack_workdir(folder: Path, limits: PackLimits | None = None) -> tuple[Any, str | None, str | None]:
    """The packed folder and its git provenance (PackError says what to leave out)."""
    packed = pack_dir(folder, limits)
    commit, diff = git_provenance(folder)
    return packed, commit, diff
