"""The host directories of a container attempt, made ready before its first container starts.

The work dir (``<work>/<job>/attempt-N``) is the one bind mount a container gets of the attempt
(plus the job's checkpoint dir): the outputs dir is reached through it (``TRAINYARD_OUTPUT_DIR``
under ``/trainyard/work``), never mounted on its own, because a second mount of a path inside the
work tree would be resolved by the engine when a container starts, and a rank of the same gang
that is already running could by then have replaced a component of it with a link.

Everything below the work dir is the job's (its repository, what it writes), so it is walked
without following links (:mod:`trainyard_shared.hostpaths`), nothing is chmodded, and the
directories the job must write to are given to the container's uid (when the executor runs as
root; otherwise the container runs as the executor's own uid and nothing changes hands).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trainyard_executor.backends.base import AttemptLaunch
from trainyard_executor.backends.jobmetrics import install_reporter
from trainyard_executor.backends.source import checkout
from trainyard_executor.backends.workdir import unpack_workdir
from trainyard_shared.hostpaths import UnsafePath, chown_tree, ensure_dir, open_dir

META_DIR = ".trainyard"
SOURCE_DIR = "src"

__all__ = ["META_DIR", "SOURCE_DIR", "AttemptDirs", "prepare_dirs", "prepare_source"]


@dataclass(frozen=True)
class AttemptDirs:
    source_dir: Path | None
    output_dir: Path
    output_rel: str
    """The outputs dir relative to the work dir (posix), as the container sees it below the mount."""


def _has_checkout(workdir: Path) -> bool:
    try:
        with ensure_dir(workdir, f"{SOURCE_DIR}/.git", create=False):
            return True
    except FileNotFoundError:
        return False


async def prepare_source(launch: AttemptLaunch) -> Path | None:
    """The work dir and its meta dir exist; the job's source is checked out in ``src`` (once: a
    redelivered start finds it). Raises SourceError or OSError (UnsafePath for a link)."""
    launch.workdir.mkdir(parents=True, exist_ok=True)
    with ensure_dir(launch.workdir, META_DIR):
        pass
    if launch.workdir_archive is not None:
        return await unpack_workdir(launch.workdir_archive, launch.workdir, launch.workdir_limits)
    if not launch.source_repo:
        return None
    source_dir = launch.workdir / SOURCE_DIR
    if not _has_checkout(launch.workdir):
        await checkout(launch.source_repo, launch.source_commit, source_dir)
    return source_dir


def prepare_dirs(
    launch: AttemptLaunch, source_dir: Path | None, owner: tuple[int, int] | None
) -> AttemptDirs:
    """Outputs and checkpoint dirs made (no link followed: a repository that commits ``outputs``
    as a link is refused), and, with ``owner``, the job's directories given to the container's
    uid. Blocking; raises OSError (UnsafePath naming the refused path)."""
    base_rel = SOURCE_DIR if source_dir is not None else "."
    output_rel = os.path.normpath(os.path.join(base_rel, launch.output_subdir))
    with ensure_dir(launch.workdir, ".", create=False) as work_fd:
        if source_dir is not None:
            with ensure_dir(work_fd, SOURCE_DIR, create=False) as src_fd:
                if owner is not None:
                    chown_tree(src_fd, *owner)
        try:
            out_fd = open_dir(work_fd, output_rel, create=True, owner=owner)
        except UnsafePath as exc:
            raise UnsafePath(exc.errno, f"outputs.path {launch.output_subdir!r}: {exc.strerror}") from exc
        try:
            if owner is not None:
                os.fchown(out_fd, *owner)
        finally:
            os.close(out_fd)
        install_reporter(work_fd)  # trainyard.report(): the executor's, readable by the job
        if owner is not None:
            os.fchown(work_fd, *owner)  # the job's scratch space (/trainyard/work)
    if launch.checkpoint_dir is not None:
        launch.checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
        with ensure_dir(launch.checkpoint_dir.parent, launch.checkpoint_dir.name, owner=owner) as fd:
            if owner is not None:
                os.fchown(fd, *owner)
    output_dir = launch.workdir / output_rel if output_rel != "." else launch.workdir
    return AttemptDirs(source_dir=source_dir, output_dir=output_dir, output_rel=output_rel)
