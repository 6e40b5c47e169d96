"""Model commands: ``trainyard models [list] [NAME] | promote | rollback | show | compare | lineage`` and
``trainyard audit``, each with ``-o json`` (docs/models.md)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from trainyard_client import cli
from trainyard_client.cli.base import EXIT_INVALID, EXIT_REFUSED, api_errors, fail, settings
from trainyard_client.cli.output import Column, Output, OutputOption, emit, print_data, structured

if TYPE_CHECKING:
    from trainyard_contracts.modelregistry import (
        AliasChange,
        AliasState,
        DatasetRef,
        ModelLineage,
        VersionInfo,
    )


class ModelsGroup(TyperGroup):
    """``trainyard models`` and ``trainyard models NAME`` list versions as before the subcommands:
    anything that is not a subcommand (or help) is the ``list`` command's."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


models = typer.Typer(
    cls=ModelsGroup,
    help="Registered model versions; aliases (promote, rollback), show, compare, lineage (docs/models.md).",
)
NAME = typer.Argument(metavar="NAME", help="the registered model")
ALIAS = typer.Option("--alias", "-a", help="the alias (MLflow's models:/NAME@ALIAS)")
ExpectRevision = Annotated[
    int | None,
    typer.Option("--expect-revision", min=0, help="refuse (409) if the alias moved since this revision"),
]


@models.command("list")
def list_models(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="one registered model")] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Registered model versions with their job, git commit and metrics."""
    from rich.markup import escape

    from trainyard_client.cli.render import print_models

    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        versions = client.models(name)
    if name and not versions:  # a model asked for by name that does not exist is an error (exit 4)
        fail(f"no registered versions of {escape(name)}", EXIT_REFUSED)
    print_models(versions, output, "no registered models yet")


@models.command("promote")
def promote(
    ctx: typer.Context,
    name: Annotated[str, NAME],
    version: Annotated[int, typer.Argument(min=1, help="the version to promote")],
    alias: Annotated[str, ALIAS] = "production",
    if_better: Annotated[
        str | None,
        typer.Option("--if-better", metavar="METRIC", help="only if METRIC beats the current holder's"),
    ] = None,
    lower_is_better: Annotated[
        bool, typer.Option("--lower-is-better", help="with --if-better: a lower METRIC is better (a loss)")
    ] = False,
    min_delta: Annotated[
        float, typer.Option("--min-delta", min=0, help="with --if-better: by more than this much")
    ] = 0.0,
    expect_revision: ExpectRevision = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Point NAME@ALIAS at VERSION. With --if-better, only when VERSION beats the holder: the answer
    says which and why, and the exit code is 0 either way (a pipeline step goes on)."""
    if (lower_is_better or min_delta) and if_better is None:
        fail("[bold red]--lower-is-better and --min-delta go with --if-better METRIC[/]", EXIT_INVALID)
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        change = client.promote_model(
            name,
            version,
            alias,
            if_better=if_better,
            lower_is_better=lower_is_better,
            min_delta=min_delta,
            expected_revision=expect_revision,
        )
    _print_change(change, "promoted", output)


@models.command("rollback")
def rollback(
    ctx: typer.Context,
    name: Annotated[str, NAME],
    alias: Annotated[str, ALIAS] = "production",
    expect_revision: ExpectRevision = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Point NAME@ALIAS back at its previous holder (again: one more step back)."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        change = client.rollback_model(name, alias, expected_revision=expect_revision)
    _print_change(change, "rolled back", output)


@models.command("show")
def show(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="NAME@ALIAS | NAME", help="an alias, or a model")],
    version: Annotated[int | None, typer.Argument(metavar="[VERSION]", min=1, help="with NAME")] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """An alias (its holder, the holders before it, its revision) or one version (params, metrics,
    commit, workdir digest, aliases)."""
    name, at, alias = target.partition("@")
    if bool(at) == (version is not None):
        fail("[bold red]give NAME@ALIAS, or NAME and VERSION[/]", EXIT_INVALID)
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        if at:
            view = client.model_alias(name, alias)
            if structured(output):
                print_data(view.model_dump(mode="json"), output)
                return
            _print_state(view.state)
            if view.version is not None:
                _print_version(view.version)
            return
        assert version is not None
        info = client.model_version(name, version)
    if structured(output):
        print_data(info.model_dump(mode="json"), output)
    else:
        _print_version(info)


