"""A submitted event that JetStream does not confirm in time (an overloaded server) does not turn
an accepted job into a 500: the record exists, and the scheduler's reconciler queues a record left
in ``submitted``. The fault is injected into the publisher; NATS and the KV store are real."""

from __future__ import annotations

import pytest
from nats.errors import TimeoutError as NatsTimeout

from .conftest import AUTH

pytestmark = pytest.mark.service


async def test_an_unconfirmed_submitted_event_still_answers_201_and_keeps_the_record(api):
    service = api.app.state.trainyard["service"]

    async def times_out(event, **headers):
        raise NatsTimeout

    service.events.emit = times_out
    r = await api.post("/v1/jobs", json={"name": "slow-bus", "command": ["true"]}, headers=AUTH)
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    record = await api.get(f"/v1/jobs/{job_id}", headers=AUTH)
    assert record.status_code == 200 and record.json()["state"] == "submitted"
