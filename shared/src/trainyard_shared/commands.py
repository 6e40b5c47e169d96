"""Sending commands to an executor: its command subject, in the exec stream, deduplicated."""

from __future__ import annotations

from faststream.nats import NatsBroker

from trainyard_contracts import CancelAttempt, StartAttempt, Subjects, msg_id
from trainyard_shared.events import MSG_ID, Outgoing, publish_acked


class CommandSender:
    def __init__(self, broker: NatsBroker, subjects: Subjects) -> None:
        self.broker = broker
        self.subjects = subjects

    async def send(self, command: StartAttempt | CancelAttempt) -> None:
        await publish_acked(self.broker, *self.outgoing(command))

    def outgoing(self, command: StartAttempt | CancelAttempt) -> Outgoing:
        """The command as a publish (for ``publish_in_order``)."""
        return Outgoing(
            self.subjects.exec_command(command.executor_id, command.type),
            command.model_dump_json().encode(),
            {
                # per executor: a gang split across executors gets one start (or cancel) each
                MSG_ID: msg_id(command.job_id, command.attempt, f"{command.type}@{command.executor_id}"),
                "content-type": "application/json",
            },
            self.subjects.streams.exec,
        )
