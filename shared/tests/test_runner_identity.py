"""A co-hosted service's NATS identity comes from its own variables, never another's."""

from __future__ import annotations

import pytest

from trainyard_shared.runner import nats_identity
from trainyard_shared.settings import CommonSettings

pytestmark = pytest.mark.unit


def test_each_service_reads_its_own_prefixed_user_and_password():
    environ = {
        "TRAINYARD_REGISTRY_NATS_USER": "registry",
        "TRAINYARD_REGISTRY_NATS_PASSWORD": "r-pw",
        "TRAINYARD_TELEMETRY_NATS_USER": "telemetry",
        "TRAINYARD_TELEMETRY_NATS_PASSWORD": "t-pw",
    }
    assert nats_identity("registry", environ) == {"nats_user": "registry", "nats_password": "r-pw"}
    assert nats_identity("telemetry", environ)["nats_password"] == "t-pw"
    assert nats_identity("workflow", environ) == {}  # none given: the process's own, if any
    assert nats_identity("registry", {"TRAINYARD_REGISTRY_NATS_USER": "registry"}) == {}  # half: none


def test_the_identity_overrides_the_process_wide_variables(monkeypatch):
    monkeypatch.setenv("TRAINYARD_NATS_USER", "someone-else")
    monkeypatch.setenv("TRAINYARD_NATS_PASSWORD", "not-mine")
    common = CommonSettings(
        **nats_identity(
            "registry",
            {  # type: ignore[arg-type]
                "TRAINYARD_REGISTRY_NATS_USER": "registry",
                "TRAINYARD_REGISTRY_NATS_PASSWORD": "r-pw",
            },
        )
    )
    assert common.nats_user == "registry"
    assert common.nats_password is not None and common.nats_password.get_secret_value() == "r-pw"
    assert common.inbox_prefix == "_INBOX.registry"
