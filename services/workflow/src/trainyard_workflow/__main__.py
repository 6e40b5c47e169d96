from __future__ import annotations

from trainyard_shared.runner import run_service
from trainyard_workflow.app import create_app
from trainyard_workflow.settings import WorkflowSettings


def main() -> None:
    run_service("workflow", create_app, WorkflowSettings)


if __name__ == "__main__":
    main()
