"""The ``trainyard`` command line: submit, status, logs, cancel, models, and ``up`` (embedded stack).

Exit codes: 0 success; 1 the job ended failed / timed_out / cancelled / rejected (or the stack
stopped because a service died); 2 invalid spec or usage; 3 cannot reach the server; 4 the server
refused the request (401, 404, 409, 5xx ...).
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainyard_client.sdk import (
    LogEvent,
    TrainyardClient,
    TrainyardError,
    TrainyardUnavailable,
    default_url,
)
from trainyard_contracts import (
    DryRunAnswer,
    FieldError,
    JobRecord,
    JobState,
    SpecError,
    WaitReason,
    parse_spec_document,
    validate_spec,
)

EXIT_OK, EXIT_JOB_FAILED, EXIT_INVALID, EXIT_UNREACHABLE, EXIT_REFUSED = 0, 1, 2, 3, 4
POLL_SECONDS = 0.5
MODEL_WAIT_SECONDS = 60.0

app = typer.Typer(
    name="trainyard",
    help="Trainyard: submit and follow training jobs, see registered models, run the embedded stack.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

STATE_STYLE = {
    "submitted": "cyan",
    "queued": "cyan",
    "requeued": "yellow",
    "scheduled": "blue",
    "running": "bold blue",
    "succeeded": "bold green",
    "failed": "bold red",
    "timed_out": "bold red",
    "cancelled": "yellow",
    "rejected": "bold red",
}


@dataclass
class Settings:
    url: str
    token: str | None

    def client(self) -> TrainyardClient:
        return TrainyardClient(self.url, self.token)


def styled(state: str | JobState) -> str:
    value = state.value if isinstance(state, JobState) else str(state)
    return f"[{STATE_STYLE.get(value, 'white')}]{value}[/]"


def fail(message: str, code: int) -> NoReturn:
    err.print(message)
    raise typer.Exit(code)


def print_field_errors(errors: list[FieldError], title: str = "invalid job spec") -> None:
    table = Table(title=title, title_style="bold red", title_justify="left", show_lines=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("problem", overflow="fold")
    for error in errors:
        table.add_row(escape(error.field), escape(error.message))
    err.print(table)


@contextlib.contextmanager
def api_errors(url: str) -> Iterator[None]:
    """Turn SDK errors into a clear message and the CLI's exit codes."""
    try:
        yield
    except TrainyardUnavailable as exc:
        fail(
            f"[bold red]cannot reach Trainyard at {escape(url)}[/] — is `trainyard up` running?"
            f"\n[dim]{escape(exc.detail)}[/]",
            EXIT_UNREACHABLE,
        )
    except TrainyardError as exc:
        if exc.status == 422 and exc.errors:
            print_field_errors(exc.errors, f"the server rejected the spec: {exc.title}")
            raise typer.Exit(EXIT_INVALID) from None
        detail = f": {escape(exc.detail)}" if exc.detail else ""
        fail(f"[bold red]{exc.status} {escape(exc.title)}[/]{detail}", EXIT_REFUSED)


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.obj
    if not isinstance(obj, Settings):  # a command invoked without the callback (tests)
        obj = Settings(default_url(), None)
    return obj


# formatting helpers


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


# submit


def _is_local_path(repo: str) -> bool:
    """A path rather than a URL: no scheme, not scp-like ``[user@]host:path``."""
    if "://" in repo or repo.startswith("file:"):
        return False
    head, colon, _ = repo.partition(":")
    return not (colon and "/" not in head and len(head) > 1)


def resolve_source(data: dict[str, Any], spec_dir: Path) -> bool:
    """Make a relative local ``source.repo`` absolute against the spec file's folder."""
    source = data.get("source")
    if not isinstance(source, dict):
        return False
    repo = source.get("repo")
    if not isinstance(repo, str) or not repo or not _is_local_path(repo):
        return False
    path = Path(repo).expanduser()
    if path.is_absolute() and path == Path(repo):
        return False
    source["repo"] = str((spec_dir / path).resolve())
    return True


