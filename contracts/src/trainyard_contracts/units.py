"""Human units in job specs: durations ("90s", "10m", "1h30m") and sizes ("512Mi", "2Gi", "1G")."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?|[kmgt]i?|B)?\s*$")
_SIZE_MB = {
    None: 1.0,  # a bare number is megabytes, as in Slurm's --mem
    "B": 1 / (1024 * 1024),
    "K": 1000 / (1024 * 1024),
    "Ki": 1 / 1024,
    "M": 1000 * 1000 / (1024 * 1024),
    "Mi": 1.0,
    "G": 1000**3 / (1024 * 1024),
    "Gi": 1024.0,
    "T": 1000**4 / (1024 * 1024),
    "Ti": 1024.0 * 1024,
}


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string such as "90s", "10m", "1h30m"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m or 2h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"expected a duration such as 30s, 10m or 2h, got {value!r}")
            seconds = sum(float(n) * _DURATION_FACTORS[u] for n, u in parts)
    else:
        raise ValueError("expected a duration such as 30s, 10m or 2h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_memory_mb(value: object) -> int:
    """Megabytes (MiB) from a number (MiB) or a string such as "512Mi", "2Gi", "1G"."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512Mi or 4Gi")
    if isinstance(value, int | float):
        mb = float(value)
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"expected a size such as 512Mi or 4Gi, got {value!r}")
        number, unit = match.groups()
        if unit and unit[0] in "kmgt":
            unit = unit[0].upper() + unit[1:]
        mb = float(number) * _SIZE_MB[unit]
    else:
        raise ValueError("expected a size such as 512Mi or 4Gi")
    if mb < 0:
        raise ValueError("a size cannot be negative")
    return max(1, round(mb)) if mb > 0 else 0
