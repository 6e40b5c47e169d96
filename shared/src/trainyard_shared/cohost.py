"""Several services in one process (the embedded stack's co-hosting; docs/performance.md, "Idle
footprint"):

    python -m trainyard_shared.cohost registry telemetry workflow

Each named service runs as its own ``python -m trainyard_<service>`` would (its ``__main__``'s
``ENTRY``: settings, NATS user from ``TRAINYARD_<SERVICE>_NATS_USER``/``_PASSWORD``, app, port),
in one interpreter and event loop (trainyard_shared.runner.run_services). Exit 2: a name that is
no service of this set.
"""

from __future__ import annotations

# first: nats-py without the aiohttp it needs only for WebSocket servers (docs/performance.md)
import trainyard_shared.sparenats  # noqa: F401

# isort: split
import importlib
import sys
from collections.abc import Sequence

from trainyard_shared.runner import ServiceEntry, run_services

COHOSTABLE = ("registry", "telemetry", "workflow")
"""Services that may share a process: none of them holds the admission key or starts a job (the
submission service and the scheduler hold the key, the executor starts hostile jobs)."""


def entries(names: Sequence[str]) -> list[ServiceEntry]:
    """The entries of ``names``; SystemExit 2 for a name that is no co-hostable service, or twice."""
    unknown = [name for name in names if name not in COHOSTABLE]
    if unknown or not names or len(set(names)) != len(names):
        print(
            f"usage: python -m trainyard_shared.cohost SERVICE... (each once, of {', '.join(COHOSTABLE)}); "
            f"got {list(names)}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    found = [importlib.import_module(f"trainyard_{name}.__main__").ENTRY for name in names]
    return [entry for entry in found if isinstance(entry, ServiceEntry)]


def main(argv: Sequence[str] | None = None) -> None:
    run_services(entries(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
