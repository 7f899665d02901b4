"""The world a core service runs in: the wall clock, monotonic time, sleep and a log line.

One small object instead of four callables threaded through every constructor. Tests
build one on a fake clock (every timeout then runs instantly); the CLI builds one from its
``App`` with :meth:`Runtime.of`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Protocol


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _quiet(message: str) -> None:
    """The default log: says nothing."""


class Clocked(Protocol):
    """What :meth:`Runtime.of` reads a runtime from (the CLI's ``App`` has it)."""

    def clock(self) -> datetime: ...

    def mono(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class Runtime:
    """``clock``: now, as an aware UTC datetime (deadlines, records). ``mono``: seconds
    that only move forward (timeouts, intervals). ``sleep``: waits on ``mono``'s clock.
    ``log``: one progress line for the person watching (never a JSON document)."""

    clock: Callable[[], datetime] = field(default=_utc_now)
    mono: Callable[[], float] = field(default=time.monotonic)
    sleep: Callable[[float], None] = field(default=time.sleep)
    log: Callable[[str], None] = field(default=_quiet)

    @classmethod
    def real(cls, log: Callable[[str], None] = _quiet) -> Runtime:
        """The real clocks, saying ``log``'s lines."""
        return cls(log=log)

    @classmethod
    def of(cls, host: Clocked, log: Callable[[str], None] = _quiet) -> Runtime:
        """The clocks of ``host`` (the CLI's ``App``, a test's fake), saying ``log``'s lines."""
        return cls(clock=host.clock, mono=host.mono, sleep=host.sleep, log=log)

    def saying(self, log: Callable[[str], None]) -> Runtime:
        """The same clocks, another log."""
        return replace(self, log=log)
