"""Who may do what: pure rules over a principal, a spec or record, and a queue's configuration.

- The admin acts on every queue; a team token only on its own queue (team = queue).
- ``shell: true`` and ``run_as_root: true`` are accepted only by a queue whose configuration allows
  them, whoever submits.
"""

from __future__ import annotations

from typing import Any

from trainyard_contracts import FieldError, JobRecord, JobSpec, ModelVersionRecord, QueueConfig, SpecError
from trainyard_submission.tokens import Principal


class Forbidden(Exception):
    """A refusal: ``detail`` names what was refused and why (HTTP 403)."""

    def __init__(self, detail: str, queue: str | None = None, errors: list[FieldError] | None = None):
        self.detail, self.queue, self.errors = detail, queue, errors or []
        super().__init__(detail)


class QueueRefused(SpecError):
    """The spec is valid, but its queue does not accept one of its choices (bus: rejected; HTTP: 403
    with ``detail``)."""

    def __init__(self, queue: str, field: str, detail: str, advice: str) -> None:
        self.queue, self.detail = queue, detail
        super().__init__([FieldError(field=field, message=f"{detail}; {advice}")])


class ShellRefused(QueueRefused):
    """``shell: true`` into a queue without ``allow_shell``."""

    def __init__(self, queue: str) -> None:
        super().__init__(
            queue,
            "shell",
            f"queue {queue!r} does not allow shell: true",
            "give command as an argv list (or ask an admin to set allow_shell on the queue)",
        )


class RootRefused(QueueRefused):
    """``run_as_root: true`` into a queue without ``allow_root``."""

    def __init__(self, queue: str) -> None:
        super().__init__(
            queue,
            "run_as_root",
            f"queue {queue!r} does not allow run_as_root: true",
            "containers run as a non-root user (or ask an admin to set allow_root on the queue)",
        )


def place_spec(principal: Principal | None, spec: JobSpec) -> JobSpec:
    """The spec in the queue it goes to: a team token's spec without a queue goes to the team's."""
    if principal is None or principal.admin or "queue" in spec.model_fields_set:
        return spec
    return spec.model_copy(update={"queue": principal.team})


def place_job_document(principal: Principal | None, job: Any) -> Any:
    """A job document (a pipeline step's, a sweep's template) in the queue :func:`place_spec` puts
    a submitted spec in: a team token's without a queue goes to the team's. The workflow service
    submits it later with its own identity, which places nothing."""
    if principal is None or principal.admin or not isinstance(job, dict) or "queue" in job:
        return job
    return {**job, "queue": principal.team}


def check_submit(principal: Principal | None, spec: JobSpec, queue: QueueConfig) -> None:
    """Raise Forbidden or ShellRefused; ``principal`` is None for a bus publisher that named no
    identity (accepted only into a queue that allows anonymous bus submissions)."""
    if principal is None and not queue.allow_anonymous_bus:
        raise Forbidden(
            f"queue {spec.queue!r} does not accept bus submissions without a Trainyard-Token",
            queue=spec.queue,
            errors=[
                FieldError(
                    field="queue",
                    message=f"queue {spec.queue!r} needs an identity: send an API token in the "
                    "Trainyard-Token header (or ask an admin to set allow_anonymous_bus on the queue)",
                )
            ],
        )
    if principal is not None and not principal.may_act_on(spec.queue):
        raise Forbidden(
            f"a token of team {principal.team!r} may not submit into queue {spec.queue!r}",
            queue=spec.queue,
            errors=[FieldError(field="queue", message=f"must be {principal.team!r} for this token")],
        )
    if spec.priority > queue.max_priority:
        raise Forbidden(
            f"queue {spec.queue!r} allows priority up to {queue.max_priority}, not {spec.priority}",
            queue=spec.queue,
            errors=[
                FieldError(
                    field="priority",
                    message=f"at most {queue.max_priority} in queue {spec.queue!r} (an admin sets "
                    "the queue's max_priority)",
                )
            ],
        )
    if spec.shell and not queue.allow_shell:
        raise ShellRefused(spec.queue)
    if spec.run_as_root and not queue.allow_root:
        raise RootRefused(spec.queue)


def check_job(principal: Principal, record: JobRecord, action: str) -> None:
    if not principal.may_act_on(record.spec.queue):
        raise Forbidden(
            f"a token of team {principal.team!r} may not {action} job {record.job_id} "
            f"of queue {record.spec.queue!r}",
            queue=record.spec.queue,
        )


def check_list(principal: Principal, queue: str | None) -> str | None:
    """The queue a listing is restricted to: the team's own; another team's is refused."""
    if principal.admin:
        return queue
    if queue is not None and queue != principal.team:
        raise Forbidden(f"a token of team {principal.team!r} may not list queue {queue!r}", queue=queue)
    return principal.team


def check_admin(principal: Principal, action: str) -> None:
    if not principal.admin:
        raise Forbidden(f"only an admin token may {action} (this token is team {principal.team!r}'s)")


def may_read_model(principal: Principal, version: ModelVersionRecord) -> bool:
    """Model versions are scoped like jobs: a team reads its own queue's (a version registered
    before versions named their queue is the admin's only)."""
    return principal.admin or (version.queue is not None and version.queue == principal.team)


def public_record(record: JobRecord) -> dict[str, object]:
    """A record as the API shows it: secret env values masked."""
    return record.model_copy(update={"spec": record.spec.redacted()}).model_dump(mode="json")


def mask_values(text: str, secrets: list[str]) -> str:
    """``text`` with every occurrence of a secret value replaced (job output, dead-letter bodies)."""
    for value in sorted(secrets, key=len, reverse=True):
        if len(value) >= 3:  # masking "1" or "" would shred the text and hide nothing
            text = text.replace(value, "***")
    return text
