"""The metrics file's parser and reader, and the batching (pure, and a real file; no NATS)."""

from __future__ import annotations

import json
import os

import pytest

from trainyard_contracts import MetricPoint, MetricsBatch
from trainyard_executor.metricsfile import METRICS_FILE, MetricsFile, MetricsLimits, MetricsParser
from trainyard_executor.metricship import batches, point_json, thin

pytestmark = [pytest.mark.unit, pytest.mark.insight]


def line(step: int, **values: float) -> bytes:
    return (json.dumps({"step": step, "time": 1.5, "values": values}) + "\n").encode()


def test_points_come_from_whole_lines_and_a_part_line_waits_for_its_end():
    parser = MetricsParser()
    data = line(1, loss=0.5) + line(2, loss=0.25)
    assert [p.step for p in parser.feed(data[:-5])] == [1]
    assert [(p.step, p.values) for p in parser.feed(data[-5:])] == [(2, {"loss": 0.25})]
    assert parser.dropped.count == 0


def test_bad_values_and_names_are_dropped_and_counted_the_good_ones_kept():
    parser = MetricsParser(MetricsLimits(max_names=2))
    got = parser.feed(
        b'{"step": 1, "values": {"a": 1, "bad name": 2, "b": NaN, "c": true, "d": "1"}}\n'
        + line(2, a=1, b=2, c=3)
        + b"garbage\n"
    )
    assert [(p.step, p.values) for p in got] == [(1, {"a": 1.0}), (2, {"a": 1.0, "b": 2.0})]
    assert parser.dropped.count == 6 and parser.names == {"a", "b"}
    assert parser.dropped.first and "bad name" in parser.dropped.first


def test_a_line_over_the_limit_is_skipped_to_its_end_without_being_held():
    parser = MetricsParser(MetricsLimits(max_line_bytes=100))
    assert parser.feed(b"x" * 80) == []
    assert parser.feed(b"x" * 80) == []  # over: skipped from here to the newline
    assert len(parser._partial) == 0
    assert [p.step for p in parser.feed(b"xxx\n" + line(5, a=1))] == [5]
    assert parser.dropped.count == 1


def test_thinning_keeps_evenly_spaced_points_and_the_last():
    pts = [MetricPoint(step=i, time=0, values={"a": i}) for i in range(1000)]
    kept = thin(pts, 10)
    assert len(kept) == 10 and kept[0].step == 0 and kept[-1].step == 999
    assert thin(pts[:5], 10) == pts[:5]


def test_batches_stay_under_their_size_and_parse_as_the_contract():
    pts = [point_json(MetricPoint(step=i, time=1.0, values={"loss": 1 / (i + 1)})) for i in range(1000)]
    out = batches("job1", 2, 7, pts, 3, 4096)
    assert all(len(payload) <= 4096 for payload, _ in out)
    parsed = [MetricsBatch.model_validate_json(payload) for payload, _ in out]
    assert [b.seq for b in parsed] == list(range(7, 7 + len(out)))
    assert [p.step for b in parsed for p in b.points] == list(range(1000))
    assert sum(count for _, count in out) == 1000 and all(b.dropped == 3 for b in parsed)


def test_the_file_is_read_incrementally_and_again_from_its_start_when_replaced(tmp_path):
    reader = MetricsFile(tmp_path, MetricsLimits(read_bytes=10))
    assert reader.read() == (b"", False)  # not there yet
    (tmp_path / METRICS_FILE).write_bytes(b"0123456789abcdef")
    assert reader.read() == (b"0123456789", False)
    assert reader.read() == (b"abcdef", False)
    (tmp_path / METRICS_FILE).unlink()
    (tmp_path / METRICS_FILE).write_bytes(b"new")
    assert reader.read() == (b"new", True)


def test_a_link_is_refused_and_the_total_read_is_capped(tmp_path):
    target = tmp_path / "host"
    target.write_bytes(b"secret\n")
    os.symlink(target, tmp_path / METRICS_FILE)
    reader = MetricsFile(tmp_path, MetricsLimits())
    assert reader.read() == (b"", False) and reader.refused and "symbolic link" in reader.refused
    (tmp_path / METRICS_FILE).unlink()
    (tmp_path / METRICS_FILE).write_bytes(b"x" * 100)
    capped = MetricsFile(tmp_path, MetricsLimits(max_bytes=30))
    assert capped.read() == (b"x" * 30, False)
    assert capped.read() == (b"", False) and capped.exhausted


def test_the_reporter_appends_one_line_per_report_and_does_nothing_outside_a_job(tmp_path, monkeypatch):
    import importlib.util

    from trainyard_executor.backends.jobmetrics import REPORTER

    spec = importlib.util.spec_from_file_location("trainyard_reporter_under_test", REPORTER)
    assert spec is not None and spec.loader is not None
    reporter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reporter)
    path = tmp_path / METRICS_FILE
    monkeypatch.delenv("TRAINYARD_METRICS_FILE", raising=False)
    reporter.report(1, loss=1.0)  # outside a job: nothing, no error
    monkeypatch.setenv("TRAINYARD_METRICS_FILE", str(path))
    monkeypatch.setenv("TRAINYARD_RANK", "1")
    reporter.report(1, loss=1.0)  # not rank 0: nothing
    assert not path.exists()
    monkeypatch.setenv("TRAINYARD_RANK", "0")
    reporter.report(1, loss=1)
    reporter.report(2, loss=0.5, acc=0.75)
    got = MetricsParser().feed(path.read_bytes())
    assert [(p.step, p.values) for p in got] == [(1, {"loss": 1.0}), (2, {"loss": 0.5, "acc": 0.75})]
    with pytest.raises((TypeError, ValueError)):
        reporter.report(3, loss="high")