@models.command("compare")
def compare(
    ctx: typer.Context,
    name: Annotated[str, NAME],
    first: Annotated[int, typer.Argument(metavar="V1", min=1)],
    second: Annotated[int, typer.Argument(metavar="V2", min=1)],
    output: OutputOption = Output.TABLE,
) -> None:
    """Two versions side by side: provenance, params and metrics; rows that differ are marked."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        a, b = client.compare_models(name, first, second)
    rows = compared_rows(a, b)
    if structured(output):
        data = {"name": name, "versions": [a.model_dump(mode="json"), b.model_dump(mode="json")]}
        print_data({**data, "differs": [field for field, x, y in rows if x != y]}, output)
        return
    columns = (
        Column("diff", lambda r: "*" if r[1] != r[2] else "="),
        Column("field", lambda r: r[0]),
        Column(f"v{a.version}", lambda r: r[1], wrap=True),
        Column(f"v{b.version}", lambda r: r[2], wrap=True),
    )
    emit(rows, columns, output, name=lambda r: str(r[0]), empty="nothing to compare")


@models.command("lineage")
def lineage(
    ctx: typer.Context,
    name: Annotated[str, NAME],
    version: Annotated[int, typer.Argument(min=1, help="the version")],
    output: OutputOption = Output.TABLE,
) -> None:
    """Where VERSION came from: job, attempt, executor and backend, commit, pipeline run or sweep,
    image digest, runtime-env lock, and its input datasets with digests."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        found = client.model_lineage(name, version)
    if structured(output):
        print_data(found.model_dump(mode="json"), output)
        return
    _print_lineage(found)


def _print_lineage(found: ModelLineage) -> None:
    from rich.markup import escape

    def either(*values: object) -> str:
        return " ".join(str(v) for v in values if v) or "-"

    rows = [
        ("version", f"{found.name} v{found.version}"),
        ("job", either(found.job_id, f"attempt {found.attempt}" if found.attempt else None)),
        ("queue", found.queue or "-"),
        ("executor", either(found.executor_id, f"({found.backend})" if found.backend else None)),
        ("git", f"{found.git_repo or '-'} @ {found.git_commit or '-'}"),
        ("uncommitted diff", found.uncommitted_diff or "-"),
        ("workdir", found.workdir_digest or "-"),
        (
            "pipeline run",
            either(found.pipeline_run, f"step {found.pipeline_step}" if found.pipeline_step else None),
        ),
        ("sweep", either(found.sweep, f"trial {found.sweep_trial}" if found.sweep_trial else None)),
        ("image", either(found.image, found.image_digest)),
        ("runtime lock", found.runtime_lock or "-"),
        ("run", found.run_id or "-"),
        ("logged model", found.model_id or "-"),
    ]
    columns = (Column("field", lambda r: r[0]), Column("value", lambda r: r[1], wrap=True))
    emit(rows, columns, Output.TABLE, name=lambda r: r[0], empty="")
    if not found.datasets:
        cli.out.print("no input datasets recorded")
        return
    dataset_columns = (
        Column("dataset", lambda d: d.name),
        Column("digest", lambda d: d.digest or "-"),
        Column("context", lambda d: d.context or "-"),
        Column("source", lambda d: d.source or "-", wrap=True),
    )
    cli.out.print(f"[bold]input datasets of {escape(found.name)} v{found.version}[/]")
    emit(found.datasets, dataset_columns, Output.TABLE, name=lambda d: d.name, empty="")


def datasets_text(datasets: list[DatasetRef]) -> str:
    return ", ".join(f"{d.name}@{d.digest or '?'}" for d in datasets) or "-"


