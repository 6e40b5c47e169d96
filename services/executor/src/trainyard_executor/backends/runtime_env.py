"""Cached per-requirements virtualenvs for jobs (Ray ``runtime_env`` style, pip only).

``RuntimeEnvCache(root).ensure(["pkg>=1", ...])`` returns the ``bin`` directory of a venv under
``root`` that has the requirements installed. Venvs are keyed by the normalised requirement list and
the base interpreter, built once (under a temporary name, then atomically renamed into place, with a
per-key asyncio lock plus an ``flock`` so concurrent attempts and executors on one host share the
build) and reused afterwards. The executor's own environment is made visible in each venv through a
``.pth`` file, so requirements already satisfied there install nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import sysconfig
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from ._proc import run_captured, tail

__all__ = [
    "MARKER_NAME",
    "RuntimeEnvCache",
    "RuntimeEnvError",
    "normalise_requirements",
    "readable_not_writable",
    "runtime_lock",
]

MARKER_NAME = ".trainyard-runtime-env.json"
"""Written into a venv as the last build step; its presence means the venv is complete."""

_PTH_NAME = "_trainyard_parent_env.pth"
_NAME_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(.*)$", re.DOTALL)
_LOCK_POLL_S = 0.1


class RuntimeEnvError(RuntimeError):
    """Building a runtime env failed; the message carries the failing tool's stderr tail."""


def normalise_requirements(requirements: Sequence[str]) -> tuple[str, ...]:
    """Strip, collapse whitespace, PEP 503-normalise the project name, drop empties/duplicates, sort."""
    out: set[str] = set()
    for raw in requirements:
        req = " ".join(raw.split())
        if not req:
            continue
        if req.startswith("-"):
            # a pip option (-r, --index-url, ...) smuggled in as a requirement
            raise RuntimeEnvError(f"invalid requirement (options are not allowed): {raw!r}")
        m = _NAME_RE.match(req)
        if m:
            req = re.sub(r"[-_.]+", "-", m.group(1)).lower() + m.group(2)
        out.add(req)
    return tuple(sorted(out))


