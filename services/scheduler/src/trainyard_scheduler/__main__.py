from __future__ import annotations

from trainyard_scheduler.app import create_app
from trainyard_scheduler.settings import SchedulerSettings
from trainyard_shared.runner import run_service


def main() -> None:
    run_service("scheduler", create_app, SchedulerSettings)


if __name__ == "__main__":
    main()
