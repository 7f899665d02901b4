"""Helpers shared by provider adapters (pure functions, no I/O)."""

from __future__ import annotations

from typing import NamedTuple

from gpushopper.model.errors import MissingCredentials
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.lazyre import LazyPattern


class ApiCall(NamedTuple):  # a NamedTuple: a frozen dataclass costs ~0.7 ms at every import
    """One HTTP call an adapter makes: each adapter's ``API_CALLS`` lists every one.

    ``path`` is the full path with ``:id`` for each variable part; tests/test_api_coverage.py
    fails when the adapter sends a request not listed here, and docs/api-coverage.md is
    generated from these tables (scripts/gen-docs)."""

    method: str
    path: str
    purpose: str
    commands: tuple[str, ...]
    note: str = ""


COUNTRY_CODES = {
    "united states": "US",
    "usa": "US",
    "canada": "CA",
    "mexico": "MX",
    "brazil": "BR",
    "united kingdom": "GB",
    "uk": "GB",
    "ireland": "IE",
    "germany": "DE",
    "france": "FR",
    "netherlands": "NL",
    "belgium": "BE",
    "luxembourg": "LU",
    "spain": "ES",
    "portugal": "PT",
    "italy": "IT",
    "switzerland": "CH",
    "austria": "AT",
    "poland": "PL",
    "czechia": "CZ",
    "czech republic": "CZ",
    "sweden": "SE",
    "norway": "NO",
    "finland": "FI",
    "denmark": "DK",
    "estonia": "EE",
    "latvia": "LV",
    "lithuania": "LT",
    "romania": "RO",
    "bulgaria": "BG",
    "hungary": "HU",
    "slovakia": "SK",
    "slovenia": "SI",
    "croatia": "HR",
    "serbia": "RS",
    "greece": "GR",
    "turkey": "TR",
    "ukraine": "UA",
    "russia": "RU",
    "israel": "IL",
    "united arab emirates": "AE",
    "india": "IN",
    "singapore": "SG",
    "japan": "JP",
    "south korea": "KR",
    "korea": "KR",
    "taiwan": "TW",
    "hong kong": "HK",
    "china": "CN",
    "vietnam": "VN",
    "thailand": "TH",
    "malaysia": "MY",
    "indonesia": "ID",
    "philippines": "PH",
    "australia": "AU",
    "new zealand": "NZ",
    "south africa": "ZA",
    "argentina": "AR",
    "chile": "CL",
    "colombia": "CO",
    "iceland": "IS",
}


def country_code(text: str | None) -> str | None:
    """A 2-letter code from ``"California, US"``, ``"US"`` or ``"United States"``."""
    if not text:
        return None
    tail = str(text).split(",")[-1].strip()
    if len(tail) == 2 and tail.isalpha():
        return tail.upper()
    return COUNTRY_CODES.get(tail.lower()) or COUNTRY_CODES.get(str(text).strip().lower())


_INF = float("inf")


def num(value: JSONValue) -> float | None:
    """A float, or None for missing, null, empty, non-numeric or non-finite values."""
    kind = type(value)
    if kind is float:  # the common case first: parsing thousands of offers stays cheap
        return value if value == value and -_INF < value < _INF else None
    if kind is int:
        return float(value) if -(10**308) < value < 10**308 else None
    if value is None or kind is bool:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if out == out and -_INF < out < _INF else None  # NaN, inf -> None


def integer(value: JSONValue) -> int | None:
    out = num(value)
    return None if out is None else int(out)


def rows_of(data: JSONValue, key: str, provider: str, what: str) -> list[JSONObject]:
    """``data[key]`` as a list of objects; any other shape, a missing key included, is the
    provider's error: an answer without the list says nothing of what is there, and must
    not read as "none" (an offer or template gone, exit 2)."""
    from gpushopper.model.errors import ProviderError

    rows = data.get(key) if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ProviderError(
            provider, f"{what} answered with a wrong shape (expected a '{key}' list)"
        )
    return [row for row in rows if isinstance(row, dict)]


# An instance id goes into URL paths (show, destroy): one plain path segment, never one that
# requests would rewrite ("5/../6" is sent as "6") or cut ("ab#cd" is sent as "ab", whose
# 404 would read as "already gone").
_INSTANCE_ID = LazyPattern(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def checked_instance_id(value: JSONValue, provider: str, what: str) -> str:
    """``value`` as an instance id safe in a URL path; Unavailable when it is not one."""
    from gpushopper.model.errors import Unavailable

    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _INSTANCE_ID.fullmatch(value):
        raise Unavailable(provider, f"{what} is not an instance id: {repr(value)[:80]}")
    return value


def require(value: str | None, provider: str, hint: str) -> str:
    if not value:
        raise MissingCredentials(provider, hint)
    return value
