"""The ports an embedded stack is given: the ones asked for and free ones that are none of them."""

from __future__ import annotations

from itertools import chain, count

from trainyard_client.stack import SERVICES, EmbeddedStack
from trainyard_shared import natsserver


def test_a_free_port_chosen_for_nats_is_never_one_of_the_service_ports_asked_for(tmp_path, monkeypatch):
    """CI once saw the random NATS monitor port fall on the telemetry port (api-port + 4): the
    telemetry service could not listen and `trainyard up` gave up."""
    api_port = 26040
    offers = chain([api_port + 4, api_port, 4250], count(30000))
    monkeypatch.setattr(natsserver, "free_port", lambda host: next(offers))

    stack = EmbeddedStack(tmp_path, api_port=api_port, nats_port=4250)

    services = set(stack.ports.values())
    assert services == set(range(api_port, api_port + len(SERVICES)))
    assert stack.nats_monitor_port not in services | {stack.nats_port}


def test_free_ports_chosen_for_nats_and_every_service_are_all_different(tmp_path, monkeypatch):
    offers = chain([31000, 31000, 31001, 31000, 31001], count(31002))
    monkeypatch.setattr(natsserver, "free_port", lambda host: next(offers))

    stack = EmbeddedStack(tmp_path, api_port=None, nats_port=None)

    every = [stack.nats_port, stack.nats_monitor_port, *stack.ports.values()]
    assert len(set(every)) == len(every) == len(SERVICES) + 2
