"""Docker and Podman: a job in a container reports through its mounted work dir.

The test image is a 2 MB busybox (no Python), so the job appends the reporter's JSON lines with
``sh``; that the reporter module itself is there and readable by the container's non-root user is
shown by reading it from inside. The executor's side reads the file on the host as for local jobs.
"""

from __future__ import annotations

import pytest

from trainyard_executor.metricsfile import MetricsFile, MetricsLimits, MetricsParser
from trainyard_executor.testengines import Lines, make_launch

pytestmark = [pytest.mark.insight, pytest.mark.integration]
pytest_plugins = ["trainyard_executor.testengines"]  # the engine and backend fixtures


async def test_a_container_job_writes_its_metrics_file_in_the_mounted_work_dir(backend, tmp_path):
    first = '{"step": 1, "time": 2.5, "values": {"loss": 0.5}}'
    second = '{"step": 2, "time": 3.5, "values": {"loss": 0.25}}'
    script = (
        f"echo '{first}' >> \"$TRAINYARD_METRICS_FILE\";"
        f"echo '{second}' >> \"$TRAINYARD_METRICS_FILE\";"
        'echo "path=$PYTHONPATH";'
        'head -c 3 "${PYTHONPATH%%:*}/trainyard.py"; echo'
    )
    launch = make_launch(tmp_path, ["sh", "-c", script])
    lines = Lines()
    attempt = await backend.start(launch, lines)
    outcome = await attempt.wait()
    assert outcome.kind == "succeeded", (outcome.reason, lines.got)
    assert lines.of("stdout") == ["path=/trainyard/work/.trainyard-py", '"""'], lines.got
    parser = MetricsParser()
    data, _ = MetricsFile(launch.workdir, MetricsLimits()).read()
    assert [(p.step, p.values) for p in parser.feed(data)] == [(1, {"loss": 0.5}), (2, {"loss": 0.25})]
    await attempt.release()
