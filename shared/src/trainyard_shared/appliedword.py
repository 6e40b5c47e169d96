"""The scheduler's word that it applied an executor's report (``<prefix>.exec-applied.<executor_id>``,
core NATS): what the record became, so the waiting executor decides without reading it.

The word's body is the record's JSON as the scheduler knows it just after applying the report
(the copy its compare-and-set wrote, or the stored one the report no longer changes); its headers
name the job (``Trainyard-Job``) and the record's KV revision (``Trainyard-Revision``). A record
too big to carry with those headers within the server's ``max_payload`` (the headers count
against it, and an oversized publish makes the server close the connection) goes as the older
word: the bare job id as the body, no headers, which only wakes the executor to read the record.
An executor hears both forms (a scheduler of an older release sends the bare id).
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client

from trainyard_contracts import JobRecord

JOB_HEADER = "Trainyard-Job"
REVISION_HEADER = "Trainyard-Revision"
# nats-py's header block: "NATS/1.0\r\n", then "name: value\r\n" per header, then "\r\n"
_HEADER_FRAME = len("NATS/1.0\r\n") + len("\r\n")


@dataclass(frozen=True, slots=True)
class AppliedWord:
    """A word as heard: the job, and the record's JSON and revision when it carries them."""

    job_id: str
    body: bytes | None = None
    revision: int = 0


def header_bytes(headers: dict[str, str]) -> int:
    return _HEADER_FRAME + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def encode(
    job_id: str, known: tuple[JobRecord, int] | None, max_payload: int
) -> tuple[bytes, dict[str, str] | None]:
    """The word's body and headers: the record and its revision, or the bare job id when there is
    no known copy or it does not fit."""
    if known is not None and known[1] > 0 and known[0].job_id == job_id:
        record, revision = known
        body = record.model_dump_json().encode()
        headers = {JOB_HEADER: job_id, REVISION_HEADER: str(revision)}
        if len(body) + header_bytes(headers) <= max_payload:
            return body, headers
    return job_id.encode(), None


def decode(body: bytes, headers: dict[str, str] | None) -> AppliedWord:
    """A heard word in either form; a malformed revision header makes it a bare wake-up."""
    if headers and JOB_HEADER in headers:
        revision = headers.get(REVISION_HEADER, "")
        if revision.isdigit() and int(revision) > 0:
            return AppliedWord(headers[JOB_HEADER], body, int(revision))
        return AppliedWord(headers[JOB_HEADER])
    return AppliedWord(body.decode(errors="replace"))


async def publish(client: Client, subject: str, job_id: str, known: tuple[JobRecord, int] | None) -> None:
    """Say it on ``subject`` through nats-py's own publish (faststream's costs more per word)."""
    body, headers = encode(job_id, known, client.max_payload)
    await client.publish(subject, body, headers=headers)