def compared_rows(a: VersionInfo, b: VersionInfo) -> list[tuple[str, str, str]]:
    """(field, a's value, b's value): provenance first, then every param and metric of either."""

    def text(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(value, float):
            return f"{value:.6g}"
        if isinstance(value, list):
            return ", ".join(str(v) for v in value) or "-"
        return str(value)

    fields = (
        "job_id",
        "queue",
        "run_id",
        "git_repo",
        "git_commit",
        "uncommitted_diff",
        "workdir_digest",
        "image",
        "image_digest",
        "runtime_lock",
        "aliases",
        "created_at",
    )
    rows = [(f, text(getattr(a, f)), text(getattr(b, f))) for f in fields]
    rows.append(("datasets", datasets_text(a.datasets), datasets_text(b.datasets)))
    for param in sorted(a.params.keys() | b.params.keys()):
        rows.append((f"params.{param}", text(a.params.get(param)), text(b.params.get(param))))
    for metric in sorted(a.metrics.keys() | b.metrics.keys()):
        rows.append((f"metrics.{metric}", text(a.metrics.get(metric)), text(b.metrics.get(metric))))
    return rows


def _print_change(change: AliasChange, verb: str, output: Output) -> None:
    from rich.markup import escape

    if structured(output):
        print_data(change.model_dump(mode="json"), output)
        return
    state = change.state
    target = f"{state.name}@{state.alias}" if state else "?"
    before = f"v{change.previous.version}" if change.previous else "unset"
    if change.changed and state is not None:
        cli.out.print(
            f"{verb} [bold]{escape(target)}[/]: {before} -> [bold green]v{state.version}[/]"
            f"  [dim](revision {state.revision})[/]"
        )
    else:
        candidate = f"v{change.version.version}" if change.version else "?"
        cli.out.print(f"[yellow]not {verb}[/] {escape(target)}: stays {before} (asked: {candidate})")
    if change.reason:
        cli.out.print(f"  {escape(change.reason)}")


def _print_state(state: AliasState) -> None:
    from rich.markup import escape

    when = f"{state.set_at:%Y-%m-%d %H:%M:%S}" if state.set_at else "?"
    cli.out.print(
        f"[bold]{escape(state.name)}@{escape(state.alias)}[/] -> [bold green]v{state.version}[/]"
        f"  set {when} by {escape(state.by or '?')}  [dim](revision {state.revision})[/]"
    )
    for holder in reversed(state.history):
        cli.out.print(
            f"  before: v{holder.version}  set {holder.set_at:%Y-%m-%d %H:%M:%S} by {escape(holder.by)}"
        )


def _print_version(info: VersionInfo) -> None:
    from trainyard_client.cli.formatting import metrics_text

    rows = [
        ("version", f"{info.name} v{info.version}"),
        ("aliases", ", ".join(info.aliases) or "-"),
        ("job", info.job_id or "-"),
        ("queue", info.queue or "-"),
        ("git", f"{info.git_repo or '-'} @ {info.git_commit or '-'}"),
        ("workdir", info.workdir_digest or "-"),
        ("uncommitted diff", info.uncommitted_diff or "-"),
        ("image", " ".join(x for x in (info.image, info.image_digest) if x) or "-"),
        ("runtime lock", info.runtime_lock or "-"),
        ("datasets", datasets_text(info.datasets)),
        ("run", info.run_id or "-"),
        ("metrics", metrics_text(info.metrics)),
        ("params", ", ".join(f"{k}={v}" for k, v in info.params.items()) or "-"),
    ]
    columns = (Column("field", lambda r: r[0]), Column("value", lambda r: r[1], wrap=True))
    emit(rows, columns, Output.TABLE, name=lambda r: r[0], empty="")


def audit(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO 8601 time with offset, or a duration: 30m, 12h, 7d")
    ] = None,
    who: Annotated[str | None, typer.Option("--who", help="an actor, token id or team")] = None,
    model: Annotated[str | None, typer.Option("--model", help="one registered model")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="the newest this many")] = 100,
    output: OutputOption = Output.TABLE,
) -> None:
    """The audit stream: who promoted or rolled back what, when, from what to what (a team token
    reads its own entries)."""
    start = parse_since(since) if since else None
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        entries = client.audit(start, who, model, limit)

    def change(e: Any) -> str:
        if not e.action.startswith("model."):
            return e.detail or "-"
        before, after = (e.before or {}).get("version"), (e.after or {}).get("version")
        return f"{f'v{before}' if before else 'unset'} -> {f'v{after}' if after else 'unset'}"

    columns = (
        Column("time", lambda e: f"{e.time:%Y-%m-%d %H:%M:%S}"),
        Column("actor", lambda e: e.actor),
        Column("action", lambda e: e.action),
        Column("target", lambda e: e.target),
        Column("change", change),
        Column("token", lambda e: e.token_id or "-", wide_only=True),
        Column("team", lambda e: e.team or "-", wide_only=True),
        Column("detail", lambda e: e.detail or "-", wide_only=True, wrap=True),
    )
    emit(entries, columns, output, name=lambda e: e.entry_id, empty="no audit entries")


def parse_since(value: str) -> datetime:
    """``2026-12-01T00:00:00Z`` (with an offset), or a duration back from now: ``30m``, ``12h``, ``7d``."""
    from datetime import UTC, timedelta

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(
            "[bold red]--since[/]: expected an ISO 8601 time (2026-12-01T00:00:00Z) or 30m, 12h, 7d",
            EXIT_INVALID,
        )
    if moment.tzinfo is None:
        fail("[bold red]--since[/]: give the offset too (+01:00, or Z for UTC)", EXIT_INVALID)
    return moment
