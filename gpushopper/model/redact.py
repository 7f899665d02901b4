"""One place that knows every secret, so no message, log line or JSON leaks one.

A secret reaches text in more forms than its raw one: ``repr`` and JSON escape its
control characters, URLs percent-encode it, some libraries upper-case headers. Each
registered secret is matched in all of those forms, case-insensitively. Cut text only
after redacting it (:func:`clip`): a cut secret no longer matches any form.
"""

from __future__ import annotations

import re
import threading

from gpushopper.model.jsontypes import JSONValue

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
_masks: dict[str, str] = {}
_stale = False
CASELESS_MIN = 12


def _forms(secret: str) -> set[str]:
    """Every way ``secret`` (and its whitespace-stripped self) can appear in text."""
    import json
    from urllib.parse import quote, quote_plus

    out: set[str] = set()
    for value in {secret, secret.strip()}:
        if len(value) < 4:
            continue
        out.add(value)
        out.add(repr(value)[1:-1])
        out.add(json.dumps(value)[1:-1])
        out.add(json.dumps(value, ensure_ascii=False)[1:-1])
        out.add(quote(value, safe=""))
        out.add(quote_plus(value, safe=""))
        out.add(value.encode("unicode_escape").decode("ascii"))
    return {form for form in out if len(form) >= 4}


def register_secret(value: str | None) -> None:
    """Remember a secret so that :func:`redact` hides it everywhere, in every form."""
    global _pattern, _stale
    if not value or len(value.strip()) < 4:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        shown = mask(value.strip())
        for form in _forms(value):
            _masks.setdefault(form, shown)
            _masks.setdefault(form.lower(), shown)
        _stale = True  # compiled at the next redact: settings register several at once


def _current_pattern() -> re.Pattern[str] | None:
    """The one pattern over every form of every secret (call with ``_lock`` held)."""
    global _pattern, _stale
    if _stale:
        forms = sorted(_masks, key=len, reverse=True)
        # Any case for real keys; short values (tests, typos) match exactly, or every
        # "token" in every message would be masked.
        _pattern = re.compile(
            "|".join(
                f"(?i:{re.escape(f)})" if len(f) >= CASELESS_MIN else re.escape(f) for f in forms
            )
        )
        _stale = False
    return _pattern


def mask(value: str | None) -> str:
    """Show a secret as ``****abcd`` (last four characters only)."""
    if not value:
        return ""
    return "****" + value[-4:] if len(value) > 8 else "****"


def redact(text: str) -> str:
    """Replace every registered secret, in any of its forms, with its mask."""
    if not text:
        return text
    with _lock:
        pattern, masks = _current_pattern(), _masks
    if pattern is None:
        return text
    return pattern.sub(
        lambda m: masks.get(m.group(0)) or masks.get(m.group(0).lower(), "****"), text
    )


def redact_tree(value: JSONValue) -> JSONValue:
    """A copy of a JSON-able value with every string redacted (keys too).

    Redacting the values, not the serialized text, can never break the JSON syntax."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_tree(k): redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(v) for v in value]
    return value


def clip(text: str, limit: int) -> str:
    """Redact, then cut to ``limit`` characters (never the other way round)."""
    return redact(text)[:limit]
