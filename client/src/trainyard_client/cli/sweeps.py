"""Sweep commands: ``trainyard sweep run FILE [--wait]``, ``status ID``, ``best ID``, ``cancel ID``,
``list``, each with ``-o json|yaml|name`` (docs/workflows.md, "Sweeps")."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.base import EXIT_JOB_FAILED, api_errors, settings, styled
from trainyard_client.cli.output import Output, OutputOption
from trainyard_client.cli.records import add_list_command, add_named_command, print_one, read_mapping

sweep: typer.Typer = typer.Typer(
    help="Sweeps: a hyperparameter search run as jobs, Optuna as its engine (docs/workflows.md).",
    no_args_is_help=True,
)
ID = typer.Argument(metavar="ID", help="the sweep's id")
WAIT_POLL_SECONDS = 1.0


def trial_table(record: Any) -> Any:
    """The trials, best objective first (then those without one, by number)."""
    from rich.markup import escape
    from rich.table import Table

    spec = record.spec
    objective = f"{spec.objective.metric} ({spec.objective.direction.value})"
    table = Table(title=f"{escape(spec.name)} {record.sweep_id}  {objective}")
    table.add_column("trial", justify="right")
    table.add_column("state")
    table.add_column(spec.objective.metric, justify="right")
    for name in spec.space:
        table.add_column(escape(name), justify="right")
    table.add_column("step", justify="right")
    table.add_column("job")
    for trial in record.ranked():
        value = f"{trial.value:.6g}" if trial.value is not None else ""
        if trial.value is None and trial.intermediate:  # pruned or running: the latest, dimmed
            value = f"[dim]{trial.intermediate[max(trial.intermediate)]:.6g}[/]"
        marker = "*" if trial.number == record.best else ""
        params = [_param(trial.params.get(name)) for name in spec.space]
        step = "" if trial.last_step is None else str(trial.last_step)
        state = styled(trial.state.value)
        table.add_row(f"{marker}{trial.number}", state, value, *params, step, trial.job_id or "")
    return table


def _param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _summary(record: Any) -> str:
    from rich.markup import escape

    counts = ", ".join(f"{n} {state}" for state, n in record.counts().items() if n)
    best = record.best_trial()
    shown = f"  best #{best.number} {best.value:.6g}" if best is not None and best.value is not None else ""
    reason = f"  [dim]{escape(record.reason)}[/]" if record.reason else ""
    state = styled(record.state.value)
    return f"{escape(record.spec.name)} {record.sweep_id} {state}  {counts}{shown}{reason}"


def _show(record: Any, fmt: Output) -> None:
    def render() -> Any:
        from rich.console import Group

        return Group(trial_table(record), _summary(record))

    print_one(fmt, record.model_dump(mode="json"), record.sweep_id, render)


@sweep.command("run")
def run_sweep(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the sweep document (YAML or JSON)")],
    wait: Annotated[bool, typer.Option("--wait", help="follow the sweep until it ends (live table)")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Start a sweep; with --wait, follow it (the trial table and the best so far) and exit 1
    unless it succeeded."""
    from trainyard_client.cli.jobs import resolve_source

    document = read_mapping(file, "sweep")
    if isinstance(document.get("job"), dict):  # a relative source.repo: against the file's folder
        resolve_source(document["job"], file.resolve().parent)
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        record = client.run_sweep(document)
        if wait:
            record = _follow(client, record, live=output == Output.TABLE and sys.stdout.isatty())
    _show(record, output)
    if wait and record.state.value != "succeeded":
        raise typer.Exit(EXIT_JOB_FAILED)


def _follow(client: Any, record: Any, live: bool) -> Any:
    """Poll until the sweep ends; on a terminal, the table redrawn as it goes."""
    if not live:
        while record.state.value == "running":
            time.sleep(WAIT_POLL_SECONDS)
            record = client.sweep(record.sweep_id)
        return record
    from rich.console import Group
    from rich.live import Live

    with Live(Group(trial_table(record), _summary(record)), console=cli.out, transient=True) as shown:
        while record.state.value == "running":
            time.sleep(WAIT_POLL_SECONDS)
            record = client.sweep(record.sweep_id)
            shown.update(Group(trial_table(record), _summary(record)))
    return record


@sweep.command("best")
def best(ctx: typer.Context, sweep_id: Annotated[str, ID], output: OutputOption = Output.TABLE) -> None:
    """The best trial: its parameters, objective, job and the model version its job registered."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        record = client.sweep(sweep_id)
        trial = record.best_trial()
        job = client.get(trial.job_id) if trial is not None and trial.job_id else None
    if trial is None:
        cli.err.print(f"sweep {sweep_id}: no trial completed yet")
        raise typer.Exit(EXIT_JOB_FAILED)
    model = job.model if job is not None else None
    data = {
        "sweep_id": record.sweep_id,
        "trial": trial.model_dump(mode="json"),
        "model": model.model_dump(mode="json") if model is not None else None,
    }

    def render() -> str:
        params = ", ".join(f"{k}={_param(v)}" for k, v in trial.params.items())
        registered = "\nno model registered"
        if model is not None:
            registered = f"\nmodel {model.name} version {model.version}"
        return (
            f"trial {trial.number} of {record.sweep_id}: {record.spec.objective.metric} {trial.value:.6g}\n"
            f"params {params}\njob {trial.job_id}{registered}"
        )

    print_one(output, data, str(trial.number), render)


add_named_command(
    sweep,
    "status",
    ID,
    "A sweep: its trials sorted by the objective (best first), their state and parameters.",
    lambda client, key: client.sweep(key),
    _show,
)
add_named_command(
    sweep,
    "cancel",
    ID,
    "Cancel a sweep: no further trial starts, its trials' jobs are cancelled.",
    lambda client, key: client.cancel_sweep(key),
    _show,
)
add_list_command(
    sweep,
    "Sweeps, newest first by id, with their trials' states.",
    lambda client, limit: client.sweeps(limit),
    lambda record: record.sweep_id,
    _summary,
)
