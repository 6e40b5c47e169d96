"""The sizes an attempt's log shipping keeps to: pure functions, no broker (see logship.py)."""

from __future__ import annotations

from dataclasses import dataclass

from trainyard_contracts import LogLine

LINE_OVERHEAD = 96
"""JSON bytes of a log line besides its text: ``{"stream":"stdout","text":"","time":"…"},``."""
HEADROOM = 4096
"""Room left under the server's max_payload for the headers (message id, trace context): the
server counts headers and body together."""
CHUNK_ENVELOPE = 256
"""JSON bytes of a chunk besides its lines (job id, attempt, seq)."""
LINE_CUT_MARKER = " [trainyard: line truncated]"


@dataclass(frozen=True)
class LogLimits:
    max_chunk_bytes: int = 256 * 1024
    """The largest chunk (its JSON), whatever the server would take; the server's max_payload less
    HEADROOM when that is smaller."""
    max_bytes: int = 64 * 1024 * 1024
    """An attempt's own output (stdout and stderr, UTF-8 bytes) stored at most."""
    max_buffered: int = 8 * 1024 * 1024
    """Output held in memory while the logs stream does not take chunks; past it, dropped."""


def chunk_limit(max_chunk_bytes: int, max_payload: int | None) -> int:
    """The largest chunk to publish: under the negotiated ``max_payload`` with room for headers."""
    limit = max_chunk_bytes if max_payload is None else min(max_chunk_bytes, max_payload - HEADROOM)
    return max(limit, 4 * LINE_OVERHEAD + CHUNK_ENVELOPE)


def text_bytes(text: str) -> int:
    """UTF-8 length, without encoding the (common) ASCII line."""
    return len(text) if text.isascii() else len(text.encode("utf-8", errors="replace"))


def pieces(text: str, max_bytes: int) -> list[str]:
    """``text`` in pieces of at most ``max_bytes`` UTF-8 bytes, never splitting a character."""
    if text.isascii():
        return [text[i : i + max_bytes] for i in range(0, len(text), max_bytes)] or [""]
    data = text.encode("utf-8", errors="replace")
    out: list[str] = []
    while len(data) > max_bytes:
        cut = max_bytes
        while cut > 0 and data[cut] & 0xC0 == 0x80:  # a continuation byte: not a character start
            cut -= 1
        cut = cut or max_bytes
        out.append(data[:cut].decode("utf-8", errors="replace"))
        data = data[cut:]
    out.append(data.decode("utf-8", errors="replace"))
    return out


def truncated_marker(max_bytes: int) -> str:
    return f"[trainyard: output truncated after {max_bytes} bytes]"


def cut_to_fit(line: LogLine, chunk_bytes: int) -> LogLine:
    """``line`` whose JSON alone (in a chunk) would not fit ``chunk_bytes`` (a text of control
    characters is six times longer as JSON), shortened with a marker until it does."""
    room = chunk_bytes - CHUNK_ENVELOPE
    text = line.text
    size = len(line.model_dump_json())
    while size > room and text:
        keep = max(0, int(len(text) * (room - LINE_OVERHEAD - len(LINE_CUT_MARKER)) / size) - 1)
        text = text[:keep]
        line = line.model_copy(update={"text": text + LINE_CUT_MARKER})
        size = len(line.model_dump_json())
    return line
