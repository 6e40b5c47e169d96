"""The SDK's plumbing: one ``httpx`` client, errors as :class:`TrainyardError`, server-sent events."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, Self

import httpx

from trainyard_client.connection import (
    TrainyardUnavailable,
    default_token,
    default_url,
    no_token_hint,
    problem_error,
)
from trainyard_contracts import JobSpec


def spec_body(spec: str | bytes | Mapping[str, Any] | JobSpec) -> tuple[bytes, str]:
    """A spec as a request body and its content type (YAML text stays YAML)."""
    if isinstance(spec, JobSpec):
        return json.dumps(spec.model_dump(mode="json", exclude_defaults=True)).encode(), "application/json"
    if isinstance(spec, Mapping):
        return json.dumps(dict(spec)).encode(), "application/json"
    raw = spec.encode() if isinstance(spec, str) else bytes(spec)
    kind = "application/json" if raw.lstrip().startswith(b"{") else "application/yaml"
    return raw, kind


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from server-sent-event lines (comments and ids ignored)."""
    event, data = "", list[str]()
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data or event:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event or "message", "\n".join(data)


class HttpClient:
    """The connection every group of API calls shares (``/v1`` of the submission service)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or default_url()).rstrip("/")
        self.token = token if token is not None else default_token()
        self.timeout = timeout
        headers = {"Accept": "application/json", "User-Agent": "trainyard-client/0.1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> bool:
        """True when the API answers ``/healthz``."""
        try:
            return self._http.get("/healthz", timeout=min(self.timeout, 5)).is_success
        except httpx.TransportError:
            return False

    def _raise_for(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        error = problem_error(response.status_code, response.reason_phrase, response.text)
        raise no_token_hint(error, self.token)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TrainyardUnavailable(self.url, str(exc) or type(exc).__name__) from exc
        self._raise_for(response)
        return response

    def _follow(self, path: str, attempt: int | None) -> Iterator[tuple[str, str]]:
        """The server-sent events of a followed read (``follow=true``)."""
        params: dict[str, Any] = {"follow": "true"}
        if attempt is not None:
            params["attempt"] = attempt
        timeout = httpx.Timeout(self.timeout, read=None)
        headers = {"Accept": "text/event-stream"}
        try:
            with self._http.stream("GET", path, params=params, headers=headers, timeout=timeout) as response:
                if not response.is_success:
                    response.read()
                    self._raise_for(response)
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise TrainyardUnavailable(self.url, str(exc) or type(exc).__name__) from exc
