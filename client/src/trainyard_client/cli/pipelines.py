"""Pipeline commands: ``trainyard pipeline run FILE [-p k=v] [--wait]``, ``status``, ``list``,
``cancel``, ``retry RUN [--wait]``, ``export --to kfp``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.base import (
    EXIT_INVALID,
    EXIT_JOB_FAILED,
    EXIT_UNREACHABLE,
    api_errors,
    fail,
    settings,
    styled,
)
from trainyard_client.cli.output import Output, OutputOption
from trainyard_client.cli.records import add_list_command, add_named_command, print_one, read_text

pipeline: typer.Typer = typer.Typer(
    help="Pipelines: DAGs of job steps (docs/workflows.md).", no_args_is_help=True
)
RUN = typer.Argument(metavar="RUN", help="the run id")
WAIT_POLL_SECONDS = 1.0


def _read_pipeline(file: Path, assignments: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The document and the -p values, both checked here first: errors name the field at once."""
    document, params, _ = _read_pipeline_spec(file, assignments)
    return document, params


def _read_pipeline_spec(file: Path, assignments: list[str]) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """As _read_pipeline, with the validated PipelineSpec (parameters substituted) too."""
    from trainyard_client.cli.base import print_field_errors
    from trainyard_contracts import SpecError, parse_spec_document
    from trainyard_contracts.workflow import parse_param_assignments, validate_pipeline

    text = read_text(file)
    try:
        document = parse_spec_document(text)
        _resolve_step_sources(document, Path.cwd() if str(file) == "-" else file.resolve().parent)
        params = parse_param_assignments(assignments)
        spec = validate_pipeline(document, params)
    except SpecError as exc:
        print_field_errors(exc.errors, f"invalid pipeline: {file}")
        raise typer.Exit(EXIT_INVALID) from None
    return document, params, spec


def _resolve_step_sources(document: Any, spec_dir: Path) -> None:
    """A step's relative local ``source.repo`` made absolute against the pipeline file's folder,
    as ``submit`` does for a job spec (``repo: ../..`` in examples/pipelines/retrain.yaml). A sweep
    step's ``file:`` (a sweep file, relative to the pipeline's folder) is read into it, the step's
    other keys over the file's (``max_trials: 2``); its job's source is resolved against the sweep
    file's own folder, as ``sweep run`` resolves it."""
    from trainyard_client.cli.jobs import resolve_source

    steps = document.get("steps") if isinstance(document, dict) else None
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        if isinstance(step, dict) and isinstance(step.get("job"), dict):
            resolve_source(step["job"], spec_dir)
        sweep = step.get("sweep") if isinstance(step, dict) else None
        if not isinstance(sweep, dict):
            continue
        sweep_dir = spec_dir
        if "file" in sweep:
            sweep, sweep_dir = _read_sweep_file(sweep, spec_dir, f"steps.{i}.sweep.file")
            step["sweep"] = sweep
        if isinstance(sweep.get("job"), dict):
            resolve_source(sweep["job"], sweep_dir)


def _read_sweep_file(sweep: dict[str, Any], spec_dir: Path, where: str) -> tuple[dict[str, Any], Path]:
    from trainyard_contracts import FieldError, SpecError, parse_spec_document

    path = spec_dir / str(sweep["file"])
    try:
        loaded = parse_spec_document(path.read_bytes())
    except OSError as exc:
        raise SpecError([FieldError(field=where, message=f"cannot read {path}: {exc.strerror}")]) from None
    except SpecError as exc:
        raise SpecError([FieldError(field=where, message=f"{path}: {exc}")]) from None
    if not isinstance(loaded, dict):
        raise SpecError([FieldError(field=where, message=f"{path}: expected a sweep document (a mapping)")])
    return {**loaded, **{k: v for k, v in sweep.items() if k != "file"}}, path.resolve().parent


