"""The embedded stack's nats-server takes every stream's reservation whatever the disk has free."""

from __future__ import annotations

import json
import urllib.request

import pytest

from trainyard_contracts import Subjects
from trainyard_shared.bus import all_stream_configs
from trainyard_shared.natsserver import NatsServer, free_port
from trainyard_shared.stackauth import StackCredentials

pytestmark = [pytest.mark.service]


def test_the_stack_servers_store_limit_holds_every_streams_reservation(tmp_path):
    """JetStream's default limit is 75 % of the disk free at start; on a machine with less than the
    streams' 13 GiB free the provision step failed ("insufficient storage resources available")."""
    monitor = free_port()
    config = StackCredentials.at(tmp_path / "data", "trainyard", ["local-1"]).ensure(monitor)
    reserved = sum(
        c.max_bytes or 0 for c in all_stream_configs(Subjects("trainyard")) if (c.max_bytes or 0) > 0
    )
    with NatsServer(tmp_path / "nats", monitor_port=monitor, config_file=config) as server:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/varz", timeout=10) as answer:
            limit = json.load(answer)["jetstream"]["config"]["max_storage"]
    assert limit >= 10 * reserved, (limit, reserved)
