"""``trainyard up``: the whole stack on this machine (nats-server and the six services) until Ctrl-C."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from trainyard_client import cli
from trainyard_client.cli.base import EXIT_JOB_FAILED, EXIT_OK, fail

if TYPE_CHECKING:
    from trainyard_client.stack import EmbeddedStack


def _memory(value: str | None) -> int | None:
    if value is None:
        return None
    from trainyard_contracts.units import parse_memory_mb

    try:
        return int(parse_memory_mb(int(value) if re.fullmatch(r"\d+", value) else value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--executor-memory") from None


ProcessPerService = Annotated[
    bool,
    typer.Option(
        "--process-per-service",
        envvar="TRAINYARD_PROCESS_PER_SERVICE",
        help="run the registry, telemetry and workflow services as three processes (default: one"
        " process hosts the three, ~110 MB less when idle; each keeps its own NATS user and port)",
    ),
]


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
    mlflow_server: Annotated[
        bool,
        typer.Option(
            "--mlflow-server",
            envvar="TRAINYARD_MLFLOW_SERVER",
            help="serve MLflow with a real `mlflow server` (seconds to start) whose webhooks tell the"
            " registry of changes made in MLflow directly (default: a SQLite file, no webhooks)",
        ),
    ] = False,
    process_per_service: ProcessPerService = False,
) -> None:
    """Run the whole stack on this machine (nats-server and the six services) until Ctrl-C.

    A service (or nats-server) that exits is restarted after 1, 2, 4, 8 s; one that exits again
    after --max-restarts restarts within 60 s stops the stack."""
    from rich.markup import escape

    from trainyard_client import stack as stack_module
    from trainyard_client.stackprocess import INSTALL_HINT
    from trainyard_client.supervision import RestartPolicy

    missing = stack_module.missing_packages()
    if missing:
        needs = ", ".join(missing)
        fail(f"[bold red]`trainyard up` needs {needs}[/]: {escape(INSTALL_HINT)}", 1)
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
        mlflow_server=mlflow_server,
        cohost=not process_per_service,
    )
    raise typer.Exit(_run_until_stopped(stack, max_restarts))


def _run_until_stopped(stack: EmbeddedStack, max_restarts: int) -> int:
    """Start the stack, watch it until Ctrl-C / SIGINT / SIGTERM or a death, stop it; the exit code."""
    from rich.markup import escape

    from trainyard_client import stack as stack_module

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGINT explicitly too: started in the background by a non-interactive shell, SIGINT comes
    # ignored, Python then installs no KeyboardInterrupt, and Ctrl-C / `kill -INT` did nothing
    previous_int = signal.signal(signal.SIGINT, on_term)
    previous = signal.signal(signal.SIGTERM, on_term)
    code = EXIT_OK
    started = False
    try:
        with cli.out.status(f"starting nats-server and the services (data in {stack.data_dir})"):
            stack.start()
        started = True
        _print_up(stack)
        while True:
            stack.raise_if_failed()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except stack_module.ServiceDied as exc:
        _say_died(exc, max_restarts)
        code = EXIT_JOB_FAILED
    except stack_module.StackError as exc:
        cli.err.print(f"[bold red]{escape(str(exc))}[/]", soft_wrap=True)
        code = EXIT_JOB_FAILED
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            with cli.out.status("stopping the services and nats-server"):
                stack.stop()
            _say_what_was_killed(stack)
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous)
    if started:
        cli.out.print("Trainyard stopped" + ("" if code == EXIT_OK else " (a service failed)"))
    elif code != EXIT_OK:
        cli.err.print("Trainyard did not start")
    return code


def _say_died(exc: Any, max_restarts: int) -> None:
    from rich.markup import escape

    for service in exc.dead:
        returncode = service.process.returncode if service.process else "?"
        cli.err.print(
            f"[bold red]the {service.name} service exited (code {returncode})[/];"
            f" last lines of {escape(str(service.log_path))}:",
            soft_wrap=True,
        )
        cli.err.print(escape(exc.tails.get(service.name, "")), soft_wrap=True)
    if max_restarts:
        cli.err.print(
            f"[bold red]it exited again after {max_restarts} restart(s) within 60s: stopping[/]",
            soft_wrap=True,
        )


def _say_restart(restart: Any, tail: str) -> None:
    """Told by the stack's supervisor (a thread) of each exit it answers with a restart."""
    from rich.markup import escape

    if restart.given_up:
        return  # `up` says so when it stops
    code = "?" if restart.exit_code is None else restart.exit_code
    cli.err.print(
        f"[bold yellow]the {restart.service} service exited (code {code})[/]; restarting it in"
        f" {restart.delay_seconds:g}s (restart {restart.number} of {restart.limit} within 60s);"
        " last lines of its log:",
        soft_wrap=True,
    )
    cli.err.print(escape(tail), soft_wrap=True)


def _say_what_was_killed(stack: Any) -> None:
    for name in stack.killed_services:
        cli.err.print(
            f"[bold yellow]the {name} service did not stop within {stack.stop_timeout:g}s: killed it[/]",
            soft_wrap=True,
        )
    if stack.leftovers:
        cli.err.print(
            f"[bold yellow]killed {len(stack.leftovers)} process(es) still running after the services"
            " stopped:[/]",
            soft_wrap=True,
        )
        for leftover in stack.leftovers:
            cli.err.print(f"  {leftover.pid} {leftover.command[:200]}", soft_wrap=True, markup=False)


def _print_up(stack: Any) -> None:
    from rich.table import Table

    from trainyard_client.connection import default_url

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("API", stack.api_url)
    grid.add_row("token file", str(stack.token_file))
    grid.add_row("NATS", f"{stack.nats_url}  (monitor {stack.nats_monitor_url}, prefix {stack.prefix})")
    grid.add_row("NATS users", f"{stack.nats_auth_dir}  (<user>.password; another system: client)")
    for name, url in stack.metrics_urls.items():
        grid.add_row(f"{name} metrics", url)
    webhooks = "  (mlflow server; its webhooks to the registry)" if stack.mlflow is not None else ""
    grid.add_row("MLflow", stack.mlflow_tracking_uri + webhooks)
    grid.add_row("logs", str(stack.log_dir))
    cli.out.print("[bold green]Trainyard is up[/]")
    cli.out.print(grid)
    hints = []
    if stack.api_url != default_url():
        hints.append(f"export TRAINYARD_URL={stack.api_url}")
    if stack.token_file.resolve() != Path(".trainyard/api-token").resolve():
        hints.append(f"export TRAINYARD_DATA_DIR={stack.data_dir}")
    if hints:
        cli.out.print("[dim]in another shell: " + "; ".join(hints) + "[/]", soft_wrap=True)
    cli.out.print("[dim]Ctrl-C stops everything; jobs and models stay in the data dir.[/]")
