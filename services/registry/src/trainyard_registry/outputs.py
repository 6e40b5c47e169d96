"""A job's outputs, copied into a private staging folder before anything of them reaches MLflow.

The outputs folder is written by the job, so nothing in it is trusted: a symlink there
(``outputs/leak -> /proc/self/environ``) would make the registry upload a file of its own host.
Only regular files are copied, each opened relative to its parent folder's descriptor with
``O_NOFOLLOW`` (no symlink is followed at any level below the job's working directory, the
outputs folder itself included); a file with other hard links is skipped too (it may be another
file of the host under a second name). Every file has a size cap, all of them together another,
and the number of entries a third. What is left out is reported with a reason, never silently.

The copy is what MLflow uploads and what ``metrics.json`` is read from, so a file swapped after it
was checked is never read.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from trainyard_registry.mlflow_names import METRICS_FILE
from trainyard_shared.hostpaths import UnsafePath, open_dir

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO put where a file was is not waited on (it is then refused as not regular)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1024 * 1024

log = logging.getLogger("trainyard.registry.outputs")


class OutputsRefused(ValueError):
    """The outputs folder itself cannot be read safely (a symlink on its path, not a folder)."""


@dataclass(frozen=True)
class OutputLimits:
    max_file_bytes: int
    max_total_bytes: int
    max_entries: int


@dataclass
class StagedOutputs:
    files: int = 0
    total_bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)


def open_outputs_dir(outputs_dir: Path, job_part: str) -> int:
    """A descriptor of ``outputs_dir``, whose last components ``job_part`` (the spec's
    ``outputs.path``) are opened one at a time without following links.

    What comes before ``job_part`` is the executor's working directory (trusted); every component
    of ``job_part`` is the job's.
    """
    parts = tuple(p for p in PurePosixPath(job_part).parts if p not in ("", ".")) or (outputs_dir.name,)
    if ".." in parts or tuple(outputs_dir.parts[-len(parts) :]) != parts:
        raise OutputsRefused(f"outputs directory {outputs_dir} does not end in the job's {job_part!r}")
    workdir = Path(*outputs_dir.parts[: -len(parts)])
    try:
        return open_dir(workdir, PurePosixPath(*parts))
    except UnsafePath as exc:
        raise OutputsRefused(f"outputs directory {outputs_dir}: {exc} (a symlink is not followed)") from exc
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"outputs directory {outputs_dir} does not exist") from exc


def stage_outputs(outputs_fd: int, dest: Path, limits: OutputLimits) -> StagedOutputs:
    """Copy the regular files under ``outputs_fd`` into ``dest`` (an empty folder of the registry)."""
    staged = StagedOutputs()
    _copy_tree(outputs_fd, dest, PurePosixPath(), limits, staged, [0])
    return staged


def _copy_tree(
    dir_fd: int,
    dest: Path,
    rel: PurePosixPath,
    limits: OutputLimits,
    staged: StagedOutputs,
    seen: list[int],
) -> None:
    with os.scandir(dir_fd) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        path = rel / name
        seen[0] += 1
        if seen[0] > limits.max_entries:
            staged.skipped.append((str(path), f"over {limits.max_entries} entries; the rest not read"))
            return
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            staged.skipped.append((str(path), f"unreadable: {exc.strerror}"))
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:  # replaced by a link after the stat
                staged.skipped.append((str(path), f"not a folder: {exc.strerror}"))
                continue
            try:
                (dest / path).mkdir(mode=0o700)
                _copy_tree(child, dest, path, limits, staged, seen)
            finally:
                os.close(child)
        else:
            reason = _copy_file(dir_fd, name, dest / path, limits, staged)
            if reason:
                staged.skipped.append((str(path), reason))


def _copy_file(
    dir_fd: int, name: str, target: Path, limits: OutputLimits, staged: StagedOutputs
) -> str | None:
    """Copy one regular file; the reason it was skipped, or None."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        return "a symlink (not followed)" if exc.errno == errno.ELOOP else f"unreadable: {exc.strerror}"
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        if st.st_nlink > 1:
            return "a hard link (the same file has another name, maybe outside the outputs)"
        budget = min(limits.max_file_bytes, limits.max_total_bytes - staged.total_bytes)
        if st.st_size > limits.max_file_bytes:
            return f"{st.st_size} bytes, over the {limits.max_file_bytes}-byte cap per file"
        if st.st_size > budget:
            return f"{st.st_size} bytes, over what is left of the {limits.max_total_bytes}-byte cap in total"
        copied = 0
        with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as out:
            while chunk := src.read(min(_CHUNK, budget + 1 - copied)):
                copied += len(chunk)
                if copied > budget:  # it grew after the stat
                    break
                out.write(chunk)
        if copied > budget:
            target.unlink()
            return f"grew past the size cap ({budget} bytes) while it was copied"
    staged.files += 1
    staged.total_bytes += copied
    return None


def skipped_summary(skipped: list[tuple[str, str]], limit: int = 4000) -> str:
    """What was skipped, one ``path: reason`` per line, cut to ``limit`` characters with a count."""
    lines: list[str] = []
    size = 0
    for i, (path, reason) in enumerate(skipped):
        line = f"{path}: {reason}"
        if size + len(line) + 1 > limit - 40:
            lines.append(f"... and {len(skipped) - i} more")
            break
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def read_metrics_file(outputs_dir: Path) -> dict[str, float]:
    """The job's ``metrics.json`` (a flat JSON object of name -> number); {} when it is absent."""
    path = outputs_dir / METRICS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a JSON object of metric name -> number, got {type(data).__name__}"
        )
    metrics: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            log.warning("%s: metric %r is not a finite number (%r); not logged", path, key, value)
            continue
        metrics[str(key)] = float(value)
    return metrics