def _show(run: Any, fmt: Output) -> None:
    print_one(fmt, run.model_dump(mode="json"), run.run_id, lambda: _tree(run))


def _tree(run: Any) -> Any:
    from rich.markup import escape
    from rich.tree import Tree

    again = f" (attempt {run.attempt})" if run.attempt > 1 else ""
    tree = Tree(f"[bold]{escape(run.spec.name)}[/] {run.run_id} {styled(run.state.value)}{again}")
    for step in run.spec.steps:
        state = run.steps[step.name]
        jobs = ", ".join(j.job_id or "…" for _, j in sorted(state.jobs.items())[:5])
        jobs = f"sweep {jobs}" if step.sweep is not None and jobs else jobs
        more = f" (+{len(state.jobs) - 5})" if len(state.jobs) > 5 else ""
        deps = f" ← {', '.join(step.conditions())}" if step.conditions() else ""
        reason = f" [dim]{escape(state.reason)}[/]" if state.reason else ""
        shown = f"{styled(state.state.value)}{_cached(state)}"
        tree.add(f"{escape(step.name)} {shown}{deps} [dim]{jobs}{more}[/]{reason}")
    return tree


def _cached(step: Any) -> str:
    """`` (cached from RUN)`` for a step the step cache answered (its jobs are that run's)."""
    from rich.markup import escape

    cache = getattr(step, "cache", None)
    if cache is None or cache.state != "hit":
        return ""
    return f" [cyan](cached from {escape(cache.from_run or '?')})[/]"


def _plan(spec: Any) -> Any:
    """What a run of ``spec`` would do, step by step, parameters substituted: each step's job (its
    queue and command), array, or sweep (its trials, space, objective, sampler and pruner)."""
    from rich.markup import escape
    from rich.tree import Tree

    tree = Tree(f"[bold]{escape(spec.name)}[/] [dim](dry run: nothing submitted)[/]")
    for step in spec.steps:
        deps = f" ← {', '.join(step.conditions())}" if step.conditions() else ""
        if step.sweep is not None:
            sweep = step.sweep
            space = ", ".join(sweep.space)
            what = (
                f"sweep {escape(sweep.name)}: {sweep.max_trials} trials, {sweep.max_parallel} at once, "
                f"over {escape(space)}; {sweep.objective.direction.value} {escape(sweep.objective.metric)}; "
                f"sampler {sweep.sampler.type.value}, pruner {sweep.pruner.type.value}; "
                f"queue {_queue(sweep.job.get('queue'))}"
            )
        else:
            job = step.job
            array = f"array {step.array} of " if step.array else ""
            queue = _queue(job.queue if "queue" in job.model_fields_set else None)
            what = f"{array}job {escape(job.name)}, queue {queue}: {escape(' '.join(job.command))}"
        tree.add(f"{escape(step.name)}{deps} [dim]{what}[/]")
    return tree


def _queue(named: Any) -> str:
    from rich.markup import escape

    # none named: the API places it where the runner's own jobs go
    return escape(str(named)) if named else "default (a team token: the team's)"


