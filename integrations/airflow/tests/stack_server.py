"""Run with the Trainyard workspace's python (not the Airflow venv: the services' FastAPI pin is
not Airflow's): an embedded stack on free ports, its URL and API token printed as one JSON line;
it stops when its stdin closes (the test is done, or died) or on SIGTERM, and restarts a service
that exits (as `trainyard up` does).

    .venv/bin/python integrations/airflow/tests/stack_server.py DATA_DIR
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from trainyard_client.stack import EmbeddedStack
from trainyard_client.supervision import RestartPolicy


def main() -> None:
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # as `trainyard up` runs it: a service that exits is restarted (a test kills the API's)
    stack = EmbeddedStack(Path(sys.argv[1]), api_port=None, nats_port=None, restart_policy=RestartPolicy())
    with stack:
        api = stack.services["submission"].process
        assert api is not None
        print(json.dumps({"url": stack.api_url, "token": stack.token(), "api_pid": api.pid}), flush=True)
        try:
            sys.stdin.read()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
