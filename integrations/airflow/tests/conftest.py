"""The provider's tests: Airflow 3.3 on SQLite (its own AIRFLOW_HOME, this folder's dags/) against
a real embedded Trainyard stack started with the workspace's python (stack_server.py).

Run by `make test-airflow` in the provider's own venv; TRAINYARD_WORKSPACE_PYTHON names the
workspace's interpreter (the Makefile sets it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

HERE = Path(__file__).parent
REPO = HERE.parents[2]

# Airflow reads its configuration on import: the environment is set before any test imports it
_home = Path(tempfile.mkdtemp(prefix="trainyard-airflow-home-"))
# the dags folder: this folder's dags/ and docs/airflow.md's copy-paste example (it must run too)
DAGS = _home / "dags"
DAGS.mkdir()
for dag_file in (HERE / "dags").glob("*.py"):
    shutil.copy(dag_file, DAGS / dag_file.name)
_example = (REPO / "docs" / "airflow.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
(DAGS / "docs_example.py").write_text(_example)
os.environ.update(
    {
        "AIRFLOW_HOME": str(_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_home}/airflow.db",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # one key for this process and the airflow commands it starts: trigger kwargs are stored
        # encrypted (each process would otherwise make up its own)
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        # an asset's watchers become triggers only for DAGs that are not paused
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    }
)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_home, ignore_errors=True)


@dataclass(frozen=True)
class Stack:
    url: str
    token: str
    data: Path
    api_pid: int  # the submission service's process (the HTTP API), as first started


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """`airflow db migrate` once per session (SQLite, ~7 s)."""
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return _home


def _workspace_python() -> str:
    python = os.environ.get("TRAINYARD_WORKSPACE_PYTHON") or str(REPO / ".venv" / "bin" / "python")
    if not Path(python).exists():
        pytest.fail(f"no workspace python at {python}: run `make install` (make test-airflow does)")
    return python


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """nats-server and the six services (real processes), as `trainyard up` runs them; the
    connection ``trainyard_default`` points at it (AIRFLOW_CONN_*: what a deployment would set)."""
    data = tmp_path_factory.mktemp("trainyard")
    proc = subprocess.Popen(
        [_workspace_python(), str(HERE / "stack_server.py"), str(data / "data")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(data / "stack.err", "w"), text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()  # blocks until the stack is ready (or the process ended)
    if not line:
        proc.wait(timeout=60)
        pytest.fail("the embedded stack did not start:\n" + (data / "stack.err").read_text()[-4000:])
    answer = json.loads(line)
    found = Stack(url=answer["url"], token=answer["token"], data=data / "data", api_pid=answer["api_pid"])
    os.environ["AIRFLOW_CONN_TRAINYARD_DEFAULT"] = json.dumps(
        {"conn_type": "trainyard", "host": found.url, "password": found.token}
    )
    try:
        yield found
    finally:
        proc.stdin.close()  # the server stops the stack when its stdin closes
        stop(proc, first_wait=90)


def stop(proc: subprocess.Popen, first_wait: float = 0) -> None:  # type: ignore[type-arg]
    """End a process a test started: SIGTERM (after ``first_wait`` seconds for it to end on its
    own), then SIGKILL if it is still there a minute later."""
    for step in ("wait", "terminate", "kill"):
        if proc.poll() is not None:
            return
        if step != "wait":
            getattr(proc, step)()
        try:
            proc.wait(timeout=first_wait if step == "wait" else 60)
        except subprocess.TimeoutExpired:
            continue
