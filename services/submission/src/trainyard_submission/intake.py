"""Bus intake: another system publishes a job spec on ``<prefix>.intake.submit``.

From a bare nats-py script::

    inbox = nc.new_inbox(); replies = await nc.subscribe(inbox)
    await js.publish("trainyard.intake.submit", spec_yaml_bytes,
                     headers={"Nats-Msg-Id": "my-id-1", "Trainyard-Reply-To": inbox})
    reply = json.loads((await replies.next_msg(timeout=10)).data)  # IntakeReply

A publisher names its identity with an API token in the ``Trainyard-Token`` header; without one
the spec is accepted only into a queue that allows anonymous bus submissions (busidentity.py).
Message ids are per sender: a token's ids, anonymous senders' ids, and the workflow service's (on
its own subject, ``<prefix>.intake.workflow``, which only its NATS user may publish to) are apart,
so the same id from another sender never answers with someone else's job.

Deduplication is this service's, not the stream's: the idempotency bucket maps the id to its job
for good, so the same id published again (a publisher retrying after a timeout) is delivered here
and answered with the same job and ``duplicate: true``, as HTTP answers a repeated Idempotency-Key.
The stream's own dedup would drop the repeat before the service and leave the publisher without an
answer, so its window is the server's minimum (100 ms; shared/bus.py): a publish acknowledged
``duplicate`` within it is published again after it (``trainyard_client.bus``). A replayed dead
letter carries its first id in ``Trainyard-Original-Msg-Id`` (its own ``Nats-Msg-Id`` is new), and
that is its key. A spec that does not validate is answered ``accepted: false`` with field errors and
announced as ``rejected``.
"""

from __future__ import annotations

from faststream.nats import NatsBroker

from trainyard_contracts import FieldError, IntakeReply, SpecError
from trainyard_contracts.ids import idempotency_slot, intake_namespace
from trainyard_shared.natshandle import NatsHandle
from trainyard_submission.access import Forbidden
from trainyard_submission.arrayjobs import refuse_workflow_fields
from trainyard_submission.busidentity import bus_name, bus_principal
from trainyard_submission.samespec import IdempotencyConflict
from trainyard_submission.service import SubmissionService
from trainyard_submission.tokens import TokenStore

REPLY_HEADER = "Trainyard-Reply-To"
ORIGINAL_ID_HEADER = "Trainyard-Original-Msg-Id"  # a replayed dead letter's first Nats-Msg-Id


async def handle_intake(
    service: SubmissionService,
    broker: NatsBroker,
    body: bytes,
    headers: dict[str, str],
    tokens: TokenStore | None = None,
    workflow_channel: bool = False,
) -> IntakeReply:
    """``workflow_channel``: published on the workflow service's own subject (its keys are its own)."""
    msg_id = headers.get(ORIGINAL_ID_HEADER) or headers.get("Nats-Msg-Id")
    try:
        principal = await bus_principal(tokens, headers)
        namespace = intake_namespace(workflow_channel, principal.token_id if principal else None)
        slot = idempotency_slot(namespace, msg_id) if msg_id else None
        if not workflow_channel:
            refuse_workflow_fields(body)
        result = await service.submit(
            body, submitted_by=bus_name(principal), idempotency_slot=slot, principal=principal
        )
        reply = IntakeReply(accepted=True, job_id=result.job_id, duplicate=result.duplicate)
    except SpecError as exc:
        job_id = await service.reject(exc.errors, msg_id)
        reply = IntakeReply(accepted=False, job_id=job_id, errors=exc.errors)
    except IdempotencyConflict as exc:  # the same message id, another spec: no new job, no rejection
        errors = [
            FieldError(field=f, message=f"differs from job {exc.job_id}, which this id submitted")
            for f in exc.differs
        ]
        reply = IntakeReply(accepted=False, job_id=exc.job_id, errors=errors)
    except Forbidden as exc:  # the same refusals as HTTP's 403, as field errors
        errors = exc.errors or [FieldError(field="queue", message=exc.detail)]
        job_id = await service.reject(errors, msg_id)
        reply = IntakeReply(accepted=False, job_id=job_id, errors=errors)
    reply_to = headers.get(REPLY_HEADER)
    if reply_to:
        # a core NATS publish straight through nats-py: the reply is stored in no stream, and
        # faststream's publish chain (middlewares, serialisation) cost more than the reply itself
        connection = NatsHandle(broker).client
        await connection.publish(reply_to, reply.model_dump_json().encode())
    return reply
