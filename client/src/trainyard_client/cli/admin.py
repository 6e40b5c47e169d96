"""Administration: dead letters (``dlq``), queue configuration (``queues``) and API tokens (``tokens``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.base import EXIT_INVALID, EXIT_REFUSED, api_errors, fail, settings
from trainyard_client.cli.formatting import clock
from trainyard_client.cli.output import Column, Output, OutputOption, emit, print_data, record_of, structured

if TYPE_CHECKING:
    from trainyard_client.sdk import TrainyardClient
    from trainyard_contracts import QueueConfig

dlq: typer.Typer = typer.Typer(
    help="Dead letters: messages a service could not handle, and why.", no_args_is_help=True
)
queues: typer.Typer = typer.Typer(
    help="Queue configuration: weight, quota, cohort, shell (writes need an admin token).",
    no_args_is_help=True,
)
tokens: typer.Typer = typer.Typer(
    help="API tokens: one per team (its queue), or admin (needs an admin token).", no_args_is_help=True
)
UNLIMITED = ("unlimited", "none", "-")
DEAD_LETTER_COLUMNS = (
    Column("seq", lambda d: str(d["seq"])),
    Column("service", lambda d: d["service"]),
    Column("subject", lambda d: d["subject"]),
    Column("deliveries", lambda d: str(d["deliveries"])),
    Column("reason", lambda d: d["reason"], wrap=True),
)


@dlq.command("list")
def dlq_list(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option(help="only this service's letters")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    output: OutputOption = Output.TABLE,
) -> None:
    """List dead letters with their reason."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        letters = client.dead_letters(service, limit)
    emit(letters, DEAD_LETTER_COLUMNS, output, name=lambda d: str(d["seq"]), empty="no dead letters")


@dlq.command("replay")
def dlq_replay(ctx: typer.Context, seq: Annotated[int, typer.Argument(metavar="SEQ", min=1)]) -> None:
    """Publish a dead letter again on its original subject (after the cause is fixed)."""
    from rich.markup import escape

    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        letter = client.replay_dead_letter(seq)
    cli.out.print(f"replayed {seq} onto {escape(letter['subject'])}")


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


def _queue_config(name: str, base: QueueConfig | None, changes: dict[str, Any]) -> QueueConfig:
    """``base`` (or a new queue) with the options given applied; exits 2 on an invalid result."""
    from pydantic import ValidationError

    from trainyard_client.cli.base import print_field_errors
    from trainyard_contracts import QueueConfig
    from trainyard_contracts.spec import field_errors

    data: dict[str, Any] = base.model_dump(mode="json") if base else {"name": name}
    data.update({k: v for k, v in changes.items() if k not in ("quota", "borrowing_limit")})
    for key in ("quota", "borrowing_limit"):
        section = dict(data.get(key) or {})
        section.update({k: v for k, (given, v) in changes[key].items() if given})
        data[key] = section
    try:
        return QueueConfig.model_validate(data)
    except ValidationError as exc:
        print_field_errors(field_errors(exc), f"invalid configuration for queue {name}")
        raise typer.Exit(EXIT_INVALID) from None


