"""The start command for one executor, built to fit the server's ``max_payload``.

The spec and a split gang's rendezvous travel once: inside the job record when the record goes
along (it saves the executor a read before its first compare-and-set; the record's gang holds the
rendezvous), else in the command itself. A command that would not fit
with the record goes without it; one that does not fit even so cannot be sent at all (a record
stored before specs were bounded, or a server with a small ``max_payload``): ``None``, and the
scheduler fails that job with the reason instead of retrying a publish that can never succeed.
"""

from __future__ import annotations

from typing import Any

from trainyard_contracts import JobRecord, StartAttempt
from trainyard_contracts.commands import Rendezvous
from trainyard_shared.publishing import CommandSender, Outgoing


def start_command(
    commands: CommandSender,
    record: JobRecord,
    executor_id: str,
    rendezvous: Rendezvous | None,
    carried: dict[str, Any],
    room: int,
    gpus: list[int] | None = None,
) -> Outgoing | None:
    """``room``: the bytes a command's body may take (max_payload less the headers' room);
    ``gpus``: the device indices assigned on ``executor_id``, from the record."""
    fields: dict[str, Any] = {
        "job_id": record.job_id,
        "attempt": record.attempt,
        "executor_id": executor_id,
        "gpus": gpus or [],
    }
    if carried:
        start = commands.outgoing(StartAttempt(**fields, **carried))
        if len(start.payload) <= room:
            return start
    start = commands.outgoing(StartAttempt(**fields, spec=record.spec, rendezvous=rendezvous))
    return start if len(start.payload) <= room else None


def unsendable_reason(record: JobRecord, room: int) -> str:
    return (
        f"its start command does not fit in one NATS message ({room} bytes at most): the spec is "
        "too large to send to an executor; submit it again with less in env, params or labels"
    )
