"""Who may do what on the metrics stream, on a server running the deployed users.

An executor publishes its jobs' reported metrics (any job's, as for logs: NATS permissions are
static and which executor runs a job is decided at run time); telemetry reads them through its own
durable consumer; the submission service reads them for the API with consumers the server names.
Nobody else publishes there: not ``client`` (another system), not telemetry. A job itself has no
NATS credentials at all: it writes a file that its executor reads (docs/insight.md).
"""

from __future__ import annotations

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from trainyard_contracts import MetricPoint, MetricsBatch

from .test_nats_least_privilege import S, admin, attempt, connected, refusal, server  # noqa: F401

pytestmark = [pytest.mark.security, pytest.mark.nats_auth, pytest.mark.service, pytest.mark.insight]

METRICS = S.streams.metrics


def batch(job_id: str) -> bytes:
    point = MetricPoint(step=1, time=1.0, values={"loss": 0.5})
    return MetricsBatch(job_id=job_id, attempt=1, seq=0, points=[point]).model_dump_json().encode()


async def test_an_executor_publishes_metrics_telemetry_and_submission_read_them_others_may_not_publish(
    server,  # noqa: F811
    admin,  # noqa: F811
):
    subject = S.metrics("job1rights", 1)
    async with connected(server, "executor-exec-a") as executor:
        ack = await executor.js.publish(subject, batch("job1rights"), stream=METRICS)
        assert ack.stream == METRICS and not executor.errors
    async with connected(server, "telemetry") as telemetry:
        name = "telemetry-metrics"
        config = ConsumerConfig(
            name=name, durable_name=name, filter_subject=S.metrics_of(), ack_policy=AckPolicy.EXPLICIT
        )
        await telemetry.js.add_consumer(METRICS, config=config)
        pull = await telemetry.js.pull_subscribe_bind(name, METRICS)
        [msg] = await pull.fetch(1, timeout=5)
        assert MetricsBatch.model_validate_json(msg.data).job_id == "job1rights"
        await msg.ack()
        forged = S.metrics("job1rights", 2)
        await telemetry.nc.publish(forged, batch("job1rights"))
        await telemetry.nc.flush()
        await refusal(telemetry, forged)
    async with connected(server, "submission") as submission:
        reader = await submission.js.pull_subscribe(S.metrics_of("job1rights"), stream=METRICS)
        [msg] = await reader.fetch(1, timeout=5)
        assert MetricsBatch.model_validate_json(msg.data).points[0].values == {"loss": 0.5}
    async with connected(server, "client") as client:
        forged = S.metrics("job1rights", 3)
        await attempt(client, client.js.publish(forged, batch("job1rights"), stream=METRICS), forged)
    assert (await admin.js.stream_info(METRICS)).state.messages == 1
