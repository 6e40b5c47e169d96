"""Reports on a pod's log (Kubernetes): the reporter's marked stderr line, and its diversion.

The reporter in stream mode (``TRAINYARD_METRICS_STREAM=stderr``) writes one marked line to fd 2
with one write; :class:`MarkedLines` takes marked lines out of a log before it is split into the
job's lines, whatever the chunking, and :class:`ReportBuffer` holds them under the file's bounds.
Pure logic and a real child process; the pod log served by the Kubernetes stand-in is tested in
``test_kubernetes_backend.py`` (``test_reports_on_the_pods_log_reach_the_metrics_stream...``).
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trainyard_executor.backends.jobmetrics import REPORTER
from trainyard_executor.backends.kube_reporter import reporter_config_map, reporter_env, reporter_volume
from trainyard_executor.metricsfile import MetricsLimits, MetricsParser
from trainyard_executor.metricstream import MARK, MarkedLines, ReportBuffer

pytestmark = [pytest.mark.insight, pytest.mark.kubernetes]


def _reporter() -> dict[str, Any]:
    """The reporter's globals, run from its file as a job imports it (not a package here)."""
    return runpy.run_path(str(REPORTER))


def _report(step: int, **values: float) -> bytes:
    return MARK + json.dumps({"step": step, "time": 1.0, "values": values}).encode() + b"\n"


@pytest.mark.unit
def test_the_reporter_in_stream_mode_writes_one_marked_line_to_fd_2_with_one_write(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reporter = _reporter()
    assert reporter["MARK"] == MARK  # the job's side and the executor's agree
    monkeypatch.delenv("TRAINYARD_METRICS_FILE", raising=False)
    monkeypatch.delenv("TRAINYARD_RANK", raising=False)
    monkeypatch.setenv("TRAINYARD_METRICS_STREAM", "stderr")
    writes: list[tuple[int, bytes]] = []
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append((fd, bytes(data))) or len(data))
    reporter["report"](3, loss=0.5, acc=1)
    ((fd, data),) = writes  # one write: the line lands whole, no buffer to flush
    assert fd == 2 and data.startswith(MARK) and data.endswith(b"\n")
    sent = json.loads(data[len(MARK) :])
    assert (sent["step"], sent["values"]) == (3, {"loss": 0.5, "acc": 1.0})
    monkeypatch.setenv("TRAINYARD_RANK", "1")
    reporter["report"](4, loss=0.4)
    assert len(writes) == 1  # only rank 0 reports


def test_a_real_job_process_writes_its_report_on_stderr_after_what_it_left_open(tmp_path: Path) -> None:
    """A child Python with the reporter on its path (as in the pod): the marked line reaches fd 2 at
    once, after a progress bar the job left without its newline, and no metrics file is made."""
    script = (
        "import sys, trainyard\n"
        "sys.stderr.write('50%|###'); sys.stderr.flush()\n"
        "trainyard.report(7, loss=0.25)\n"
        "print('done')\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPORTER.parent),
        "TRAINYARD_METRICS_STREAM": "stderr",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, timeout=60, check=True
    )
    assert done.stdout == b"done\n"
    assert done.stderr.startswith(b"50%|###" + MARK)
    assert json.loads(done.stderr[len(b"50%|###" + MARK) :])["values"] == {"loss": 0.25}
    assert list(tmp_path.iterdir()) == []

    marked = MarkedLines(ReportBuffer())
    assert marked.feed(done.stderr) + marked.end() == b"50%|###"  # the progress bar stays in the log
    assert json.loads(marked.reports.read()[0])["step"] == 7


MLFLOW_JOB = (
    "import os, mlflow\n"
    "mlflow.set_tracking_uri('sqlite:///' + os.path.join(os.getcwd(), 'mlflow.db'))\n"
    "with mlflow.start_run():\n"
    "    mlflow.log_metric('loss', 0.5, step=1)\n"
    "    mlflow.log_metrics({'loss': 0.25, 'val acc': 0.75}, step=2)\n"
)


