from __future__ import annotations

# first: nats-py without the aiohttp it needs only for WebSocket servers (docs/performance.md)
import trainyard_shared.sparenats  # noqa: F401

# isort: split
from trainyard_shared.runner import ServiceEntry, run_service
from trainyard_workflow.app import create_app
from trainyard_workflow.settings import WorkflowSettings

ENTRY = ServiceEntry("workflow", create_app, WorkflowSettings)


def main() -> None:
    run_service(ENTRY)


if __name__ == "__main__":
    main()
