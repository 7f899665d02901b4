"""One place that knows every secret, so no message, log line or JSON leaks one."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret so that :func:`redact` hides it everywhere."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def mask(value: str | None) -> str:
    """Show a secret as ``****abcd`` (last four characters only)."""
    if not value:
        return ""
    return "****" + value[-4:] if len(value) > 8 else "****"


def redact(text: str) -> str:
    """Replace every registered secret in ``text`` with its mask."""
    if not text:
        return text
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, mask(secret))
    return text
