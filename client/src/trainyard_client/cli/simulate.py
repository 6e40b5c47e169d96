"""``trainyard simulate``: the scheduler's policy over a synthetic workload in simulated time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.base import EXIT_INVALID, fail
from trainyard_client.cli.output import Output, OutputOption, print_data, structured


def simulate(
    nodes: Annotated[
        int | None, typer.Option(min=1, help="nodes (default 20; overrides the workload's counts)")
    ] = None,
    duration: Annotated[float | None, typer.Option(min=1, help="simulated seconds of arrivals")] = None,
    seed: Annotated[int, typer.Option(help="random seed: the same seed gives the same run")] = 1,
    workload: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="YAML workload (see docs/scheduling.md)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON (-o json)")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Run the scheduler's policy over a synthetic workload in simulated time (nothing sleeps)."""
    from rich.markup import escape

    # the scheduler package is imported here, not at the top: the client depends on no service
    try:
        from trainyard_scheduler.simulator import WorkloadError, default_workload, load_workload
        from trainyard_scheduler.simulator import simulate as run_simulation
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
    report = run_simulation(chosen, seed=seed)
    if as_json or structured(output):
        print_data(report, output if structured(output) else Output.JSON)
        return
    _print_simulation(report)


def _print_simulation(report: dict[str, Any]) -> None:
    jobs, ms = report["jobs"], report["decision_ms"]
    cli.out.print(
        f"[bold]{report['nodes']} nodes, {report['simulated_seconds']:g} s simulated, "
        f"{report['cycles']} planning passes, seed {report['seed']}[/]"
    )
    cli.out.print(
        f"jobs: {jobs['submitted']} submitted, {jobs['started']} started, {jobs['finished']} finished, "
        f"{jobs['pending_at_end']} still waiting"
    )
    util = ", ".join(f"{k} {v:.0%}" for k, v in report["utilisation"].items())
    fairness = report["fairness_jain"]
    cli.out.print(
        f"utilisation: {util}; fairness (Jain, contended passes): {'-' if fairness is None else fairness}"
    )
    cli.out.print(_queue_table(report))
    d = report["decisions"]
    cli.out.print(
        f"decisions: {d['assignments']} starts, {d['preemptions']} preemptions, "
        f"{d['cycles_with_reservation']} passes with a reservation"
    )
    if ms["mean"] is not None:
        cli.out.print(
            f"decision time per pass (wall clock): mean {ms['mean']} ms, p50 {ms['p50']} ms, "
            f"p99 {ms['p99']} ms, max {ms['max']} ms"
        )


def _queue_table(report: dict[str, Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

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
    return table
