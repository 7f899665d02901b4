"""A regular expression compiled on first use, not at import.

Every command imports the model, the registry and the renderer; a pattern compiled at
module level costs 50-200 us at every start even when the command never uses it (the
cached ``inventory --json`` is held to 1.5x a floor that only imports click).
"""

from __future__ import annotations

import re
from collections.abc import Callable


class LazyPattern:
    __slots__ = ("_flags", "_pattern", "_compiled")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self._pattern = pattern
        self._flags = flags
        self._compiled: re.Pattern[str] | None = None

    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = re.compile(self._pattern, self._flags)
        return self._compiled

    def fullmatch(self, text: str) -> re.Match[str] | None:
        return self.compiled().fullmatch(text)

    def search(self, text: str) -> re.Match[str] | None:
        return self.compiled().search(text)

    def findall(self, text: str) -> list[str]:
        return self.compiled().findall(text)

    def sub(self, repl: str | Callable[[re.Match[str]], str], text: str) -> str:
        return self.compiled().sub(repl, text)
