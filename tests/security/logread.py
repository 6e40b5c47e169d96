"""Every log line stored for a job, read to the end whatever the machine's load: an ephemeral pull
consumer fetched until the server says nothing is pending (a read that stops at the first quiet
half second can end early on a busy machine with megabytes to read)."""

from __future__ import annotations

import json

from nats.js.api import AckPolicy, ConsumerConfig


async def stored_chunks(bus, job_id: str) -> list:
    subjects = bus.subjects
    sub = await bus.js.pull_subscribe(
        subjects.logs_of(job_id),
        stream=subjects.streams.logs,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=60),
    )
    out: list = []
    try:
        info = await sub.consumer_info()
        pending = info.num_pending
        while pending:
            msgs = await sub.fetch(min(pending, 64), timeout=30)
            out.extend(msgs)
            pending = msgs[-1].metadata.num_pending
    finally:
        await sub.unsubscribe()
    return out


def texts(msgs: list) -> list[str]:
    return [line["text"] for m in msgs for line in json.loads(m.data)["lines"]]


async def log_lines(bus, job_id: str) -> list[str]:
    return texts(await stored_chunks(bus, job_id))


async def final_log_lines(bus, job_id: str, timeout: float = 60) -> list[str]:
    """Every line of a job that ended: the record says it ended before its last chunks may be
    stored (the executor writes both at once; the terminal event waits for the lines), so read
    until the executor's closing line is there."""
    from trainyard_shared.testing.helpers import eventually

    async def ended() -> list[str] | None:
        lines = await log_lines(bus, job_id)
        return lines if any(t.startswith("attempt 1 ended") for t in lines) else None

    return await eventually(ended, timeout, f"the closing log line of {job_id}")