@pipeline.command("run")
def run_pipeline(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the pipeline document (YAML or JSON)")],
    param: Annotated[
        list[str] | None, typer.Option("-p", "--param", help="key=value over the defaults")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the run until it ends")] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="check the document and show its steps (sweep steps too); run nothing"
        ),
    ] = False,
    no_cache: Annotated[
        bool,
        typer.Option("--no-cache", help="run the `cache: true` steps without looking in the step cache"),
    ] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Start a run of a pipeline; with --wait, exit 1 unless it succeeded."""
    document, params, spec = _read_pipeline_spec(file, param or [])
    if dry_run:  # checked here only: the API holds the steps to the queue rules when it runs
        print_one(output, spec.model_dump(mode="json", exclude_unset=True), spec.name, lambda: _plan(spec))
        return
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        run = _waited(client, client.run_pipeline(document, params, no_cache=no_cache), wait, output)
    _show(run, output)
    if wait and run.state.value != "succeeded":
        raise typer.Exit(EXIT_JOB_FAILED)


class ExportTarget(StrEnum):
    kfp = "kfp"


@pipeline.command("export")
def export_pipeline(
    file: Annotated[Path, typer.Argument(help="the pipeline document (YAML or JSON)")],
    to: Annotated[ExportTarget, typer.Option("--to", help="the format: kfp (Kubeflow Pipelines IR YAML)")],
    out: Annotated[
        Path | None, typer.Option("-o", "--output", help="write the YAML here (default: stdout)")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("-p", "--param", help="key=value over the defaults")
    ] = None,
    default_image: Annotated[
        str | None,
        typer.Option(
            "--default-image", help="image of the steps that name none (default: kfp's python:3.11)"
        ),
    ] = None,
) -> None:
    """Write a pipeline in another system's format, here to run it there (docs/kubeflow.md).

    Parameters are substituted now (defaults, then -p). Exit 2 naming each field the target
    cannot express; exit 3 when the kfp SDK is not installed (the message says how to get it)."""
    from rich.markup import escape

    from trainyard_client.cli.base import print_field_errors
    from trainyard_client.kfpexport import KfpMissing, compile_plan, find_kfp_python, plan_kfp
    from trainyard_contracts import SpecError

    _, _, spec = _read_pipeline_spec(file, param or [])
    try:
        plan = plan_kfp(spec, default_image)
    except SpecError as exc:
        print_field_errors(exc.errors, f"cannot export {file} to {to.value}")
        raise typer.Exit(EXIT_INVALID) from None
    try:
        python = find_kfp_python()
    except KfpMissing as exc:
        fail(f"[bold red]{escape(str(exc))}[/]", EXIT_UNREACHABLE)
    try:
        text = compile_plan(plan, python)
    except RuntimeError as exc:
        fail(escape(str(exc)), EXIT_INVALID)
    if plan.dropped:
        cli.err.print(
            "[dim]not exported (Trainyard's scheduling and registry only): "
            + escape(", ".join(plan.dropped))
            + "[/]"
        )
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        cli.err.print(f"wrote {escape(str(out))} ({len(plan.document['steps'])} steps, kfp IR YAML)")


@pipeline.command("retry")
def retry_pipeline(
    ctx: typer.Context,
    run_id: Annotated[str, RUN],
    wait: Annotated[bool, typer.Option("--wait", help="follow the run until it ends")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Run a failed or cancelled run again from the steps that did not succeed (succeeded steps
    keep their jobs and outputs); with --wait, exit 1 unless it succeeded."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        seen = client.pipeline(run_id)  # the attempt retried: asking twice is one retry
        run = _waited(client, client.retry_pipeline(run_id, seen.attempt), wait, output)
    _show(run, output)
    if wait and run.state.value != "succeeded":
        raise typer.Exit(EXIT_JOB_FAILED)


def _waited(client: Any, run: Any, wait: bool, output: Output = Output.TABLE) -> Any:
    """Until the run ends (``wait``): on a terminal a live table of its steps, else a line per
    step change (on stderr when stdout is for -o json|yaml|name)."""
    if not wait:
        return run
    from trainyard_client.cli.pipeline_watch import follow

    table = output == Output.TABLE
    live = table and cli.out.is_terminal

    def say(line: str) -> None:
        typer.echo(line, err=not table)

    return follow(client, run, live, say, poll=WAIT_POLL_SECONDS)


@pipeline.command("status")
def pipeline_status(
    ctx: typer.Context,
    run_id: Annotated[str, RUN],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="follow the run until it ends")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """A run's steps, their states and jobs; with --watch, followed until the run ends."""
    conf = settings(ctx)
    with api_errors(conf.url), conf.client() as client:
        run = _waited(client, client.pipeline(run_id), watch, output)
    _show(run, output)


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
