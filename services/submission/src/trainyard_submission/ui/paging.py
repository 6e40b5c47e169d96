"""The jobs table's filters and keyset paging: pure, no I/O.

A page boundary (cursor) is the last row's ``submitted_at`` and job id; the next page is the
rows past it in the table's order, the previous page the rows before the first one, read in the
opposite order and turned round. No offset is counted, so a page costs the same anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import urlencode

from trainyard_contracts import JobRecord
from trainyard_submission.api import cursor_of, parse_cursor

__all__ = ["Page", "PageRequest", "cursor_of", "parse_cursor"]


@dataclass(frozen=True)
class PageRequest:
    state: str | None = None
    queue: str | None = None
    name: str | None = None
    label: str | None = None
    oldest_first: bool = False
    cursor: str | None = None
    back: bool = False  # the rows before ``cursor`` (the previous page), not after it
    size: int = 50

    def url(self, **changes: object) -> str:
        """The jobs page with these filters, changed as given."""
        wanted = replace(self, **changes)  # type: ignore[arg-type]
        query = {
            "state": wanted.state,
            "queue": wanted.queue,
            "name": wanted.name,
            "label": wanted.label,
            "order": "oldest" if wanted.oldest_first else None,
            "cursor": wanted.cursor,
            "back": "1" if wanted.back else None,
            "size": str(wanted.size) if wanted.size != 50 else None,
        }
        shown = {k: v for k, v in query.items() if v}
        return "/ui/jobs" + (f"?{urlencode(shown)}" if shown else "")

    @property
    def live(self) -> bool:
        """Whether the page's new rows stream in: the first page, newest first (livejobs.py)."""
        return self.cursor is None and not self.oldest_first and not self.back

    def live_url(self, since: int | None, top: str | None) -> str:
        """The stream of this page's new rows: its filters, the index sequence it was read at and
        its first row (``top``: None when the page was empty)."""
        query = {"state": self.state, "queue": self.queue, "name": self.name, "label": self.label}
        shown = {k: v for k, v in query.items() if v}
        if since is not None:
            shown["since"] = str(since)
        if top is not None:
            shown["top"] = top
        return "/ui/jobs/live" + (f"?{urlencode(shown)}" if shown else "")

    def first(self) -> str:
        return self.url(cursor=None, back=False)

    def reordered(self) -> str:
        return self.url(cursor=None, back=False, oldest_first=not self.oldest_first)


@dataclass(frozen=True)
class Page:
    rows: list[JobRecord]
    previous: str | None  # the link to the page before, None on the first
    next: str | None  # the link to the page after, None on the last

    @classmethod
    def of(cls, wanted: PageRequest, read: list[JobRecord]) -> Page:
        """``read``: up to ``size + 1`` rows past the cursor, in the read's order (reversed when
        going back); one more than a page means there is a page beyond."""
        more = len(read) > wanted.size
        rows = read[: wanted.size]
        if wanted.back:
            rows.reverse()
        if not rows:
            return cls(rows, wanted.first() if wanted.cursor else None, None)
        has_previous = more if wanted.back else wanted.cursor is not None
        has_next = True if wanted.back else more
        previous = wanted.url(cursor=cursor_of(rows[0]), back=True) if has_previous else None
        following = wanted.url(cursor=cursor_of(rows[-1]), back=False) if has_next else None
        return cls(rows, previous, following)
