"""A Python that a job's own user can run, for ``python_on_path``.

The executor's Python may live where other users cannot pass (here: the venv's interpreter is
``/root/.pyenv/...``, and ``/root`` is 0700), which made ``run_as=auto`` fall back to root for every
job. When that is so, and this machine has a system Python of the same version (same ABI), a venv
of it is made once in the runtime-env cache (root's, readable by all, writable by none) with a
``.pth`` that adds the executor's own site-packages, and that venv's ``bin`` goes first on jobs'
PATH instead: per-job users then work, with the same packages.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from .jobusers import unreachable
from .runtime_env import readable_not_writable

log = logging.getLogger("trainyard.executor.jobpython")


def job_python_bin(cache: Path) -> Path:
    """The folder to put first on jobs' PATH: the executor's own venv ``bin`` when any user can
    reach its interpreter, else a venv of the system Python made in ``cache`` (the executor's own
    when there is none of the same version; ``run_as=auto`` then says what blocks)."""
    own = Path(sys.executable).parent
    if unreachable(Path(os.path.realpath(sys.executable)).parent, None, None) is None:
        return own
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    system = Path(f"/usr/bin/python{version}")
    if not os.access(system, os.X_OK):
        return own
    target = cache / f"job-python-{version}"
    if not (target / "bin" / "python").exists():
        try:
            _build(system, target, version)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("could not make a Python for jobs", extra={"at": str(target), "error": str(exc)})
            return own
    return target / "bin"


def _build(system: Path, target: Path, version: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".job-python-", dir=target.parent))
    try:
        subprocess.run([str(system), "-m", "venv", "--without-pip", str(staging)], check=True, timeout=120)
        packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        site = staging / "lib" / f"python{version}" / "site-packages"
        # addsitedir, not a bare path: the executor's own .pth files (editable installs) count too
        lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in sorted(packages))
        (site / "trainyard-executor-packages.pth").write_text(lines)
        readable_not_writable(staging)
        try:
            os.rename(staging, target)  # whole or not at all
        except OSError:
            if not (target / "bin" / "python").exists():  # not another executor's, made meanwhile
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
