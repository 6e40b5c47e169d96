"""The ``trainyard`` command line. A new command group goes in its own module here (one ``typer.Typer``
of small commands, heavy imports inside them) and is named in ``COMMANDS`` in ``app.py``.

Exit codes (the same for every command; README "Exit codes"):
  0    success
  1    the job (or any job `wait` waited for) ended failed, timed_out, cancelled or rejected;
       `wait --timeout` passed first; `up`: the stack stopped because a service died
  2    invalid spec or usage (which field, what was expected)
  3    cannot reach the server
  4    not found, forbidden or already ended: any refusal of the server (401, 403, 404, 409,
       5xx), a job, model or attempt that does not exist
  130  interrupted (Ctrl-C while following; the job keeps going)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

POLL_SECONDS = 0.5
MODEL_WAIT_SECONDS = 60.0

if TYPE_CHECKING:
    from rich.console import Console

    from trainyard_client.cli.formatting import age
    from trainyard_client.cli.jobs import _is_local_path, resolve_source

    out: Console
    err: Console


def __getattr__(name: str) -> Any:
    # The consoles live here, made on first use, so that `--help` never pays for rich's console and
    # one swap (the tests' wide consoles) reaches every command module.
    if name in ("out", "err"):
        from rich.console import Console

        console = Console(highlight=False, stderr=name == "err")
        globals()[name] = console
        return console
    if name in LATER:  # loaded when asked for: a command module is imported only when it runs
        import importlib

        return getattr(importlib.import_module(LATER[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


LATER = {
    "age": "trainyard_client.cli.formatting",
    "_is_local_path": "trainyard_client.cli.jobs",
    "resolve_source": "trainyard_client.cli.jobs",
}

from trainyard_client.cli.app import app, main  # noqa: E402

__all__ = ["MODEL_WAIT_SECONDS", "POLL_SECONDS", "_is_local_path", "age", "app", "main", "resolve_source"]