def _state_lines(record: JobRecord, shown: set[tuple[str, str]]) -> list[str]:
    lines = []
    for state, when in sorted(record.state_times.items(), key=lambda item: item[1]):
        key = (state, when.isoformat())
        if key in shown:
            continue
        shown.add(key)
        extra = ""
        if state == JobState.SCHEDULED and record.executor_id:
            extra = f" on {escape(record.executor_id)}"
        if state in (JobState.SCHEDULED, JobState.RUNNING, JobState.REQUEUED) and record.attempt > 1:
            extra += f" (attempt {record.attempt})"
        lines.append(f"[dim]{clock(when)}[/]  {styled(state)}{extra}")
    return lines


def _print_log(event: LogEvent, attempt: int | None) -> int | None:
    if event.attempt is not None and event.attempt != attempt:
        if attempt is not None or event.attempt > 1:
            out.rule(f"attempt {event.attempt}", style="dim")
        attempt = event.attempt
    if event.stream == "system":
        out.print(f"[dim italic]{escape(event.text)}[/]", soft_wrap=True)
    else:
        out.print(event.text, markup=False, highlight=False, soft_wrap=True)
    return attempt


def _wait(client: TrainyardClient, job_id: str, wants_model: str | None) -> int:
    shown: set[tuple[str, str]] = set()
    record = client.get(job_id)

    def show(rec: JobRecord) -> None:
        for line in _state_lines(rec, shown):
            out.print(line)

    show(record)
    with out.status(f"{job_id}: {record.state.value}", spinner="dots") as status:
        while record.state != JobState.RUNNING and not record.state.terminal:
            time.sleep(POLL_SECONDS)
            record = client.get(job_id)
            show(record)
            status.update(f"{job_id}: {record.state.value}")
    if record.attempts:  # it ran (or tried to): its output, live until it ends
        out.rule("logs", style="dim")
        attempt = None
        try:
            for event in client.follow_logs(job_id):
                if event.event == "log":
                    attempt = _print_log(event, attempt)
                elif event.event == "end":
                    break
        except TrainyardUnavailable as exc:
            err.print(f"[yellow]the log stream broke ({escape(exc.detail)}); waiting for the job[/]")
        out.rule(style="dim")
    with out.status(f"{job_id}: waiting for the end", spinner="dots"):
        record = client.wait(job_id, poll=POLL_SECONDS, on_change=show)
    show(record)
    summary = f"job {job_id} {styled(record.state)}"
    if record.exit_code is not None:
        summary += f", exit code {record.exit_code}"
    if record.reason and record.state != JobState.SUCCEEDED:
        summary += f": {escape(record.reason)}"
    out.print(summary)
    if record.state != JobState.SUCCEEDED:
        return EXIT_JOB_FAILED
    if wants_model:
        with out.status(f"waiting for model {wants_model} to be registered", spinner="dots"):
            model = record.model or client.wait_for_model(job_id, MODEL_WAIT_SECONDS, POLL_SECONDS)
        if model is None:
            err.print(
                f"[yellow]model {escape(wants_model)} not registered within {MODEL_WAIT_SECONDS:.0f}s;"
                f" see `trainyard models {escape(wants_model)}` later[/]"
            )
        else:
            out.print(
                f"model [bold]{escape(model.name)}[/] version [bold]{model.version}[/]"
                f"  commit {short(model.git_commit)}  run {model.run_id or '-'}",
                soft_wrap=True,
            )
            if model.metrics:
                table = Table("metric", "value", title_justify="left")
                for key, value in sorted(model.metrics.items()):
                    table.add_row(escape(key), f"{value:.6g}")
                out.print(table)
    return EXIT_OK


@app.command()
def submit(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="job spec, YAML or JSON ('-' reads stdin)")],
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="follow the job to its end (and its model)")
    ] = False,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="the same key always returns the same job")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the job id")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="ask what the scheduler would decide now; queue nothing")
    ] = False,
) -> None:
    """Validate a job spec locally, submit it, and print its job id."""
    if str(file) == "-":
        text, spec_dir = sys.stdin.read(), Path.cwd()
    else:
        try:
            text = file.read_text()
        except OSError as exc:
            fail(f"[bold red]cannot read {escape(str(file))}[/]: {escape(exc.strerror or str(exc))}", 2)
        spec_dir = file.resolve().parent
    try:
        data = parse_spec_document(text)
        changed = resolve_source(data, spec_dir)
        spec = validate_spec(data)
    except SpecError as exc:
        print_field_errors(exc.errors, f"invalid job spec: {file}")
        raise typer.Exit(EXIT_INVALID) from None
    body = yaml.safe_dump(data, sort_keys=False) if changed else text
    conf = settings(ctx)
    if dry_run:
        with api_errors(conf.url), conf.client() as client:
            print_dry_run(client.dry_run(body))
        return
    with api_errors(conf.url), conf.client() as client:
        result = client.submit(body, idempotency_key=idempotency_key)
        if quiet:
            out.print(result.job_id)
        else:
            note = " (duplicate: the job this key already submitted)" if result.duplicate else ""
            out.print(f"job [bold]{result.job_id}[/] {styled(result.state)}{note}")
        if not wait:
            return
        try:
            code = _wait(client, result.job_id, spec.outputs.model if spec.outputs else None)
        except KeyboardInterrupt:
            err.print(
                f"stopped waiting; the job keeps going. `trainyard logs -f {result.job_id}` or"
                f" `trainyard cancel {result.job_id}`"
            )
            raise typer.Exit(130) from None
    raise typer.Exit(code)


