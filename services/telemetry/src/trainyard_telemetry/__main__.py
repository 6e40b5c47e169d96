from __future__ import annotations

from trainyard_shared.logs import setup_logging
from trainyard_shared.runner import serve
from trainyard_shared.settings import CommonSettings
from trainyard_telemetry.app import create_app
from trainyard_telemetry.settings import TelemetrySettings


def main() -> None:
    common = CommonSettings()
    settings = TelemetrySettings()
    setup_logging("telemetry", common.log_level, common.log_format)
    serve(create_app(common, settings), settings)


if __name__ == "__main__":
    main()
