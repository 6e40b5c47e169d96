"""The ``trainyard`` command line. A new command group goes in its own module here (one ``typer.Typer``
of small commands, heavy imports inside them) and is added to the app in ``app.py``.

Exit codes: 0 success; 1 the job ended failed / timed_out / cancelled / rejected (or the stack
stopped because a service died); 2 invalid spec or usage; 3 cannot reach the server; 4 the server
refused the request (401, 404, 409, 5xx ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

POLL_SECONDS = 0.5
MODEL_WAIT_SECONDS = 60.0

if TYPE_CHECKING:
    from rich.console import Console

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
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from trainyard_client.cli.app import app, main  # noqa: E402
from trainyard_client.cli.formatting import age  # noqa: E402
from trainyard_client.cli.jobs import _is_local_path, resolve_source  # noqa: E402

__all__ = ["MODEL_WAIT_SECONDS", "POLL_SECONDS", "_is_local_path", "age", "app", "main", "resolve_source"]
