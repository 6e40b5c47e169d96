"""Pipeline commands: ``trainyard pipeline run FILE [-p k=v] [--wait]``, ``status``, ``list``, ``cancel``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from trainyard_client.cli.base import EXIT_INVALID, EXIT_JOB_FAILED, api_errors, settings, styled
from trainyard_client.cli.output import Output, OutputOption
from trainyard_client.cli.records import add_list_command, add_named_command, print_one, read_text

pipeline: typer.Typer = typer.Typer(
    help="Pipelines: DAGs of job steps (docs/workflows.md).", no_args_is_help=True
)
RUN = typer.Argument(metavar="RUN", help="the run id")
WAIT_POLL_SECONDS = 1.0


def _read_pipeline(file: Path, assignments: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The document and the -p values, both checked here first: errors name the field at once."""
    from trainyard_client.cli.base import print_field_errors
    from trainyard_contracts import SpecError, parse_spec_document
    from trainyard_contracts.workflow import parse_param_assignments, validate_pipeline

    text = read_text(file)
    try:
        document = parse_spec_document(text)
        params = parse_param_assignments(assignments)
        validate_pipeline(document, params)
    except SpecError as exc:
        print_field_errors(exc.errors, f"invalid pipeline: {file}")
        raise typer.Exit(EXIT_INVALID) from None
    return document, params


def _show(run: Any, fmt: Output) -> None:
    print_one(fmt, run.model_dump(mode="json"), run.run_id, lambda: _tree(run))


def _tree(run: Any) -> Any:
    from rich.markup import escape
    from rich.tree import Tree

    tree = Tree(f"[bold]{escape(run.spec.name)}[/] {run.run_id} {styled(run.state.value)}")
    for step in run.spec.steps:
        state = run.steps[step.name]
        jobs = ", ".join(j.job_id or "…" for _, j in sorted(state.jobs.items())[:5])
        more = f" (+{len(state.jobs) - 5})" if len(state.jobs) > 5 else ""
        deps = f" ← {', '.join(step.conditions())}" if step.conditions() else ""
        reason = f" [dim]{escape(state.reason)}[/]" if state.reason else ""
        tree.add(f"{escape(step.name)} {styled(state.state.value)}{deps} [dim]{jobs}{more}[/]{reason}")
    return tree


@pipeline.command("run")
def run_pipeline(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the pipeline document (YAML or JSON)")],
    param: Annotated[
        list[str] | None, typer.Option("-p", "--param", help="key=value over the defaults")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the run until it ends")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Start a run of a pipeline; with --wait, exit 1 unless it succeeded."""
    document, params = _read_pipeline(file, param or [])
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        run = client.run_pipeline(document, params)
        while wait and run.state.value == "running":
            time.sleep(WAIT_POLL_SECONDS)
            run = client.pipeline(run.run_id)
    _show(run, output)
    if wait and run.state.value != "succeeded":
        raise typer.Exit(EXIT_JOB_FAILED)


add_named_command(
    pipeline,
    "status",
    RUN,
    "A run's steps, their states and jobs.",
    lambda c, run_id: c.pipeline(run_id),
    _show,
)
add_list_command(
    pipeline,
    "Pipeline runs, newest first.",
    lambda client, limit: client.pipelines(limit),
    lambda run: run.run_id,
    lambda run: f"{run.run_id}  {run.spec.name}  {styled(run.state.value)}  {run.created:%Y-%m-%d %H:%M:%S}",
    default_limit=50,
)
add_named_command(
    pipeline,
    "cancel",
    RUN,
    "Cancel a run: no further step starts.",
    lambda client, run_id: client.cancel_pipeline(run_id),
    _show,
)