def test_mlflow_metrics_are_forwarded_as_marked_lines_in_stream_mode(tmp_path: Path) -> None:
    """Real MLflow (a sqlite store) in a child Python set up as in a pod: the ``sitecustomize``
    beside the reporter forwards its metrics to ``report``, which writes them on stderr."""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPORTER.parent),
        "TRAINYARD_METRICS_STREAM": "stderr",
    }
    done = subprocess.run(
        [sys.executable, "-c", MLFLOW_JOB], env=env, cwd=tmp_path, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reports = ReportBuffer()
    marked = MarkedLines(reports)
    marked.feed(done.stderr)
    marked.end()
    points = MetricsParser().feed(reports.read()[0])
    assert [(p.step, p.values) for p in points] == [(1, {"loss": 0.5}), (2, {"loss": 0.25, "val_acc": 0.75})]


LOG = b"".join(
    [
        b"epoch 1\n",
        _report(0, loss=1.0),
        b"half a progress bar",
        _report(1, loss=0.5),
        b"\x1e not a report\n",
        _report(2, loss=0.25).replace(b"\n", b"\r\n"),
        b"last line without an end",
    ]
)


@pytest.mark.unit
@pytest.mark.parametrize("cut", range(len(LOG) + 1))
def test_marked_lines_go_to_the_reports_and_the_rest_to_the_log_wherever_a_chunk_ends(cut: int) -> None:
    reports = ReportBuffer()
    marked = MarkedLines(reports)
    plain = marked.feed(LOG[:cut]) + marked.feed(LOG[cut:]) + marked.end()
    assert plain == b"epoch 1\nhalf a progress bar\x1e not a report\nlast line without an end"
    data, restarted = reports.read()
    assert not restarted
    points = MetricsParser().feed(data)
    assert [(p.step, p.values) for p in points] == [
        (0, {"loss": 1.0}),
        (1, {"loss": 0.5}),
        (2, {"loss": 0.25}),
    ]
    assert reports.read() == (b"", False)  # read once


@pytest.mark.unit
def test_a_hostile_megabyte_marked_line_is_dropped_whole_and_counted_never_logged() -> None:
    reports = ReportBuffer()
    marked = MarkedLines(reports)
    hostile = MARK + b'{"step": 1, "values": {"x": "' + b"A" * (1024 * 1024) + b'"}}\n'
    plain = b""
    for start in range(0, len(hostile), 64 * 1024):  # as the API streams it
        plain += marked.feed(hostile[start : start + 64 * 1024])
    plain += marked.feed(b"after\n" + _report(2, loss=0.1)) + marked.end()
    assert plain == b"after\n"
    assert (reports.dropped.count, reports.dropped.first) == (1, "a line over 16384 bytes")
    assert [p.step for p in MetricsParser().feed(reports.read()[0])] == [2]


@pytest.mark.unit
def test_a_forged_marked_line_is_diverted_and_then_dropped_by_the_parser() -> None:
    """Decision: a line with the marker is never the job's output, even when it is garbage: it is
    dropped and counted (the note in the job's log says so), not logged as output."""
    reports = ReportBuffer()
    marked = MarkedLines(reports)
    assert marked.feed(MARK + b"not json\n" + MARK + b'{"step": 1, "values": {"x": NaN}}\n') == b""
    parser = MetricsParser()
    assert parser.feed(reports.read()[0]) == []
    assert parser.dropped.count == 2 and parser.dropped.first == "a line that is not JSON"


@pytest.mark.unit
def test_other_ranks_reports_are_dropped_and_reports_past_the_bounds_counted() -> None:
    line = len(_report(0, loss=1.0)) - len(MARK)  # what the buffer holds of one report
    reports = ReportBuffer(MetricsLimits(read_bytes=3 * line + 10, max_bytes=10_000))
    rank1 = MarkedLines(reports, keep=False, who="rank 1")
    assert rank1.feed(_report(0, loss=1.0) + b"rank 1 output\n") == b"rank 1 output\n"
    assert reports.dropped.first == "a report from rank 1 (only rank 0 reports)"
    rank0 = MarkedLines(reports)
    rank0.feed(b"".join(_report(i, loss=1.0) for i in range(10)))  # 3 held until the shipper looks
    assert reports.dropped.count == 1 + 7
    assert len(MetricsParser().feed(reports.read()[0])) == 3
    rank0.feed(MARK + b'{"step": 1')
    assert rank0.end() == b"" and reports.dropped.first is not None and reports.dropped.count == 9


@pytest.mark.unit
def test_the_pod_gets_the_reporter_read_only_and_the_stream_setting() -> None:
    env = reporter_env({"PYTHONPATH": "/app", "LR": "0.1"})
    assert env == {"PYTHONPATH": "/trainyard/py:/app", "LR": "0.1", "TRAINYARD_METRICS_STREAM": "stderr"}
    mount, volume = reporter_volume()
    config: dict[str, Any] = reporter_config_map("jobs")
    assert mount["readOnly"] is True and volume["configMap"]["name"] == config["metadata"]["name"]
    assert volume["configMap"]["optional"] is True  # a cluster without it still runs jobs
    assert config["immutable"] is True
    assert set(config["data"]) == {"trainyard.py", "sitecustomize.py"}
    assert config["data"]["trainyard.py"] == REPORTER.read_text()