def _reason_lines(reason: WaitReason | None) -> list[str]:
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
        out.print(f"would start now on {', '.join(answer.executors)} (nothing was queued)")
    else:
        out.print("would wait (nothing was queued)")
        for line in _reason_lines(answer.reason):
            out.print(f"  {line}")


@app.command()
def why(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """Why a job is still pending: the resource, quota or gang constraint, its place in its queue
    and an estimated start, as the scheduler leader saw it on its last pass."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        answer = client.why(job_id)
    if not answer.found:
        fail(f"no such job: {escape(job_id)}", 1)
    out.print(f"job [bold]{escape(job_id)}[/] {styled(answer.state or 'unknown')}")
    for line in _reason_lines(answer.reason):
        out.print(f"  {line}")
    if answer.decided_at is not None:
        out.print(
            f"  [dim]as of the scheduler's pass at {clock(answer.decided_at)} (leader {answer.leader})[/]"
        )


# status, logs, cancel, models


@app.command()
def status(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(metavar="[JOB]", help="one job's details")] = None,
    state: Annotated[str | None, typer.Option("--state", help="only jobs in this state")] = None,
    queue: Annotated[str | None, typer.Option("--queue", help="only jobs of this queue")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="at most this many")] = 50,
) -> None:
    """The list of jobs, newest first, or one job's record."""
    if state is not None and state not in {s.value for s in JobState}:
        fail(f"--state must be one of {', '.join(s.value for s in JobState)}", 2)
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        if job_id:
            show_record(client.get(job_id))
            return
        jobs = client.list(state=state, queue=queue, limit=limit)
    if not jobs:
        out.print("no jobs" + (" matching" if state or queue else " yet"))
        return
    now = datetime.now(UTC)
    table = Table()
    table.add_column("job", no_wrap=True, min_width=16)
    table.add_column("name", overflow="fold")
    table.add_column("queue", overflow="fold")
    for column in ("state", "attempt", "age", "exit"):
        table.add_column(column, no_wrap=True)
    table.add_column("model", overflow="fold")
    for job in jobs:
        table.add_row(
            job.job_id,
            escape(job.name),
            escape(job.queue),
            styled(job.state),
            str(job.attempt),
            age(job.submitted_at, now),
            "-" if job.exit_code is None else str(job.exit_code),
            f"{escape(job.model.name)} v{job.model.version}" if job.model else "",
        )
    out.print(table)


def show_record(record: JobRecord) -> None:
    spec = record.spec
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
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
        rows.append(
            (
                "source",
                f"{escape(spec.source.repo)} @ {escape(spec.source.ref)} ({short(spec.source.commit)})",
            )
        )
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
    for key, value in rows:
        grid.add_row(key, value)
    out.print(grid)
    if record.attempts:
        table = Table(title="attempts", title_justify="left")
        for column in ("attempt", "executor", "scheduled", "started", "ended", "state", "exit"):
            table.add_column(column, no_wrap=True)
        table.add_column("reason", overflow="fold")
        for info in record.attempts:
            table.add_row(
                str(info.number),
                escape(info.executor_id or "-"),
                clock(info.scheduled_at, compact=True),
                clock(info.started_at, compact=True),
                clock(info.ended_at, compact=True),
                styled(info.state) if info.state else "-",
                "-" if info.exit_code is None else str(info.exit_code),
                escape(info.reason or ""),
            )
        out.print(table)


@app.command()
def logs(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until the job ends")] = False,
    attempt: Annotated[int | None, typer.Option("--attempt", min=1, help="one attempt only")] = None,
) -> None:
    """A job's output (stdout, stderr and Trainyard's own notes)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        if not follow:
            sys.stdout.write(client.logs(job_id, attempt=attempt))
            sys.stdout.flush()
            return
        current = None
        try:
            for event in client.follow_logs(job_id, attempt=attempt):
                if event.event == "log":
                    current = _print_log(event, current)
                elif event.event == "end":
                    err.print(f"[dim]job {job_id} ended: {styled(event.state or 'unknown')}[/]")
                    break
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


@app.command()
def cancel(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """Ask for a job to stop (queued: at once; running: SIGTERM, then SIGKILL after a grace)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        record = client.cancel(job_id)
    out.print(f"cancel requested for [bold]{record.job_id}[/] (now {styled(record.state)})")


@app.command()
def purge(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """Remove a finished job: its record and the record's history, its secrets, its logs and its
    idempotency key (admin, or the job's team)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        removed = client.purge(job_id)
    out.print(
        f"purged [bold]{removed['job_id']}[/]: {removed['record_revisions']} record revisions, "
        f"{removed['log_chunks']} log chunks, secrets {'removed' if removed['secrets'] else 'none left'}, "
        f"idempotency key {'removed' if removed['idempotency_entry'] else 'none'}"
    )


@app.command()
def models(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="one registered model")] = None,
) -> None:
    """Registered model versions with their job, git commit and metrics."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        versions = client.models(name)
    if not versions:
        out.print(f"no registered versions of {escape(name)}" if name else "no registered models yet")
        return
    table = Table()
    for column in ("name", "version", "job", "git commit"):
        table.add_column(column, no_wrap=True)
    table.add_column("metrics", overflow="fold")
    for version in versions:
        table.add_row(
            escape(version.name),
            str(version.version),
            version.job_id,
            short(version.git_commit),
            escape(metrics_text(version.metrics, "\n")),
        )
    out.print(table)


dlq = typer.Typer(help="Dead letters: messages a service could not handle, and why.", no_args_is_help=True)
app.add_typer(dlq, name="dlq")


@dlq.command("list")
def dlq_list(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option(help="only this service's letters")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """List dead letters with their reason."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        letters = client.dead_letters(service, limit)
    if not letters:
        out.print("no dead letters")
        return
    table = Table()
    for column in ("seq", "service", "subject", "deliveries"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason", overflow="fold")
    for letter in letters:
        table.add_row(
            str(letter["seq"]),
            escape(letter["service"]),
            escape(letter["subject"]),
            str(letter["deliveries"]),
            escape(letter["reason"]),
        )
    out.print(table)


@dlq.command("replay")
def dlq_replay(ctx: typer.Context, seq: Annotated[int, typer.Argument(metavar="SEQ", min=1)]) -> None:
    """Publish a dead letter again on its original subject (after the cause is fixed)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        letter = client.replay_dead_letter(seq)
    out.print(f"replayed {seq} onto {escape(letter['subject'])}")


queues = typer.Typer(
    help="Queue configuration: weight, quota, cohort, shell (writes need an admin token).",
    no_args_is_help=True,
)
app.add_typer(queues, name="queues")
UNLIMITED = ("unlimited", "none", "-")


def _amount(value: str | None, what: str, memory: bool = False) -> tuple[bool, float | int | None]:
    """(given?, amount) for a quota option: a number, memory like 16Gi, or 'unlimited'."""
    if value is None:
        return False, None
    if value.lower() in UNLIMITED:
        return True, None
    try:
        if memory:
            from trainyard_contracts.units import parse_memory_mb

            return True, int(parse_memory_mb(int(value) if re.fullmatch(r"\d+", value) else value))
        number = float(value)
        return True, int(number) if what.endswith("gpu") else number
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r}: a number or 'unlimited' ({exc})", param_hint=what) from None


@queues.command("set")
def queues_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="the queue (= the team)")],
    weight: Annotated[float | None, typer.Option(help="share of the cluster vs other queues")] = None,
    cpu: Annotated[str | None, typer.Option(help="nominal CPU quota, or 'unlimited'")] = None,
    memory: Annotated[str | None, typer.Option(help="nominal memory, e.g. 64Gi, or 'unlimited'")] = None,
    gpu: Annotated[str | None, typer.Option(help="nominal GPU quota, or 'unlimited'")] = None,
    cohort: Annotated[str | None, typer.Option(help="queues of a cohort lend each other quota")] = None,
    borrow_cpu: Annotated[str | None, typer.Option(help="CPUs it may borrow from its cohort")] = None,
    borrow_memory: Annotated[str | None, typer.Option(help="memory it may borrow from its cohort")] = None,
    borrow_gpu: Annotated[str | None, typer.Option(help="GPUs it may borrow from its cohort")] = None,
    allow_shell: Annotated[
        bool | None, typer.Option("--allow-shell/--no-allow-shell", help="accept specs with shell: true")
    ] = None,
    allow_root: Annotated[
        bool | None,
        typer.Option("--allow-root/--no-allow-root", help="accept specs with run_as_root: true (containers)"),
    ] = None,
    preemptible: Annotated[
        bool | None,
        typer.Option("--preemptible-by-default/--not-preemptible-by-default", help="jobs preemptible"),
    ] = None,
    max_priority: Annotated[
        int | None, typer.Option(help="the highest priority a spec may ask for in this queue")
    ] = None,
    allow_anonymous_bus: Annotated[
        bool | None,
        typer.Option(
            "--allow-anonymous-bus/--no-allow-anonymous-bus",
            help="accept bus submissions without a Trainyard-Token",
        ),
    ] = None,
) -> None:
    """Create a queue or change the options given (the rest keep their values; compare-and-set)."""
    from pydantic import ValidationError

    from trainyard_contracts import DEFAULT_QUEUE, QueueConfig
    from trainyard_contracts.spec import field_errors

    conf = settings(ctx)
    quota = {
        k: _amount(v, f"--{k}", k == "memory") for k, v in (("cpu", cpu), ("memory", memory), ("gpu", gpu))
    }
    borrow = {
        k: _amount(v, f"--borrow-{k}", k == "memory")
        for k, v in (("cpu", borrow_cpu), ("memory", borrow_memory), ("gpu", borrow_gpu))
    }
    with api_errors(conf.url), conf.client() as client:
        for _ in range(5):  # another admin may write the same queue between our read and write
            current = client.get_queue(name)
            base = current.config if current else (DEFAULT_QUEUE if name == "default" else None)
            data: dict[str, Any] = base.model_dump(mode="json") if base else {"name": name}
            if weight is not None:
                data["weight"] = weight
            if cohort is not None:
                data["cohort"] = cohort or None
            if allow_shell is not None:
                data["allow_shell"] = allow_shell
            if allow_root is not None:
                data["allow_root"] = allow_root
            if preemptible is not None:
                data["preemptible_by_default"] = preemptible
            if max_priority is not None:
                data["max_priority"] = max_priority
            if allow_anonymous_bus is not None:
                data["allow_anonymous_bus"] = allow_anonymous_bus
            for key, changes in (("quota", quota), ("borrowing_limit", borrow)):
                section = dict(data.get(key) or {})
                section.update({k: v for k, (given, v) in changes.items() if given})
                data[key] = section
            try:
                config = QueueConfig.model_validate(data)
            except ValidationError as exc:
                print_field_errors(field_errors(exc), f"invalid configuration for queue {name}")
                raise typer.Exit(EXIT_INVALID) from None
            try:
                stored = client.set_queue(config, if_revision=current.revision if current else 0)
                break
            except TrainyardError as exc:
                if exc.status != 412:
                    raise
        else:
            fail(f"[bold red]queue {escape(name)} kept changing; try again[/]", EXIT_REFUSED)
    out.print(f"queue {escape(name)} set (revision {stored.revision})")
    _print_queues([stored])


