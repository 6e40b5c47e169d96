from __future__ import annotations

from trainyard_shared.runner import run_service
from trainyard_telemetry.app import create_app
from trainyard_telemetry.settings import TelemetrySettings


def main() -> None:
    run_service("telemetry", create_app, TelemetrySettings)


if __name__ == "__main__":
    main()
