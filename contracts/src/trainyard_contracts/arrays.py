"""Job-array syntax, as Slurm's ``--array``: ``0-99%8``, ``0-31:4``, ``1,3,5-7%2``, ``5``.

A list of ranges (``first-last`` with an optional ``:step``) or single indices, separated by
commas, then an optional ``%N``: at most N of the array's jobs run at once. Indices are whole
numbers from 0 to ``MAX_ARRAY_INDEX``; an array holds at most ``MAX_ARRAY_SIZE`` jobs.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

MAX_ARRAY_SIZE = 10_000
MAX_ARRAY_INDEX = 1_000_000
MAX_ARRAY_TEXT = 1024
_PART = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


class ArraySyntaxError(ValueError):
    """An ``array:`` value that is not Slurm's syntax; the message says what was expected."""


@dataclass(frozen=True)
class ArrayIndices:
    """The indices of an array, ascending and without repeats, and how many may run at once
    (``max_running`` None: no limit)."""

    indices: tuple[int, ...]
    max_running: int | None = None

    @property
    def count(self) -> int:
        return len(self.indices)


# decided again on every step of a run and for each of its jobs: parse each text once
@functools.lru_cache(maxsize=256)
def parse_array(text: str) -> ArrayIndices:
    """``"0-99%8"`` to indices 0..99 with at most 8 running; ArraySyntaxError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ArraySyntaxError('expected Slurm array syntax such as "0-99%8", "0-31:4" or "1,3,5-7"')
    if len(text) > MAX_ARRAY_TEXT:
        raise ArraySyntaxError(f"is longer than {MAX_ARRAY_TEXT} characters")
    ranges, percent, limit_text = text.replace(" ", "").partition("%")
    max_running = _max_running(limit_text) if percent else None
    indices: set[int] = set()
    for part in ranges.split(","):
        _add_part(indices, part)
        if len(indices) > MAX_ARRAY_SIZE:
            raise ArraySyntaxError(f"names more than {MAX_ARRAY_SIZE} indices")
    return ArrayIndices(tuple(sorted(indices)), max_running)


def _max_running(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ArraySyntaxError(f"the limit after % must be a whole number of at least 1 (got {text!r})")
    return int(text)


def _add_part(indices: set[int], part: str) -> None:
    match = _PART.match(part)
    if match is None:
        raise ArraySyntaxError(
            f'{part!r} is not an index or a range: expected N, FIRST-LAST or FIRST-LAST:STEP (as in "0-99%8")'
        )
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    step = int(match.group(3)) if match.group(3) is not None else 1
    if last > MAX_ARRAY_INDEX:
        raise ArraySyntaxError(f"index {last} is above the largest allowed, {MAX_ARRAY_INDEX}")
    if last < first:
        raise ArraySyntaxError(f"range {part!r} ends before it starts")
    if step < 1:
        raise ArraySyntaxError(f"the step in {part!r} must be at least 1")
    if (last - first) // step + 1 > MAX_ARRAY_SIZE:
        raise ArraySyntaxError(f"names more than {MAX_ARRAY_SIZE} indices")
    indices.update(range(first, last + 1, step))
