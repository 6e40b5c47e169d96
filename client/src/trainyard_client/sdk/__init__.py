"""The Python SDK: a small synchronous client for the submission service's HTTP API.

    from trainyard_client import TrainyardClient

    with TrainyardClient() as client:                    # TRAINYARD_URL / TRAINYARD_TOKEN
        result = client.submit(open("job.yaml").read())
        record = client.wait(result.job_id, timeout=600)
        print(record.state, record.model)

Connection settings, first match wins: the constructor's arguments; ``TRAINYARD_URL`` (default
``http://127.0.0.1:8700``) and ``TRAINYARD_TOKEN``; else the token file that the submission
service writes on first start, ``<TRAINYARD_DATA_DIR or ./.trainyard>/api-token``.

The calls live in one module per area (``jobs``, ``workflows``, ``models``, ``admin``) over one
connection (``http``); :class:`TrainyardClient` is all of them.
"""

from __future__ import annotations

from trainyard_client.connection import (
    DEFAULT_URL as DEFAULT_URL,
)
from trainyard_client.connection import (
    TOKEN_FILE as TOKEN_FILE,
)
from trainyard_client.connection import (
    TrainyardError as TrainyardError,
)
from trainyard_client.connection import (
    TrainyardUnavailable as TrainyardUnavailable,
)
from trainyard_client.connection import (
    default_token as default_token,
)
from trainyard_client.connection import (
    default_url as default_url,
)
from trainyard_client.connection import (
    token_file as token_file,
)
from trainyard_client.sdk.admin import AdminCalls, QueueEntry, TokenInfo
from trainyard_client.sdk.http import parse_sse
from trainyard_client.sdk.jobs import JobCalls, JobSummary, LogEvent, SubmitResult
from trainyard_client.sdk.models import ModelCalls
from trainyard_client.sdk.workflows import WorkflowCalls

__all__ = [
    "DEFAULT_URL",
    "TOKEN_FILE",
    "JobSummary",
    "LogEvent",
    "QueueEntry",
    "SubmitResult",
    "TokenInfo",
    "TrainyardClient",
    "TrainyardError",
    "TrainyardUnavailable",
    "default_token",
    "default_url",
    "parse_sse",
    "token_file",
]


class TrainyardClient(JobCalls, WorkflowCalls, ModelCalls, AdminCalls):
    """A synchronous client of the submission service's HTTP API (``/v1``)."""
