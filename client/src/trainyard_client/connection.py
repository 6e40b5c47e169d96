"""Where the API is, the token, the SDK's errors, and a stdlib-only JSON GET.

Kept free of httpx and pydantic: the CLI's hot read paths (``status``) answer with this alone,
well inside their start-up budget; the full SDK (``sdk.py``) builds on the same pieces.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainyard_contracts import FieldError

DEFAULT_URL = "http://127.0.0.1:8700"
TOKEN_FILE = "api-token"
USER_AGENT = "trainyard-client/0.1"


def default_url() -> str:
    return os.environ.get("TRAINYARD_URL") or DEFAULT_URL


def token_file() -> Path:
    """Where the embedded stack's submission service keeps its generated API token."""
    return Path(os.environ.get("TRAINYARD_DATA_DIR") or ".trainyard").expanduser() / TOKEN_FILE


def default_token() -> str | None:
    token = os.environ.get("TRAINYARD_TOKEN")
    if token:
        return token
    try:
        return token_file().read_text().strip() or None
    except OSError:
        return None


class TrainyardError(Exception):
    """The API refused a request: an RFC 9457 problem (status, title, detail, field errors)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        errors: list[FieldError] | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = list(errors or [])
        text = f"{status} {title}" if status else title
        super().__init__(f"{text}: {detail}" if detail else text)


class TrainyardUnavailable(TrainyardError):
    """The server could not be reached (nothing listening, DNS, connection reset, read timeout)."""

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        super().__init__(0, f"cannot reach Trainyard at {url}", detail)


def problem_error(status: int, reason: str, text: str) -> TrainyardError:
    """The error for a refused request, from its RFC 9457 body (or the first 500 characters)."""
    title, detail, errors = reason or "error", "", []
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        title = str(body.get("title") or title)
        detail = str(body.get("detail") or "")
        items = [item for item in body.get("errors") or [] if isinstance(item, dict)]
        if items:
            from trainyard_contracts import FieldError

            errors = [
                FieldError(field=str(i.get("field", "?")), message=str(i.get("message", ""))) for i in items
            ]
    else:
        detail = text[:500].strip()
    return TrainyardError(status, title, detail, errors)


def no_token_hint(error: TrainyardError, token: str | None) -> TrainyardError:
    if error.status == 401 and not token:
        error.detail += (
            f" (no token: set TRAINYARD_TOKEN, pass --token, or point TRAINYARD_DATA_DIR at the"
            f" stack's data dir; looked for {token_file()})"
        )
    return error


def get_json(
    url: str, path: str, token: str | None, params: list[tuple[str, str]], timeout: float = 30
) -> Any:
    """``GET url+path?params`` as JSON with the SDK's headers and errors, using only the stdlib
    (a plain socket for http://, see ``plain_http``; urllib for the rest)."""
    from urllib.parse import urlencode, urlsplit

    from trainyard_client import plain_http

    query = urlencode(params)
    target = f"{url.rstrip('/')}{path}" + (f"?{query}" if query else "")
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    split = urlsplit(target)
    if plain_http.usable(split):
        try:
            answer = plain_http.get(split, headers, timeout)
        except OSError as exc:
            raise TrainyardUnavailable(url.rstrip("/"), str(exc) or type(exc).__name__) from exc
        if not 300 <= answer.status < 400:  # a redirect: urllib follows it
            if answer.status >= 400:
                body = answer.body.decode("utf-8", "replace")
                raise no_token_hint(problem_error(answer.status, answer.reason, body), token)
            return json.loads(answer.body)
    return _urllib_get_json(url, target, headers, token, timeout)


def _urllib_get_json(
    url: str, target: str, headers: dict[str, str], token: str | None, timeout: float
) -> Any:
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(target, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        raise no_token_hint(problem_error(exc.code, exc.reason, body), token) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TrainyardUnavailable(url.rstrip("/"), str(reason) or type(exc).__name__) from exc