def _quota_text(value: float | int | None, memory: bool = False) -> str:
    if value is None:
        return "∞"
    if memory:
        return f"{value / 1024:g}Gi" if value >= 1024 else f"{value}Mi"
    return f"{value:g}"


def _print_queues(entries: list[Any]) -> None:
    table = Table()
    columns = (
        "queue",
        "weight",
        "cpu",
        "memory",
        "gpu",
        "cohort",
        "borrow cpu/mem/gpu",
        "shell",
        "root",
        "max priority",
        "anonymous bus",
        "revision",
    )
    for column in columns:
        table.add_column(column, no_wrap=True)
    for entry in entries:
        q, b = entry.config.quota, entry.config.borrowing_limit
        table.add_row(
            escape(entry.config.name),
            f"{entry.config.weight:g}",
            _quota_text(q.cpu),
            _quota_text(q.memory, memory=True),
            _quota_text(q.gpu),
            escape(entry.config.cohort or "-"),
            f"{_quota_text(b.cpu)}/{_quota_text(b.memory, memory=True)}/{_quota_text(b.gpu)}",
            "yes" if entry.config.allow_shell else "no",
            "yes" if entry.config.allow_root else "no",
            str(entry.config.max_priority),
            "yes" if entry.config.allow_anonymous_bus else "no",
            str(entry.revision) if entry.revision else "built-in",
        )
    out.print(table)


