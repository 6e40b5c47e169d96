"""The web UI's pure parts: the session cookie and CSRF token, where sign-in may send a browser,
and the jobs table's keyset paging over the listing's order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import unquote_plus

import pytest

from trainyard_contracts import JobSpec, lifecycle
from trainyard_submission.api import Problem
from trainyard_submission.joblist import NewestMatches
from trainyard_submission.ui.paging import Page, PageRequest, cursor_of, parse_cursor
from trainyard_submission.ui.session import new_session, parse_session, safe_next, same_origin

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 3, tzinfo=UTC)


def test_a_session_cookie_round_trips_and_its_csrf_token_is_its_own() -> None:
    token = "ty_0123456789ab_" + "s" * 43
    one, two = new_session(token), new_session(token)
    parsed = parse_session(one.value())
    assert parsed == one and parsed.accepts(one.csrf())
    assert one.csrf() != two.csrf()  # a new sign-in, a new CSRF token
    assert not one.accepts(two.csrf()) and not one.accepts(None) and not one.accepts("")
    assert new_session("another-token").csrf() != one.csrf()
    for bad in (None, "", "no-dot", ".", "abc.", "abc.!!!", "x" * 5000):
        assert parse_session(bad) is None


def test_sign_in_goes_back_only_to_a_page_of_the_ui() -> None:
    assert safe_next("/ui/jobs/abc?x=1") == "/ui/jobs/abc?x=1"
    for elsewhere in (
        None,
        "",
        "https://evil.example/ui",
        "//evil.example/ui",
        "/v1/jobs",
        "/ui\\@evil",
        "x",
    ):
        assert safe_next(elsewhere) == "/ui/jobs"


def test_a_post_from_another_origin_is_told_apart() -> None:
    assert same_origin("http://127.0.0.1:8700", "127.0.0.1:8700")
    assert same_origin(None, "127.0.0.1:8700")  # not a browser: the CSRF token decides
    assert not same_origin("http://127.0.0.1:9", "127.0.0.1:8700")
    assert not same_origin("null", "127.0.0.1:8700")


def records(n: int) -> list:
    spec = JobSpec(name="j", command=["true"])
    return [lifecycle.new_record(f"job{i:06d}", spec, T0 + timedelta(seconds=i), None) for i in range(n)]


def listing(all_records: list, limit: int, oldest_first: bool, past: tuple | None) -> list:
    matches = NewestMatches(None, None, limit, oldest_first=oldest_first, past=past)
    for r in all_records:
        matches.offer(r.job_id, r.model_dump_json().encode(), 1)
    return matches.records()


@pytest.mark.parametrize("oldest_first", [False, True])
def test_keyset_pages_cover_every_record_once_forward_and_back(oldest_first: bool) -> None:
    stored = records(23)
    expected = sorted(stored, key=lambda r: r.submitted_at, reverse=not oldest_first)
    wanted = PageRequest(oldest_first=oldest_first, size=5)
    pages = []
    while True:
        reverse = wanted.oldest_first != wanted.back
        read = listing(stored, wanted.size + 1, reverse, parse_cursor(wanted.cursor))
        page = Page.of(wanted, read)
        pages.append((wanted, page))
        if page.next is None:
            break
        cursor = page.next.split("cursor=")[1].split("&")[0]
        wanted = PageRequest(oldest_first=oldest_first, size=5, cursor=unquote_plus(cursor))
    shown = [r.job_id for _, p in pages for r in p.rows]
    assert shown == [r.job_id for r in expected] and len(pages) == 5
    assert pages[0][1].previous is None and pages[-1][1].next is None

    # back from the last page: the rows of the page before it, in the table's order
    last = pages[-1][1]
    back = PageRequest(oldest_first=oldest_first, size=5, cursor=cursor_of(last.rows[0]), back=True)
    read = listing(stored, 6, back.oldest_first != back.back, parse_cursor(back.cursor))
    assert [r.job_id for r in Page.of(back, read).rows] == [r.job_id for r in pages[-2][1].rows]


def test_a_malformed_cursor_is_a_clear_refusal() -> None:
    with pytest.raises(Problem) as refused:
        parse_cursor("not-a-cursor")
    assert refused.value.status == 422


def test_the_first_pages_new_rows_are_its_filters_newer_jobs_and_bounded() -> None:
    from trainyard_contracts import JobState
    from trainyard_shared.jobindex import IndexEntry, IndexQuery, to_ns
    from trainyard_submission.ui.livejobs import MAX_NEW_ROWS, NewRows

    def job(i: int, state: JobState = JobState.SUBMITTED, **labels: str):
        spec = JobSpec(name=f"j{i}", command=["true"], labels=labels)
        return lifecycle.new_record(f"job{i:04d}", spec, T0 + timedelta(seconds=i), "api").model_copy(
            update={"state": state}
        )

    top = job(10)
    rows = NewRows(IndexQuery(labels={"team": "a"}), (to_ns(top.submitted_at), top.job_id))
    older, other, new = job(5, team="a"), job(11, team="b"), job(12, team="a")
    assert not rows.offer(IndexEntry.of(older))  # below the page's top: the page's rows do not move
    assert not rows.offer(IndexEntry.of(other))  # not the page's label
    assert rows.offer(IndexEntry.of(new)) and rows.take() == [new.job_id]
    rows.read(new.job_id, new)
    later = new.model_copy(update={"state": JobState.RUNNING})
    assert rows.offer(IndexEntry.of(later))  # an added job moved: read again, whatever its state
    rows.read(new.job_id, rows.take() and later)
    assert [r.state for r in rows.rows()] == [JobState.RUNNING]
    # an entry's record not in the page's filters (the entry said team=a) is not added
    claimed = job(13, team="a")
    assert rows.offer(IndexEntry.of(claimed)) and rows.take() == [claimed.job_id]
    rows.read(claimed.job_id, job(13, team="b"))
    assert len(rows.rows()) == 1 and not rows.to_read
    # an entry is written before its record: not there yet, the record is read again
    early = job(14, team="a")
    assert rows.offer(IndexEntry.of(early))
    rows.read(early.job_id, None)
    assert rows.take() == [early.job_id]
    rows.read(early.job_id, early)
    assert [r.job_id for r in rows.rows()] == [early.job_id, new.job_id] and not rows.to_read

    for i in range(100, 100 + 2 * MAX_NEW_ROWS):
        if rows.offer(IndexEntry.of(job(i, team="a"))):
            (job_id,) = rows.take()
            rows.read(job_id, job(i, team="a"))
    assert len(rows.rows()) == MAX_NEW_ROWS and rows.more
    # the first ones that came stay (a row never leaves); the page says there are more
    assert rows.rows()[0].job_id == f"job{100 + MAX_NEW_ROWS - 3:04d}"
