"""The on-instance deadline (dead man's switch): filled in by the lifecycle work."""

from __future__ import annotations

from typing import Any


def deadline_script_for(app: Any, provider: Any, record: dict[str, Any]) -> str | None:
    return None


def push_deadline(app: Any, record: dict[str, Any], log: Any = None) -> None:
    """Move the on-instance deadline after ``extend`` (filled in by the lifecycle work)."""
    return None