@queues.command("list")
def queues_list(ctx: typer.Context) -> None:
    """Every queue's configuration (∞: unlimited)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        entries = client.queues()
    _print_queues(entries)


@queues.command("delete")
def queues_delete(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Remove a queue's configuration (its jobs stay; built-in defaults apply again)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        client.delete_queue(name)
    out.print(f"queue {escape(name)} deleted")


tokens = typer.Typer(
    help="API tokens: one per team (its queue), or admin (needs an admin token).", no_args_is_help=True
)
app.add_typer(tokens, name="tokens")


@tokens.command("create")
def tokens_create(
    ctx: typer.Context,
    team: Annotated[str | None, typer.Option(help="the team's queue: the one queue it acts on")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="an admin token instead")] = False,
    description: Annotated[str, typer.Option(help="who or what uses it")] = "",
) -> None:
    """Create a token and print it once (only its digest is kept)."""
    if (team is None) == (not admin):
        raise typer.BadParameter("give --team NAME or --admin", param_hint="--team/--admin")
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        created = client.create_token(team=team, admin=admin, description=description)
    err.print(
        f"token {created.token_id} for {'admin' if created.admin else 'team ' + escape(team or '')}"
        " — shown once, store it now:"
    )
    print(created.token)  # plain stdout, so `TOKEN=$(trainyard tokens create ...)` works


@tokens.command("list")
def tokens_list(ctx: typer.Context) -> None:
    """Every token's id, team and description (never the token)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        rows = client.tokens()
    if not rows:
        out.print("no tokens (the bootstrap admin token is not listed)")
        return
    table = Table()
    for column in ("id", "team", "created", "description"):
        table.add_column(column, no_wrap=column != "description")
    for row in rows:
        who = "admin" if row.admin else escape(row.team or "")
        table.add_row(row.token_id, who, clock(row.created_at), escape(row.description))
    out.print(table)