class RuntimeEnvCache:
    def __init__(self, root: Path, base_python: str = sys.executable) -> None:
        self.root = Path(os.path.abspath(root))
        self.base_python = base_python
        self._locks: dict[str, asyncio.Lock] = {}
        self._base_info: dict[str, object] | None = None

    # ----------------------------------------------------------------------------------- keys

    async def _base_interpreter(self) -> dict[str, object]:
        if self._base_info is None:
            if os.path.realpath(self.base_python) == os.path.realpath(sys.executable):
                version, major_minor = sys.version, [sys.version_info[0], sys.version_info[1]]
            else:
                probe = "import json, sys; print(json.dumps([sys.version, list(sys.version_info[:2])]))"
                try:
                    res = await run_captured([self.base_python, "-c", probe])
                except OSError as e:
                    raise RuntimeEnvError(f"cannot run base python {self.base_python!r}: {e}") from e
                if res.returncode != 0:
                    raise RuntimeEnvError(
                        f"base python {self.base_python!r} failed (exit {res.returncode}): {tail(res.stderr)}"
                    )
                version, major_minor = json.loads(res.stdout)
            # expose the executor's packages only when the interpreter can actually load them
            same_abi = list(major_minor) == [sys.version_info[0], sys.version_info[1]]
            parent_paths: list[str] = []
            if same_abi:
                paths = sysconfig.get_paths()
                for name in ("purelib", "platlib"):
                    p = paths.get(name)
                    if p and p not in parent_paths:
                        parent_paths.append(p)
            self._base_info = {
                "python": version,
                "executable": os.path.realpath(self.base_python),
                "parent_paths": parent_paths,
            }
        return self._base_info

    async def key(self, requirements: Sequence[str]) -> str:
        """The cache key: sha256 of the normalised requirements + base interpreter (32 hex chars)."""
        material: dict[str, object] = {"requirements": list(normalise_requirements(requirements))}
        material.update(await self._base_interpreter())
        digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        return digest[:32]

    # ---------------------------------------------------------------------------------- build

    async def ensure(self, requirements: Sequence[str]) -> Path | None:
        """Return the bin dir of the venv for ``requirements``, building it if needed.

        An empty (after normalisation) requirement list needs no venv: returns None.
        Raises :class:`RuntimeEnvError` if the venv cannot be built.
        """
        reqs = normalise_requirements(requirements)
        if not reqs:
            return None
        key = await self.key(reqs)
        final = self.root / key
        if (final / MARKER_NAME).is_file():
            return final / "bin"
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock, self._file_lock(key):
            if (final / MARKER_NAME).is_file():
                return final / "bin"
            await asyncio.to_thread(self._clear_leftovers, key)
            await self._build(key, reqs, final)
        return final / "bin"

    @contextlib.asynccontextmanager
    async def _file_lock(self, key: str) -> AsyncIterator[None]:
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.root / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                # another process is building this key; poll so that we stay cancellable
                await asyncio.sleep(_LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _clear_leftovers(self, key: str) -> None:
        """Remove half-built dirs of ``key`` (crashed builds); called with the key's lock held."""
        for p in self.root.glob(f".build-{key}-*"):
            shutil.rmtree(p, ignore_errors=True)
        final = self.root / key
        if final.exists() and not (final / MARKER_NAME).is_file():
            shutil.rmtree(final, ignore_errors=True)

    async def _build(self, key: str, reqs: tuple[str, ...], final: Path) -> None:
        build_id = uuid.uuid4().hex
        tmp = self.root / f".build-{key}-{build_id[:8]}"
        try:
            await self._check([self.base_python, "-m", "venv", str(tmp)], "python -m venv")
            py = str(tmp / "bin" / "python")
            info = await self._base_interpreter()
            parent_paths = info["parent_paths"]
            assert isinstance(parent_paths, list)
            if parent_paths:
                site_dir = await self._check(
                    [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    "locating the venv's site-packages",
                )
                # addsitedir (unlike a bare path line) also processes the parent's own .pth files,
                # e.g. editable installs of the workspace packages. Appended after the venv's own
                # site-packages, so packages installed into the venv win.
                lines = [f"import site; site.addsitedir({p!r})\n" for p in parent_paths]
                Path(site_dir.strip(), _PTH_NAME).write_text("".join(lines))
            await self._check(
                [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q", *reqs],
                "pip install",
            )
            # what was resolved and installed (the parent's packages it sees included): the lock a
            # model version's lineage names
            frozen = await self._check([py, "-m", "pip", "freeze", "--all"], "pip freeze")
            packages = sorted(line.strip() for line in frozen.splitlines() if line.strip())
            await asyncio.to_thread(_relocate_scripts, tmp / "bin", str(tmp), str(final))
            marker = {
                "key": key,
                "requirements": list(reqs),
                "python": info["python"],
                "build_id": build_id,
                "lock": "sha256:" + hashlib.sha256("\n".join(packages).encode()).hexdigest(),
                "created_at": time.time(),
            }
            await asyncio.to_thread(readable_not_writable, tmp)
            (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
            os.chmod(tmp / MARKER_NAME, 0o644)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    async def _check(self, argv: list[str], what: str) -> str:
        env = dict(os.environ)
        env["PIP_NO_INPUT"] = "1"
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        try:
            res = await run_captured(argv, env=env)
        except OSError as e:
            raise RuntimeEnvError(f"{what}: cannot run {argv[0]!r}: {e}") from e
        if res.returncode != 0:
            detail = tail(res.stderr) or tail(res.stdout) or "(no output)"
            raise RuntimeEnvError(f"{what} failed with exit code {res.returncode}: {detail}")
        return res.stdout


def runtime_lock(venv_bin: Path) -> str | None:
    """The lock of the venv whose ``bin`` this is (its marker's; None for a venv built before)."""
    try:
        lock = json.loads((venv_bin.parent / MARKER_NAME).read_text()).get("lock")
    except (OSError, ValueError):
        return None
    return lock if isinstance(lock, str) else None


def readable_not_writable(root: Path) -> None:
    """Every directory and file of a built venv readable (and, where it was, executable) by every
    user and writable by its owner only, whatever the executor's umask: jobs of other users run
    it, and none may change what another team's job will run."""
    for directory, _dirs, files in os.walk(root):
        os.chmod(directory, 0o755)
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode & 0o7777
            wanted = 0o755 if mode & 0o111 else 0o644
            if mode != wanted:
                os.chmod(path, wanted)


def _relocate_scripts(bin_dir: Path, old: str, new: str) -> None:
    """Rewrite the build path to the final path in bin/ scripts (shebangs of pip-installed scripts,
    activate scripts), since the venv is built under a temporary name and renamed afterwards."""
    old_b, new_b = old.encode(), new.encode()
    for entry in bin_dir.iterdir():
        if entry.is_symlink() or not entry.is_file():
            continue
        data = entry.read_bytes()
        if old_b in data:
            mode = entry.stat().st_mode
            entry.write_bytes(data.replace(old_b, new_b))
            os.chmod(entry, mode)
