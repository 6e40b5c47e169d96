"""Administration: dead letters (``dlq``), queue configuration (``queues``) and API tokens (``tokens``)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.base import EXIT_INVALID, EXIT_REFUSED, api_errors, fail, settings

if TYPE_CHECKING:
    from trainyard_client.sdk import TrainyardClient
    from trainyard_contracts import QueueConfig

dlq = typer.Typer(help="Dead letters: messages a service could not handle, and why.", no_args_is_help=True)
queues = typer.Typer(
    help="Queue configuration: weight, quota, cohort, shell (writes need an admin token).",
    no_args_is_help=True,
)
tokens = typer.Typer(
    help="API tokens: one per team (its queue), or admin (needs an admin token).", no_args_is_help=True
)
UNLIMITED = ("unlimited", "none", "-")


@dlq.command("list")
def dlq_list(
    ctx: typer.Context,
    service: Annotated[str | None, typer.Option(help="only this service's letters")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """List dead letters with their reason."""
    from rich.markup import escape
    from rich.table import Table

    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        letters = client.dead_letters(service, limit)
    if not letters:
        cli.out.print("no dead letters")
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
    cli.out.print(table)


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
    cli.out.print(f"queue {escape(name)} set (revision {stored.revision})")
    _print_queues([stored])


def _quota_text(value: float | int | None, memory: bool = False) -> str:
    if value is None:
        return "∞"
    if memory:
        return f"{value / 1024:g}Gi" if value >= 1024 else f"{value}Mi"
    return f"{value:g}"


QUEUE_COLUMNS = (
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


def _print_queues(entries: list[Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for column in QUEUE_COLUMNS:
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
    cli.out.print(table)


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
    from rich.markup import escape

    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        client.delete_queue(name)
    cli.out.print(f"queue {escape(name)} deleted")


@tokens.command("create")
def tokens_create(
    ctx: typer.Context,
    team: Annotated[str | None, typer.Option(help="the team's queue: the one queue it acts on")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="an admin token instead")] = False,
    description: Annotated[str, typer.Option(help="who or what uses it")] = "",
) -> None:
    """Create a token and print it once (only its digest is kept)."""
    from rich.markup import escape

    if (team is None) == (not admin):
        raise typer.BadParameter("give --team NAME or --admin", param_hint="--team/--admin")
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        created = client.create_token(team=team, admin=admin, description=description)
    cli.err.print(
        f"token {created.token_id} for {'admin' if created.admin else 'team ' + escape(team or '')}"
        " — shown once, store it now:"
    )
    print(created.token)  # plain stdout, so `TOKEN=$(trainyard tokens create ...)` works


@tokens.command("list")
def tokens_list(ctx: typer.Context) -> None:
    """Every token's id, team and description (never the token)."""
    from rich.markup import escape
    from rich.table import Table

    from trainyard_client.cli.formatting import clock

    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        rows = client.tokens()
    if not rows:
        cli.out.print("no tokens (the bootstrap admin token is not listed)")
        return
    table = Table()
    for column in ("id", "team", "created", "description"):
        table.add_column(column, no_wrap=column != "description")
    for row in rows:
        who = "admin" if row.admin else escape(row.team or "")
        table.add_row(row.token_id, who, clock(row.created_at), escape(row.description))
    cli.out.print(table)


@tokens.command("revoke")
def tokens_revoke(ctx: typer.Context, token_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Revoke a token at once (every replica checks the bucket on each request)."""
    from rich.markup import escape

    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        client.revoke_token(token_id)
    cli.out.print(f"token {escape(token_id)} revoked")
