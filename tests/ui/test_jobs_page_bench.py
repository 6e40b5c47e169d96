"""What the UI's jobs page costs with 100,000 jobs in the store (``pytest -m bench tests/ui``;
``make bench-ui``): the figure `jobs_page_ms_at_100k` of issue 20, written to
``tests/bench/results/ui.json``. No timing is asserted: the machine is shared.

The records are written by the service's own ``JobStore`` (each with its jobs index entry, as every
record writer does), 1,000 at a time, submitted "now" while seeding; the shortcut: each is created
directly in its final state (a quarter each queued, running, succeeded, failed), without the
transitions between. The page is asked in process over ASGI, so the time is the server's: the
index read, the page's records read by key, the HTML rendered (docs/ui.md, "Paging and what it
costs"). Figures for four pages: the first, ``state=failed``, and a label and ``state=failed``
oldest first (a walk of the arrival entries: docs/performance.md, "The jobs index").
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import httpx
import pytest

from trainyard_contracts._time import utcnow
from trainyard_shared.settings import CommonSettings
from trainyard_submission.app import create_app
from trainyard_submission.settings import SubmissionSettings
from trainyard_submission.ui.session import SESSION_COOKIE, new_session

from .seeding import record

pytestmark = [pytest.mark.bench, pytest.mark.service, pytest.mark.timeout(1200)]  # seeding takes minutes
RECORDS = int(os.environ.get("TRAINYARD_BENCH_UI_JOBS", "100000"))
OUT = Path(__file__).resolve().parents[1] / "bench" / "results" / "ui.json"
TOKEN = "bench-ui-token-0123456789"


async def test_jobs_page_with_100k_jobs(nats_server, prefix, tmp_path, capsys):
    common = CommonSettings(nats_url=nats_server.url, prefix=prefix, data_dir=tmp_path / "d")
    app = create_app(common, SubmissionSettings(token=TOKEN))
    async with app.router.lifespan_context(app):
        store = app.state.trainyard["service"].store

        async def submit(i: int) -> None:
            # submitted now, as the service stamps a record just before it creates it
            await store.create(
                record(i).model_copy(update={"job_id": f"bench{i:08d}", "submitted_at": utcnow()})
            )

        start = utcnow()
        for batch in range(0, RECORDS, 1000):
            await asyncio.gather(*(submit(i) for i in range(batch, batch + 1000)))
        seeded = (utcnow() - start).total_seconds()
        # arrival entries stored more than 2 s after their submission: read by every oldest-first page
        index = app.state.trainyard["service"].index
        late_filter = index.arrivals_filter(None, late=True)
        late = await index.js.stream_info(index.stream, subjects_filter=late_filter)
        cookies = {SESSION_COOKIE: new_session(TOKEN).value()}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ui", cookies=cookies) as http:
            figures = {}
            for label, query in [
                ("first_page", ""),
                ("state_failed", "?state=failed"),
                ("label_and_oldest_first", "?label=sweep%3Dlr&order=oldest"),
                ("state_failed_oldest_first", "?state=failed&order=oldest"),
            ]:
                times = []
                for _ in range(3):
                    began = time.perf_counter()
                    page = await http.get(f"/ui/jobs{query}")
                    times.append((time.perf_counter() - began) * 1e3)
                    assert page.status_code == 200 and page.text.count('<code class="id">') == 50
                figures[label] = round(statistics.median(times), 1)
            # the API's listings of issue 23 ("history at scale"), the same index read
            auth = {"Authorization": f"Bearer {TOKEN}"}
            for label, query in [
                ("api_state_running_limit_50", "?state=running&limit=50"),
                ("api_queue_limit_50", "?queue=default&limit=50"),
            ]:
                times = []
                for _ in range(3):
                    began = time.perf_counter()
                    answer = await http.get(f"/v1/jobs{query}", headers=auth)
                    times.append((time.perf_counter() - began) * 1e3)
                    assert answer.status_code == 200 and len(answer.json()["jobs"]) == 50
                figures[label] = round(statistics.median(times), 1)
    result = {
        "jobs_in_store": RECORDS,
        "jobs_page_ms_at_100k": figures["first_page"] if RECORDS == 100_000 else None,
        "median_ms_of_3": figures,
        "target_ms": 300,
        "seeding_seconds": round(seeded, 1),
        "late_arrival_entries": len(late.state.subjects or {}),
        "what": "GET /ui/jobs (and two GET /v1/jobs) server time, in process over ASGI, 50 rows, "
        "read through the jobs index",
        "seeding": "JobStore.create with its index entries (its state's, its arrival), 1,000 concurrent, "
        "each record created in its final state",
        "load_average": round(os.getloadavg()[0], 2),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    with capsys.disabled():
        print(f"\n{json.dumps(result, indent=2)}")
