"""`trainyard top`'s table (pure): CPU and MEM columns where the executor samples use, none where
no running job has a sample; the job's own values apart from the executor's sys.* samples."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from trainyard_client.cli.insight import top_table

pytestmark = [pytest.mark.unit, pytest.mark.insight]


def row(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "job_id": "0mx7b2k1q8c0w3zd",
        "name": "topped",
        "queue": "default",
        "attempt": 1,
        "executor_id": "exec-m",
        "submitted_at": "2026-12-03T15:00:00+00:00",
        "step": 3,
        "metrics": {"loss": 0.125},
        "cpu": None,
        "rss_bytes": None,
        "gpu": None,
    }
    return {**base, **kw}


def shown(rows: list[dict[str, object]]) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(top_table(rows))
    return out.getvalue()


def test_cpu_and_mem_columns_appear_with_a_sample():
    text = shown([row(cpu=0.9712, rss_bytes=200 * 2**20), row(job_id="other", step=None, metrics={})])
    header = text.splitlines()[0].split()
    assert header == ["JOB", "NAME", "QUEUE", "EXECUTOR", "AGE", "CPU", "MEM", "STEP", "METRICS"]
    assert "0.97" in text and "200Mi" in text and "loss=0.125" in text
    assert "no metrics reported" in text  # the other job: its use unknown ("-"), nothing reported


def test_no_resource_columns_when_nothing_is_sampled():
    header = shown([row()]).splitlines()[0].split()
    assert header == ["JOB", "NAME", "QUEUE", "EXECUTOR", "AGE", "STEP", "METRICS"]
    assert "no running jobs" in shown([])


def test_the_attempts_table_shows_gpu_hours_only_where_gpus_were_sampled(monkeypatch):
    from datetime import UTC, datetime

    from trainyard_client import cli
    from trainyard_client.cli.render import show_record
    from trainyard_contracts import AttemptInfo, AttemptUsage, JobRecord, JobSpec, JobState

    def attempts_table(*usages: AttemptUsage) -> str:
        out = io.StringIO()
        monkeypatch.setattr(cli, "out", Console(file=out, width=200), raising=False)
        record = JobRecord(
            job_id="0mx7b2k1q8c0w3zd",
            spec=JobSpec(name="g", command=["true"]),
            state=JobState.SUCCEEDED,
            submitted_at=datetime.now(UTC),
            updated_at=datetime.now(UTC),
            attempts=[AttemptInfo(number=n + 1, usage=u) for n, u in enumerate(usages)],
        )
        show_record(record)
        return out.getvalue()[out.getvalue().index("attempts") :]

    cpu_only = AttemptUsage(cpu_seconds=1.0, peak_memory_bytes=2**20)
    assert "gpu h" not in attempts_table(cpu_only)
    text = attempts_table(cpu_only, AttemptUsage(cpu_seconds=1.0, peak_memory_bytes=2**20, gpu_seconds=5400))
    assert "gpu h" in text and "1.50" in text


def test_a_gpu_column_appears_where_a_running_job_has_gpus_sampled():
    assert "GPU" not in shown([row(cpu=0.5, rss_bytes=2**20)]).splitlines()[0].split()
    text = shown([row(cpu=0.5, rss_bytes=2**20, gpu=1.74), row(job_id="other", cpu=0.1, rss_bytes=2**20)])
    header, first, second = text.splitlines()[:3]
    assert header.split().index("GPU") == header.split().index("MEM") + 1
    assert "1.74" in first and "1.74" not in second
