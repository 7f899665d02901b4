"""Names for what really is untyped: JSON as read from a file or a provider, before validation.

mypy runs with ``disallow_any_explicit`` on model, core and providers (pyproject.toml), so
an explicit ``Any`` may appear only here, once, with its reason. Everywhere else a JSON
record is a ``JSONObject`` and a value not yet checked is a ``JSONValue``: the name says
that the shape is not known to the type checker and must be checked at run time (as
``validate``, ``providers.common`` and the parsers do) before it is trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A JSON object: a session or journal record, a provider's answer, a benchmark result.
# Its values are whatever the file or the provider sent; readers check each before use.
JSONObject = dict[str, Any]  # type: ignore[explicit-any]  # JSON is untyped by nature

# The same, read-only (a record handed to a function that only looks).
JSONMapping = Mapping[str, Any]  # type: ignore[explicit-any]  # JSON is untyped by nature

# One value out of JSON (or a user's input) not yet validated: str, number, bool, None,
# list or object. The validators take it and answer what is wrong with it.
JSONValue = Any  # type: ignore[explicit-any]  # JSON is untyped by nature