def _set_queue(client: TrainyardClient, name: str, changes: dict[str, Any]) -> Any:
    """Read, change and write the queue, again if another admin wrote it in between (412)."""
    from rich.markup import escape

    from trainyard_client.sdk import TrainyardError
    from trainyard_contracts import DEFAULT_QUEUE

    for _ in range(5):
        current = client.get_queue(name)
        base = current.config if current else (DEFAULT_QUEUE if name == "default" else None)
        config = _queue_config(name, base, changes)
        try:
            return client.set_queue(config, if_revision=current.revision if current else 0)
        except TrainyardError as exc:
            if exc.status != 412:
                raise
    fail(f"[bold red]queue {escape(name)} kept changing; try again[/]", EXIT_REFUSED)


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
    metric_names: Annotated[
        str | None,
        typer.Option(
            help="metric names its running jobs show in Prometheus, comma-separated shell-style "
            "patterns (loss,eval/*); '' for every name",
        ),
    ] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Create a queue or change the options given (the rest keep their values; compare-and-set)."""
    from rich.markup import escape

    options = {
        "weight": weight,
        "cohort": None if cohort is None else (cohort or None),
        "allow_shell": allow_shell,
        "allow_root": allow_root,
        "preemptible_by_default": preemptible,
        "max_priority": max_priority,
        "allow_anonymous_bus": allow_anonymous_bus,
    }
    changes: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if cohort == "":
        changes["cohort"] = None
    if metric_names is not None:
        changes["metric_names"] = [p.strip() for p in metric_names.split(",") if p.strip()] or None
    changes["quota"] = {
        k: _amount(v, f"--{k}", k == "memory") for k, v in (("cpu", cpu), ("memory", memory), ("gpu", gpu))
    }
    changes["borrowing_limit"] = {
        k: _amount(v, f"--borrow-{k}", k == "memory")
        for k, v in (("cpu", borrow_cpu), ("memory", borrow_memory), ("gpu", borrow_gpu))
    }
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        stored = _set_queue(client, name, changes)
    if output in (Output.TABLE, Output.WIDE):
        cli.out.print(f"queue {escape(name)} set (revision {stored.revision})")
    _print_queues([stored], output)


def _quota_text(value: float | int | None, memory: bool = False) -> str:
    if value is None:
        return "∞"
    if memory:
        return f"{value / 1024:g}Gi" if value >= 1024 else f"{value}Mi"
    return f"{value:g}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _borrow_text(entry: Any) -> str:
    b = entry.config.borrowing_limit
    return f"{_quota_text(b.cpu)}/{_quota_text(b.memory, memory=True)}/{_quota_text(b.gpu)}"


QUEUE_COLUMNS = (
    Column("queue", lambda e: e.config.name),
    Column("weight", lambda e: f"{e.config.weight:g}"),
    Column("cpu", lambda e: _quota_text(e.config.quota.cpu)),
    Column("memory", lambda e: _quota_text(e.config.quota.memory, memory=True)),
    Column("gpu", lambda e: _quota_text(e.config.quota.gpu)),
    Column("cohort", lambda e: e.config.cohort or "-"),
    Column("borrow cpu/mem/gpu", _borrow_text),
    Column("shell", lambda e: _yes(e.config.allow_shell)),
    Column("root", lambda e: _yes(e.config.allow_root)),
    Column("max priority", lambda e: str(e.config.max_priority)),
    Column("anonymous bus", lambda e: _yes(e.config.allow_anonymous_bus)),
    Column("revision", lambda e: str(e.revision) if e.revision else "built-in"),
)


def _print_queues(entries: list[Any], output: Output) -> None:
    emit(entries, QUEUE_COLUMNS, output, name=lambda e: e.config.name, empty="no queues")


@queues.command("list")
def queues_list(ctx: typer.Context, output: OutputOption = Output.TABLE) -> None:
    """Every queue's configuration (∞: unlimited)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        entries = client.queues()
    _print_queues(entries, output)


@queues.command("delete")
def queues_delete(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Remove a queue's configuration (its jobs stay; built-in defaults apply again)."""
    _act_on(ctx, lambda client: client.delete_queue(name), "queue", name, "deleted")


def _act_on(
    ctx: typer.Context, act: Callable[[TrainyardClient], object], kind: str, name: str, done: str
) -> None:
    """One call that changes the named thing, then a line that says so (``queue q1 deleted``)."""
    from rich.markup import escape

    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        act(client)
    cli.out.print(f"{kind} {escape(name)} {done}")


@tokens.command("create")
def tokens_create(
    ctx: typer.Context,
    team: Annotated[str | None, typer.Option(help="the team's queue: the one queue it acts on")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="an admin token instead")] = False,
    description: Annotated[str, typer.Option(help="who or what uses it")] = "",
    output: OutputOption = Output.TABLE,
) -> None:
    """Create a token and print it once (only its digest is kept)."""
    from rich.markup import escape

    if (team is None) == (not admin):
        raise typer.BadParameter("give --team NAME or --admin", param_hint="--team/--admin")
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        created = client.create_token(team=team, admin=admin, description=description)
    if structured(output):  # the one time the token is in the record
        print_data(record_of(created), output)
        return
    cli.err.print(
        f"token {created.token_id} for {'admin' if created.admin else 'team ' + escape(team or '')}"
        " — shown once, store it now:"
    )
    print(created.token)  # plain stdout, so `TOKEN=$(trainyard tokens create ...)` works


TOKEN_COLUMNS = (
    Column("id", lambda t: t.token_id),
    Column("team", lambda t: "admin" if t.admin else (t.team or "")),
    Column("created", lambda t: clock(t.created_at)),
    Column("description", lambda t: t.description, wrap=True),
)


@tokens.command("list")
def tokens_list(ctx: typer.Context, output: OutputOption = Output.TABLE) -> None:
    """Every token's id, team and description (never the token)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        rows = client.tokens()
    empty = "no tokens (the bootstrap admin token is not listed)"
    emit(rows, TOKEN_COLUMNS, output, name=lambda t: t.token_id, empty=empty)


@tokens.command("revoke")
def tokens_revoke(ctx: typer.Context, token_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke a token at once (every replica checks the bucket on each request)."""
    _act_on(ctx, lambda client: client.revoke_token(token_id), "token", token_id, "revoked")