@tokens.command("revoke")
def tokens_revoke(ctx: typer.Context, token_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke a token at once (every replica checks the bucket on each request)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        client.revoke_token(token_id)
    out.print(f"token {escape(token_id)} revoked")


# up


def _memory(value: str | None) -> int | None:
    if value is None:
        return None
    from trainyard_contracts.units import parse_memory_mb

    try:
        return int(parse_memory_mb(int(value) if re.fullmatch(r"\d+", value) else value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--executor-memory") from None


@app.command()
def up(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", envvar="TRAINYARD_DATA_DIR", help="all state and logs")
    ] = Path(".trainyard"),
    api_port: Annotated[int, typer.Option("--api-port", help="HTTP API; services use the next 4")] = 8700,
    nats_port: Annotated[int, typer.Option("--nats-port")] = 4250,
    nats_monitor_port: Annotated[
        int | None, typer.Option("--nats-monitor-port", help="default: a free port")
    ] = None,
    prefix: Annotated[str, typer.Option("--prefix", envvar="TRAINYARD_PREFIX")] = "trainyard",
    executor_cpu: Annotated[
        float | None, typer.Option("--executor-cpu", help="CPUs the executor offers (default: all)")
    ] = None,
    executor_memory: Annotated[
        str | None, typer.Option("--executor-memory", help="memory it offers, e.g. 8Gi (default: all)")
    ] = None,
    executor_gpu: Annotated[int | None, typer.Option("--executor-gpu", help="GPUs it offers")] = None,
    max_restarts: Annotated[
        int,
        typer.Option(
            "--max-restarts",
            min=0,
            help="restarts of a process that exits, within 60 s, before the stack stops (0: stop at once)",
        ),
    ] = 5,
    ready_timeout: Annotated[
        float, typer.Option("--ready-timeout", min=1, help="seconds the services may take to start")
    ] = 90.0,
) -> None:
    """Run the whole stack on this machine (nats-server and the five services) until Ctrl-C.

    A service (or nats-server) that exits is restarted after 1, 2, 4, 8 s; one that exits again
    after --max-restarts restarts within 60 s stops the stack."""
    from trainyard_client import stack as stack_module
    from trainyard_client.supervision import RestartPolicy

    missing = stack_module.missing_packages()
    if missing:
        needs = ", ".join(missing)
        fail(f"[bold red]`trainyard up` needs {needs}[/]: {escape(stack_module.INSTALL_HINT)}", 1)
    try:
        from trainyard_contracts import Subjects

        Subjects(prefix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--prefix") from None
    stack = stack_module.EmbeddedStack(
        data_dir,
        api_port=api_port,
        nats_port=nats_port,
        nats_monitor_port=nats_monitor_port,
        prefix=prefix,
        executor_cpu=executor_cpu,
        executor_memory=_memory(executor_memory),
        executor_gpu=executor_gpu,
        ready_timeout=ready_timeout,
        restart_policy=RestartPolicy(limit=max_restarts),
        on_restart=_say_restart,
    )

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    code = EXIT_OK
    started = False
    try:
        with out.status(f"starting nats-server and the services (data in {stack.data_dir})"):
            stack.start()
        started = True
        _print_up(stack)
        while True:
            stack.raise_if_failed()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except stack_module.ServiceDied as exc:
        for service in exc.dead:
            returncode = service.process.returncode if service.process else "?"
            err.print(
                f"[bold red]the {service.name} service exited (code {returncode})[/];"
                f" last lines of {escape(str(service.log_path))}:",
                soft_wrap=True,
            )
            err.print(escape(exc.tails.get(service.name, "")), soft_wrap=True)
        if max_restarts:
            err.print(
                f"[bold red]it exited again after {max_restarts} restart(s) within 60s: stopping[/]",
                soft_wrap=True,
            )
        code = EXIT_JOB_FAILED
    except stack_module.StackError as exc:
        err.print(f"[bold red]{escape(str(exc))}[/]", soft_wrap=True)
        code = EXIT_JOB_FAILED
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            with out.status("stopping the services and nats-server"):
                stack.stop()
            _say_what_was_killed(stack)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    if started:
        out.print("Trainyard stopped" + ("" if code == EXIT_OK else " (a service failed)"))
    elif code != EXIT_OK:
        err.print("Trainyard did not start")
    raise typer.Exit(code)


def _say_restart(restart: Any, tail: str) -> None:
    """Told by the stack's supervisor (a thread) of each exit it answers with a restart."""
    if restart.given_up:
        return  # `up` says so when it stops
    code = "?" if restart.exit_code is None else restart.exit_code
    err.print(
        f"[bold yellow]the {restart.service} service exited (code {code})[/]; restarting it in"
        f" {restart.delay_seconds:g}s (restart {restart.number} of {restart.limit} within 60s);"
        " last lines of its log:",
        soft_wrap=True,
    )
    err.print(escape(tail), soft_wrap=True)


def _say_what_was_killed(stack: Any) -> None:
    for name in stack.killed_services:
        err.print(
            f"[bold yellow]the {name} service did not stop within {stack.stop_timeout:g}s: killed it[/]",
            soft_wrap=True,
        )
    if stack.leftovers:
        err.print(
            f"[bold yellow]killed {len(stack.leftovers)} process(es) still running after the services"
            " stopped:[/]",
            soft_wrap=True,
        )
        for leftover in stack.leftovers:
            err.print(f"  {leftover.pid} {escape(leftover.command[:200])}", soft_wrap=True)


def _print_up(stack: Any) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("API", stack.api_url)
    grid.add_row("token file", str(stack.token_file))
    grid.add_row("NATS", f"{stack.nats_url}  (monitor {stack.nats_monitor_url}, prefix {stack.prefix})")
    grid.add_row("NATS users", f"{stack.nats_auth_dir}  (<user>.password; another system: client)")
    for name, url in stack.metrics_urls.items():
        grid.add_row(f"{name} metrics", url)
    grid.add_row("MLflow", stack.mlflow_tracking_uri)
    grid.add_row("logs", str(stack.log_dir))
    out.print("[bold green]Trainyard is up[/]")
    out.print(grid)
    hints = []
    if stack.api_url != default_url():
        hints.append(f"export TRAINYARD_URL={stack.api_url}")
    if stack.token_file.resolve() != Path(".trainyard/api-token").resolve():
        hints.append(f"export TRAINYARD_DATA_DIR={stack.data_dir}")
    if hints:
        out.print("[dim]in another shell: " + "; ".join(hints) + "[/]", soft_wrap=True)
    out.print("[dim]Ctrl-C stops everything; jobs and models stay in the data dir.[/]")


@app.command()
def simulate(
    nodes: Annotated[
        int | None, typer.Option(min=1, help="nodes (default 20; overrides the workload's counts)")
    ] = None,
    duration: Annotated[float | None, typer.Option(min=1, help="simulated seconds of arrivals")] = None,
    seed: Annotated[int, typer.Option(help="random seed: the same seed gives the same run")] = 1,
    workload: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="YAML workload (see docs/scheduling.md)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Run the scheduler's policy over a synthetic workload in simulated time (nothing sleeps)."""
    # the scheduler package is imported here, not at the top: the client depends on no service
    try:
        from trainyard_scheduler.simulator import WorkloadError, default_workload, load_workload, simulate
    except ImportError:
        fail("[bold red]the simulator needs the scheduler package: pip install trainyard-client[stack][/]", 2)
    try:
        chosen = load_workload(workload) if workload else default_workload(nodes or 20)
    except WorkloadError as exc:
        fail(f"[bold red]{escape(str(exc))}[/]", EXIT_INVALID)
    if workload and nodes:
        scale = nodes / sum(n.count for n in chosen.nodes)
        types = [n.model_copy(update={"count": max(1, round(n.count * scale))}) for n in chosen.nodes]
        chosen = chosen.model_copy(update={"nodes": types})
    if duration:
        chosen = chosen.model_copy(update={"duration": duration})
    report = simulate(chosen, seed=seed)
    if as_json:
        import json

        out.print_json(json.dumps(report))
        return
    _print_simulation(report)


def _print_simulation(report: dict[str, Any]) -> None:
    jobs, ms = report["jobs"], report["decision_ms"]
    out.print(
        f"[bold]{report['nodes']} nodes, {report['simulated_seconds']:g} s simulated, "
        f"{report['cycles']} planning passes, seed {report['seed']}[/]"
    )
    out.print(
        f"jobs: {jobs['submitted']} submitted, {jobs['started']} started, {jobs['finished']} finished, "
        f"{jobs['pending_at_end']} still waiting"
    )
    util = ", ".join(f"{k} {v:.0%}" for k, v in report["utilisation"].items())
    fairness = report["fairness_jain"]
    out.print(
        f"utilisation: {util}; fairness (Jain, contended passes): {'-' if fairness is None else fairness}"
    )
    table = Table("queue", "weight", "entitled", "share when active", "started", "wait p50 s", "wait p99 s")
    for name, wait in report["wait_seconds"].items():
        share = report["shares"][name]
        table.add_row(
            escape(name),
            f"{share['weight']:g}",
            f"{share['entitled']:.0%}",
            "-" if share["average_when_active"] is None else f"{share['average_when_active']:.0%}",
            f"{wait['jobs']}/{wait['submitted']}",
            "-" if wait["p50"] is None else f"{wait['p50']:g}",
            "-" if wait["p99"] is None else f"{wait['p99']:g}",
        )
    out.print(table)
    d = report["decisions"]
    out.print(
        f"decisions: {d['assignments']} starts, {d['preemptions']} preemptions, "
        f"{d['cycles_with_reservation']} passes with a reservation"
    )
    if ms["mean"] is not None:
        out.print(
            f"decision time per pass (wall clock): mean {ms['mean']} ms, p50 {ms['p50']} ms, "
            f"p99 {ms['p99']} ms, max {ms['max']} ms"
        )


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", envvar="TRAINYARD_URL", help="the API (default http://127.0.0.1:8700)"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="TRAINYARD_TOKEN", help="API token (default: <data dir>/api-token)"),
    ] = None,
) -> None:
    ctx.obj = Settings(url or default_url(), token)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
