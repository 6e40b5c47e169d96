"""Plain text for times, metrics and commits (no rich, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime


def age(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def clock(when: datetime | None, compact: bool = False) -> str:
    """Local time; ``compact`` drops the date when it is today."""
    if when is None:
        return "-"
    local = when.astimezone()
    if compact and local.date() == datetime.now().astimezone().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M:%S")


def metrics_text(metrics: dict[str, float], sep: str = ", ") -> str:
    return sep.join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())) or "-"


def short(commit: str | None) -> str:
    return commit[:10] if commit else "-"


def job_page(api_url: str, job_id: str) -> str:
    """The job's page in the web UI, served beside the API (docs/ui.md)."""
    return f"{api_url.rstrip('/')}/ui/jobs/{job_id}"
