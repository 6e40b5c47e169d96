"""What a job needs to report metrics (``import trainyard; trainyard.report(step, loss=...)``, or
MLflow's ``log_metric``, forwarded by the ``sitecustomize`` beside it):
the reporter module on its ``PYTHONPATH`` and ``TRAINYARD_METRICS_FILE``, both in the attempt's
work dir, which the local backend runs the job in and the container backends mount. The executor
reads the file from the host side (:mod:`trainyard_executor.metricship`). Kubernetes pods get the
same two files from a ConfigMap and report on stderr instead (:mod:`.kube_reporter`).

Why a file in the work dir, not the bus: a job is hostile and never gets NATS credentials; the
work dir is already the job's own, on every backend that shares it with the host. Why a copy of
the module there, not a package: any interpreter and any image can import it, nothing to install,
and the job gets the version its executor reads.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from trainyard_executor.metricsfile import METRICS_FILE
from trainyard_shared.hostpaths import ensure_dir, write_file

REPORTER_DIR = ".trainyard-py"
REPORTER = Path(__file__).resolve().parent.parent / "reporter" / "trainyard.py"
# MLflow's metrics to trainyard.report as they are logged (chains to the sitecustomize it shadows)
MLFLOW_FORWARDER = REPORTER.with_name("sitecustomize.py")


@functools.cache
def _source(path: Path) -> bytes:
    return path.read_bytes()


def metrics_env(env: dict[str, str], job_workdir: str) -> None:
    """Point the job at its metrics file and the reporter (``job_workdir``: the work dir as the
    job sees it), ahead of any ``PYTHONPATH`` the spec sets."""
    env["TRAINYARD_METRICS_FILE"] = f"{job_workdir}/{METRICS_FILE}"
    lib = f"{job_workdir}/{REPORTER_DIR}"
    env["PYTHONPATH"] = f"{lib}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else lib


def install_reporter(workdir: Path | int, owner: tuple[int, int] | None = None) -> None:
    """``<workdir>/.trainyard-py/trainyard.py``, readable by the job whatever the executor's umask;
    no link followed (raises OSError, UnsafePath for a link)."""
    with ensure_dir(workdir, REPORTER_DIR, mode=0o755, owner=owner) as fd:
        for source in (REPORTER, MLFLOW_FORWARDER):
            write_file(fd, source.name, _source(source), 0o644)
            os.chmod(source.name, 0o644, dir_fd=fd)  # just put there by us: not a link
        os.fchmod(fd, 0o755)
