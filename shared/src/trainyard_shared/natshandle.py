"""The live NATS connection and JetStream context under a connected faststream broker, typed.

faststream keeps them in its own config (``broker.config.connection_state``), which has moved
between releases; this module is the one place that reaches in, so a service, a backend or a test
asks for ``NatsHandle(broker).jetstream`` and gets nats-py's own types. Ask again after a
reconnect-free restart of the broker: the handle reads the broker's state on every access, it does
not copy it.
"""

from __future__ import annotations

from dataclasses import dataclass

from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.js import JetStreamContext


@dataclass(frozen=True, slots=True)
class NatsHandle:
    """nats-py's client and JetStream context of a connected broker (faststream raises
    ``IncorrectState`` if it is not connected)."""

    broker: NatsBroker

    @property
    def client(self) -> Client:
        connection: Client = self.broker.config.connection_state.connection
        return connection

    @property
    def jetstream(self) -> JetStreamContext:
        stream: JetStreamContext = self.broker.config.connection_state.stream
        return stream

    @property
    def max_payload(self) -> int:
        """The server's limit for one message's body (headers count against it too)."""
        return int(self.client.max_payload)
