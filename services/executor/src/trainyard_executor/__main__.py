from __future__ import annotations

from trainyard_executor.app import create_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.runner import run_service


def main() -> None:
    run_service("executor", create_app, ExecutorSettings)


if __name__ == "__main__":
    main()
