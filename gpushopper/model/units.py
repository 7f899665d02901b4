"""Durations and times: the small parsers every command shares (GPU names live in
model/gpus.py)."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
UNIT_HINT = "give a unit: 30s, 15m, 2h"
MAX_DURATION_S = 365 * 86400.0  # past this a "duration" is a typo (1e9 hours), not a plan


def parse_duration(
    text: str | int | float, *, bare_unit: str | None = None, allow_zero: bool = False
) -> float:
    """Parse ``90s``, ``45m``, ``2h``, ``1h30m`` into seconds.

    A bare number is taken only where the unit is the setting's own name (``--hours 3``:
    pass ``bare_unit="h"``); anywhere else it is refused, because ``--interval 30`` once
    meant 30 hours. nan, inf, negative values, zero (unless ``allow_zero``) and anything
    past a year are refused. Raises ValueError with a one-line message.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration ({UNIT_HINT})")
    raw = str(text).strip()
    if not raw:
        raise ValueError(f"empty duration ({UNIT_HINT})")
    try:
        number = float(raw)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            raise ValueError(f"{raw!r} is not a duration ({UNIT_HINT})")
        if bare_unit is None:
            raise ValueError(f"{raw!r} has no unit; {UNIT_HINT}")
        total = number * _UNIT_SECONDS[bare_unit]
    else:
        pos = 0
        total = 0.0
        compact = raw.replace(" ", "")
        for match in _DURATION_RE.finditer(compact):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
            pos = match.end()
        if pos != len(compact) or pos == 0:
            raise ValueError(f"{raw!r} is not a duration ({UNIT_HINT})")
    if total < 0:
        raise ValueError(f"{raw!r} is negative; a duration must be longer than zero")
    if total == 0 and not allow_zero:
        raise ValueError(f"{raw!r} is zero; a duration must be longer than zero")
    if total > MAX_DURATION_S:
        raise ValueError(f"{raw!r} is longer than a year; {UNIT_HINT}")
    return total


def format_duration(seconds: float) -> str:
    """Seconds as ``1h30m``, ``45m``, ``90s`` style text."""
    seconds = int(round(max(seconds, 0)))
    if seconds < 60:
        return f"{seconds}s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if secs and not hours:
        out += f"{secs}s"
    return out or "0s"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z`` suffix, or None."""
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def add_seconds(dt: datetime, seconds: float) -> datetime:
    return dt + timedelta(seconds=seconds)
