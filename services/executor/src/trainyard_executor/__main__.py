from __future__ import annotations

from trainyard_executor.app import create_app
from trainyard_executor.settings import ExecutorSettings
from trainyard_shared.logs import setup_logging
from trainyard_shared.runner import serve
from trainyard_shared.settings import CommonSettings


def main() -> None:
    common = CommonSettings()
    settings = ExecutorSettings()
    setup_logging("executor", common.log_level, common.log_format)
    serve(create_app(common, settings), settings)


if __name__ == "__main__":
    main()
