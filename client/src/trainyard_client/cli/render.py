"""Jobs, models and scheduler answers as rich tables and lines on the CLI's console."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from trainyard_client import cli
from trainyard_client.cli.base import styled
from trainyard_client.cli.formatting import age, clock, metrics_text, short
from trainyard_client.cli.output import Column, Output, emit, print_data, record_of, structured
from trainyard_contracts import DryRunAnswer, JobRecord, ModelVersionRecord, WaitReason


def reason_lines(reason: WaitReason | None) -> list[str]:
    if reason is None:
        return []
    lines = [f"[bold]{escape(reason.kind)}[/]: {escape(reason.message)}"]
    if reason.position is not None:
        of = f" of {reason.queue_length}" if reason.queue_length else ""
        lines.append(f"position in its queue: {reason.position}{of}")
    if reason.estimated_start is not None:
        lines.append(f"estimated start: {clock(reason.estimated_start)} ({age(reason.estimated_start)})")
    return lines


def print_dry_run(answer: DryRunAnswer) -> None:
    if answer.would_start:
        cli.out.print(f"would start now on {', '.join(answer.executors)} (nothing was queued)")
    else:
        cli.out.print("would wait (nothing was queued)")
        for line in reason_lines(answer.reason):
            cli.out.print(f"  {line}")


def _record_rows(record: JobRecord) -> list[tuple[str, str]]:
    spec = record.spec
    rows: list[tuple[str, str]] = [
        ("job", record.job_id),
        ("name", escape(spec.name)),
        ("state", styled(record.state) + (" (cancel requested)" if record.cancel_requested else "")),
        ("queue", f"{escape(spec.queue)} (priority {spec.priority})"),
        ("command", escape(" ".join(spec.argv()))),
        (
            "resources",
            f"cpu {spec.resources.cpu:g}, memory {spec.resources.memory} MiB, "
            f"gpu {spec.resources.gpu}, replicas {spec.replicas}",
        ),
        ("attempt", f"{record.attempt} (retries used {record.retries_used} of {spec.retries.limit})"),
        ("executor", escape(record.executor_id or "-")),
        ("submitted", f"{clock(record.submitted_at)} by {escape(record.submitted_by or '-')}"),
        ("updated", clock(record.updated_at)),
    ]
    if spec.source:
        source = spec.source
        rows.append(("source", f"{escape(source.repo)} @ {escape(source.ref)} ({short(source.commit)})"))
    if record.not_before:
        rows.append(("not before", clock(record.not_before)))
    if record.exit_code is not None:
        rows.append(("exit code", str(record.exit_code)))
    if record.reason:
        rows.append(("reason", escape(record.reason)))
    if record.outputs_uri:
        rows.append(("outputs", escape(record.outputs_uri)))
    if record.model:
        model = record.model
        rows.append(
            (
                "model",
                f"{escape(model.name)} version {model.version}, commit "
                f"{short(model.git_commit)}, run {model.run_id or '-'}",
            )
        )
        rows.append(("metrics", escape(metrics_text(model.metrics))))
    elif spec.outputs and spec.outputs.model:
        rows.append(("model", f"{escape(spec.outputs.model)} (not registered yet)"))
    return rows


def print_record(record: JobRecord, fmt: Output, page: str | None = None) -> None:
    """One job: its record (json, yaml), its id (name), or the detail view (with ``page``: the
    link to the job's page in the web UI)."""
    if structured(fmt):
        print_data(record_of(record), fmt)
    elif fmt == Output.NAME:
        cli.out.print(record.job_id, markup=False)
    else:
        show_record(record, page)


def show_record(record: JobRecord, page: str | None = None) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in _record_rows(record):
        grid.add_row(key, value)
    if page:
        grid.add_row("page", escape(page))
    cli.out.print(grid)
    if not record.attempts:
        return
    table = Table(title="attempts", title_justify="left")
    for column in (
        "attempt",
        "executor",
        "scheduled",
        "started",
        "ended",
        "state",
        "exit",
        "cpu s",
        "peak mem",
    ):
        table.add_column(column, no_wrap=True)
    # GPU-hours only where an attempt's GPUs were sampled (NVML, docs/insight.md)
    gpus = any(info.usage is not None and info.usage.gpu_seconds is not None for info in record.attempts)
    if gpus:
        table.add_column("gpu h", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for info in record.attempts:
        gpu_hours = () if not gpus else (_gpu_hours(info.usage.gpu_seconds if info.usage else None),)
        table.add_row(
            str(info.number),
            escape(info.executor_id or "-"),
            clock(info.scheduled_at, compact=True),
            clock(info.started_at, compact=True),
            clock(info.ended_at, compact=True),
            styled(info.state) if info.state else "-",
            "-" if info.exit_code is None else str(info.exit_code),
            "-" if info.usage is None else f"{info.usage.cpu_seconds:.1f}",
            "-" if info.usage is None else f"{info.usage.peak_memory_bytes / 2**20:.0f} MiB",
            *gpu_hours,
            escape(info.reason or ""),
        )
    cli.out.print(table)


def _gpu_hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.2f}"


MODEL_COLUMNS = (
    Column("name", lambda v: v.name),
    Column("version", lambda v: str(v.version)),
    Column("job", lambda v: v.job_id),
    Column("git commit", lambda v: short(v.git_commit)),
    Column("metrics", lambda v: metrics_text(v.metrics), wrap=True),
    Column("run", lambda v: v.run_id or "-", wide_only=True),
    Column("created", lambda v: clock(v.created_at), wide_only=True),
)


def print_models(versions: list[ModelVersionRecord], fmt: Output, empty: str) -> None:
    emit(versions, MODEL_COLUMNS, fmt, name=lambda v: f"{v.name}/{v.version}", empty=empty)


def _isolation(row: dict[str, Any], field: str) -> str:
    isolation = row.get("isolation") or {}
    value = isolation.get(field)
    return "?" if value is None else str(value)


EXECUTOR_COLUMNS = (
    Column("executor", lambda r: r["executor_id"]),
    Column("backend", lambda r: r["backend"]),
    Column("pool", lambda r: r["pool"]),
    Column("alive", lambda r: ("draining" if r.get("draining") else "yes") if r["alive"] else "no"),
    Column("running", lambda r: str(r["running"])),
    Column("job user", lambda r: _isolation(r, "job_user"), wrap=True),
    Column("containment", lambda r: _isolation(r, "containment"), wrap=True),
    Column("capabilities", lambda r: _isolation(r, "capabilities"), wide_only=True),
    Column("gang network", lambda r: _isolation(r, "gang_network"), wide_only=True, wrap=True),
    Column(
        "notes", lambda r: "; ".join((r.get("isolation") or {}).get("notes") or []), wide_only=True, wrap=True
    ),
)


def print_executors(rows: list[dict[str, Any]], fmt: Output) -> None:
    emit(rows, EXECUTOR_COLUMNS, fmt, name=lambda r: str(r["executor_id"]), empty="no executors")
