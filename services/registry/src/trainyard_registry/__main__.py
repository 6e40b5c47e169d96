from __future__ import annotations

# first: nats-py without the aiohttp it needs only for WebSocket servers (docs/performance.md)
import trainyard_shared.sparenats  # noqa: F401

# isort: split
from trainyard_registry.app import create_app
from trainyard_registry.settings import RegistrySettings
from trainyard_shared.runner import ServiceEntry, run_service

ENTRY = ServiceEntry("registry", create_app, RegistrySettings)


def main() -> None:
    run_service(ENTRY)


if __name__ == "__main__":
    main()
