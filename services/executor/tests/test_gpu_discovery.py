"""GPU discovery (issue 13). No GPU exists on this machine: a fake ``nvidia-smi`` script in the
test's tmp dir answers the query with what a 4-GPU machine prints, and the parser is fed that
machine's output."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainyard_contracts import ExecutorHeartbeat, GpuDevice
from trainyard_executor.backends.devices import attempt_devices, rank_devices, visible_devices_env
from trainyard_executor.gpus import (
    QUERY_ARGS,
    GpuSettingError,
    advertised_gpus,
    discover_gpus,
    parse_gpu_query,
)
from trainyard_shared.testing.helpers import fake_nvidia_smi, four_gpu_query_lines

pytestmark = [pytest.mark.unit, pytest.mark.security]

FOUR_GPUS = "".join(f"{line}\n" for line in four_gpu_query_lines())


def fake(tmp_path: Path, lines: list[str] | None = None, exit_code: int = 0) -> Path:
    return fake_nvidia_smi(
        tmp_path, four_gpu_query_lines() if lines is None else lines, " ".join(QUERY_ARGS), exit_code
    )


def test_the_query_output_becomes_devices_by_index():
    shuffled = "\n".join(reversed(FOUR_GPUS.splitlines())) + "\nNo devices were found\n\n"
    devices = parse_gpu_query(shuffled)
    assert [d.index for d in devices] == [0, 1, 2, 3]
    assert devices[2].uuid == "GPU-0a1b2c3d-2222-0000-0000-000000000002"


def test_a_fake_nvidia_smi_with_four_gpus_is_discovered(tmp_path):
    devices = discover_gpus(str(fake(tmp_path)))
    assert [d.index for d in devices] == [0, 1, 2, 3]
    assert devices[3].uuid == "GPU-0a1b2c3d-3333-0000-0000-000000000003"


def test_no_program_or_a_failing_one_means_no_gpus(tmp_path):
    assert discover_gpus(str(tmp_path / "absent-nvidia-smi")) == []
    failing = fake(tmp_path, ["NVIDIA-SMI has failed"], exit_code=9)
    assert discover_gpus(str(failing)) == []


def test_the_setting_limits_the_devices_and_may_not_exceed_them():
    found = parse_gpu_query(FOUR_GPUS)
    assert advertised_gpus("local", None, found) == found
    assert [d.index for d in advertised_gpus("docker", 2, found) or []] == [0, 1]
    with pytest.raises(GpuSettingError, match="TRAINYARD_EXECUTOR_GPU=5"):
        advertised_gpus("podman", 5, found)
    # a kubernetes pool's count is a quota; its device plugin assigns the devices
    assert advertised_gpus("kubernetes", 8, []) is None
    assert advertised_gpus("noop", 3, []) is None


def test_an_older_heartbeat_without_gpus_parses_and_a_new_one_round_trips():
    old = ExecutorHeartbeat.model_validate(
        {"executor_id": "e", "backend": "local", "capacity": {"cpu": 1, "memory": 1}}
    )
    assert old.gpus == []
    new = old.model_copy(update={"gpus": [GpuDevice(index=0, uuid="GPU-x")]})
    assert ExecutorHeartbeat.model_validate_json(new.model_dump_json()).gpus == new.gpus


def test_a_rank_sees_only_its_own_slice_and_a_cpu_job_none():
    assigned = attempt_devices([4, 5, 6, 7], gpu_per_replica=2, machine_has_gpus=True)
    assert assigned == (4, 5, 6, 7)
    assert rank_devices(assigned, 2, 0) == (4, 5) and rank_devices(assigned, 2, 1) == (6, 7)
    assert visible_devices_env((6, 7)) == {"CUDA_VISIBLE_DEVICES": "6,7", "NVIDIA_VISIBLE_DEVICES": "6,7"}
    # a job without GPUs on a machine with some is told it has none
    assert attempt_devices([], gpu_per_replica=0, machine_has_gpus=True) == ()
    assert visible_devices_env(()) == {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}
    # nothing assigned (an older scheduler) or no GPUs here at all: the environment is left alone
    assert attempt_devices([], gpu_per_replica=1, machine_has_gpus=True) is None
    assert attempt_devices([], gpu_per_replica=0, machine_has_gpus=False) is None
