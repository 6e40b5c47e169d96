"""Each attempt gets its own GPUs, by index (issue 13).

No GPU exists where these tests run: a fake ``nvidia-smi`` in the test's tmp dir answers the
executor's query with what a 4-GPU machine prints (``trainyard_shared.testkit.fake_nvidia_smi``).
Everything else is real: a nats-server, the executor service, the local backend.

Before: the executor reported a GPU count only (``nvidia-smi -L``), so nothing could say which
device an attempt may use.
"""

from __future__ import annotations

import pytest
from nats.js.errors import KeyNotFoundError

from trainyard_contracts import ExecutorHeartbeat
from trainyard_executor.app import create_app as executor_app
from trainyard_executor.gpus import QUERY_ARGS
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.settings import CommonSettings
from trainyard_shared.testkit import Bus, eventually, fake_nvidia_smi, four_gpu_query_lines, running

pytestmark = [pytest.mark.security, pytest.mark.service, pytest.mark.local]


def gpu_executor(common: CommonSettings, smi: str, name: str = "exec-gpu") -> object:
    return executor_app(
        common, ExecutorSettings(id=name, backend="local", heartbeat_seconds=0.2, nvidia_smi=smi)
    )


async def test_an_executor_with_four_gpus_advertises_each_by_index_and_uuid(nats_server, prefix, tmp_path):
    smi = fake_nvidia_smi(tmp_path, four_gpu_query_lines(), " ".join(QUERY_ARGS))
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path, log_format="text")
    async with Bus(nats_server.url, prefix) as bus, running(gpu_executor(common, str(smi))):
        kv = await bus.js.key_value(bus.subjects.buckets.executors)

        async def heartbeat() -> ExecutorHeartbeat | None:
            try:
                entry = await kv.get("exec-gpu")
            except KeyNotFoundError:
                return None
            return ExecutorHeartbeat.model_validate_json(entry.value) if entry.value else None

        beat = await eventually(heartbeat, what="the executor's heartbeat")
    assert [g.index for g in beat.gpus] == [0, 1, 2, 3]
    assert len({g.uuid for g in beat.gpus}) == 4 and all(g.uuid.startswith("GPU-") for g in beat.gpus)
    assert beat.capacity.gpu == 4
