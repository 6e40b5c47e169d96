from __future__ import annotations

# first: nats-py without the aiohttp it needs only for WebSocket servers (docs/performance.md)
import trainyard_shared.sparenats  # noqa: F401

# isort: split
import uvicorn

from trainyard_shared.gctune import tune_gc
from trainyard_shared.logs import setup_logging
from trainyard_shared.settings import CommonSettings
from trainyard_submission.app import create_app
from trainyard_submission.settings import SubmissionSettings


def main() -> None:
    common = CommonSettings()
    settings = SubmissionSettings()
    setup_logging("submission", common.log_level, common.log_format)
    app = create_app(common, settings)
    tune_gc(common.gc_young_threshold)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        log_config=None,  # uvicorn's records through our JSON root handler, not its coloured one
    )


if __name__ == "__main__":
    main()
