"""A spec cannot choose its own GPUs through the environment (issue 13).

Before: ``env: {NVIDIA_VISIBLE_DEVICES: all}`` (or ``CUDA_VISIBLE_DEVICES``) passed validation, and
the NVIDIA container runtime or the CUDA driver then exposed every device of the machine to the job,
whatever the scheduler had assigned. Now ``CUDA_*`` and ``NVIDIA_*`` are reserved like ``TRAINYARD_*``:
the spec is refused with the ``env`` field and the variable named.
"""

from __future__ import annotations

import pytest

from trainyard_contracts import SpecError, parse_spec, validate_spec

pytestmark = [pytest.mark.security, pytest.mark.unit]


def env_error(env: dict[str, str]) -> str:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "gpu-job", "command": ["true"], "env": env})
    errors = {e.field: e.message for e in info.value.errors}
    assert set(errors) == {"env"}
    return errors["env"]


@pytest.mark.parametrize(
    "name",
    ["NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "CUDA_DEVICE_ORDER"],
)
def test_a_device_variable_in_env_is_refused_with_its_name(name):
    message = env_error({"OMP_NUM_THREADS": "1", name: "all"})
    assert name in message
    assert "OMP_NUM_THREADS" not in message


def test_the_yaml_spec_with_every_gpu_is_refused_naming_env():
    with pytest.raises(SpecError) as info:
        parse_spec(
            "name: grab\ncommand: ['nvidia-smi']\nresources: {gpu: 1}\nenv: {NVIDIA_VISIBLE_DEVICES: all}\n"
        )
    [error] = info.value.errors
    assert error.field == "env"
    assert "NVIDIA_VISIBLE_DEVICES" in error.message


def test_names_that_only_resemble_the_reserved_prefixes_are_kept():
    spec = validate_spec(
        {"name": "ok", "command": ["true"], "env": {"MY_CUDA_HOME": "/opt", "cuda_flag": "1", "NVIDIAX": "1"}}
    )
    assert spec.env["MY_CUDA_HOME"] == "/opt"
