"""One HTTP/1.1 GET over a plain socket, for the CLI's read paths (``status``) on ``http://`` URLs.

Why not urllib: ``urllib.request`` (and ``http.client`` under it) imports the ``email`` package and
``ssl``, which compile some fifty regular expressions; on this project's 2-core machine that was a
third of ``trainyard status -o json``'s start-up budget (docs/performance.md "CLI start-up").
A GET with ``Connection: close`` needs none of it: the status line, two headers (the body's length
or chunked encoding) and the body. Anything else (https, a proxy in the environment, credentials in
the URL, a redirect) goes through urllib as before (``connection.get_json``).
"""

from __future__ import annotations

import os
import socket
from typing import NamedTuple
from urllib.parse import SplitResult

MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a listing of 10 000 jobs is ~10 MB
PROXY_VARIABLES = ("http_proxy", "all_proxy")


class Answer(NamedTuple):
    status: int
    reason: str
    body: bytes


class MalformedAnswer(OSError):
    """The server's answer was not HTTP/1.x as expected (cut short, bad framing, too large)."""


def usable(target: SplitResult) -> bool:
    """Whether a plain socket reaches ``target`` exactly as urllib would (no TLS, no proxy, no
    credentials in the URL)."""
    proxied = any(os.environ.get(name) or os.environ.get(name.upper()) for name in PROXY_VARIABLES)
    return target.scheme == "http" and bool(target.hostname) and "@" not in target.netloc and not proxied


def get(target: SplitResult, headers: dict[str, str], timeout: float) -> Answer:
    """``GET target`` with ``headers``; the whole answer (raises OSError when it cannot be had)."""
    path = target.path or "/"
    lines = [f"GET {path}{'?' + target.query if target.query else ''} HTTP/1.1", f"Host: {target.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += ["Connection: close", "", ""]
    host = target.hostname or ""
    # an ASCII name as bytes (getaddrinfo takes both): as str it would load the IDNA codec for it
    address = (host.encode("ascii") if host.isascii() else host, target.port or 80)
    with socket.create_connection(address, timeout=timeout) as conn:  # type: ignore[arg-type]
        conn.sendall("\r\n".join(lines).encode("latin-1"))
        data = _read_all(conn)
    return parse(data)


def _read_all(conn: socket.socket) -> bytes:
    """Until the answer is whole (its length, or the last chunk) or the server closes: a server
    that keeps the connection open despite ``Connection: close`` costs no timeout."""
    data = bytearray()
    while chunk := conn.recv(65536):
        data += chunk
        if len(data) > MAX_ANSWER_BYTES:
            raise MalformedAnswer(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        if _whole(data):
            break
    return bytes(data)


def _whole(data: bytearray) -> bool:
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    fields = _fields(bytes(data[:head_end]))
    if "chunked" in fields.get("transfer-encoding", "").lower():
        if not data.endswith(b"0\r\n\r\n"):  # cheap: the last chunk (no trailers) may be there
            return False
        try:
            dechunk(bytes(data[head_end + 4 :]))
        except MalformedAnswer:  # those bytes were inside a chunk
            return False
        return True
    length = fields.get("content-length", "")
    return length.isdigit() and len(data) - head_end - 4 >= int(length)


def _fields(head: bytes) -> dict[str, str]:
    """The header fields of an answer's head (after its status line), names in lower case."""
    fields = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return fields


def parse(data: bytes) -> Answer:
    """A whole HTTP/1.x answer: status, reason and the (de-chunked) body."""
    head, separator, rest = data.partition(b"\r\n\r\n")
    status_line = head.decode("latin-1").split("\r\n")[0]
    version, _, status_reason = status_line.partition(" ")
    code, _, reason = status_reason.partition(" ")
    if not separator or not version.startswith("HTTP/1.") or not code.isdigit():
        raise MalformedAnswer(f"not an HTTP answer: {status_line[:80]!r}")
    fields = _fields(head)
    if "chunked" in fields.get("transfer-encoding", "").lower():
        return Answer(int(code), reason, dechunk(rest))
    length = fields.get("content-length")
    if length is not None:
        if not length.isdigit() or len(rest) < int(length):
            raise MalformedAnswer(f"answer cut short: {len(rest)} of {length} bytes")
        rest = rest[: int(length)]
    return Answer(int(code), reason, rest)


def dechunk(data: bytes) -> bytes:
    """The body of a ``Transfer-Encoding: chunked`` answer (RFC 9112 §7.1; trailers ignored)."""
    body, at = bytearray(), 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            raise MalformedAnswer("answer cut short in a chunk header")
        size_text = data[at:line_end].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise MalformedAnswer(f"bad chunk size {size_text[:20]!r}") from None
        if size < 0:
            raise MalformedAnswer(f"bad chunk size {size_text[:20]!r}")
        if size == 0:
            return bytes(body)
        start = line_end + 2
        if len(data) < start + size + 2:
            raise MalformedAnswer("answer cut short in a chunk")
        body += data[start : start + size]
        at = start + size + 2
