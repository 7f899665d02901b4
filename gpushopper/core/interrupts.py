"""Signals and lost output while a command holds an instance: destroy first, talk later.

Inside :func:`destroy_on_signals`, the first SIGINT, SIGTERM or SIGHUP raises
:class:`SignalReceived` (a ``KeyboardInterrupt``, so every cleanup path that handles Ctrl-C
handles it); every later one is only noted, so a second Ctrl-C or a closing terminal can
never cut the destroy short. Code that must not be interrupted (a destroy and its
confirmation) runs inside :func:`deferred`: a signal that arrives there is raised once the
block is done. A SIGHUP or SIGINT that was already ignored when the command started (under
``nohup``, or a background job) stays ignored: the user asked for that.

A closed pipe on stdout or stderr (``gpu-shopper provision ... | head -3``) is the same
accident as a signal: :func:`output_lost` points both streams at ``/dev/null`` (as the
Python documentation advises after a ``BrokenPipeError``), so that no later message can
fail, and raises ``SignalReceived(SIGPIPE)``. The SIGPIPE *signal* itself stays ignored,
as Python sets it: sockets raise it too (a provider closing a keep-alive connection), and
that must never destroy anything.

Exit codes follow 128 + the signal number: 130 for Ctrl-C, 129 SIGHUP, 143 SIGTERM,
141 for a closed pipe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
KEEP_IGNORED = (signal.SIGINT, signal.SIGHUP)  # an inherited SIG_IGN here is the user's choice


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class SignalReceived(KeyboardInterrupt):
    """Raised (once) by the first handled signal or by a closed output pipe."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


class _Guard:
    """What the process has been told (a plain class: dataclasses costs start-up time)."""

    def __init__(self) -> None:
        self.first: int | None = None  # the signal that ends the command
        self.raised = False  # SignalReceived has been raised for it
        self.deferring = 0  # inside deferred(): note, do not raise


_guard = _Guard()
_count_lock = threading.Lock()


def reset() -> None:
    _guard.first, _guard.raised, _guard.deferring = None, False, 0


def last_signal() -> int | None:
    """The signal (or SIGPIPE for a closed pipe) that interrupted the current command."""
    return _guard.first


def _note(signum: int) -> None:
    if _guard.first is None:
        _guard.first = signum
    if _guard.raised or _guard.deferring:
        return  # cleanup is under way (or must finish first): never cut it short
    _guard.raised = True
    raise SignalReceived(_guard.first)


def _on_signal(signum: int, frame: object) -> None:
    _note(signum)


@contextlib.contextmanager
def destroy_on_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into one ``SignalReceived`` for the block's duration."""
    reset()
    previous = {}
    for sig in HANDLED:
        current = signal.getsignal(sig)
        if current is signal.SIG_IGN and sig in KEEP_IGNORED:
            continue
        previous[sig] = signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Signals that arrive inside are held until the block is done, then raised (once).

    Threads may defer at once (``benchmark run --parallel``: each entry's destroy): the
    count changes under a lock, so it never drifts. The signal handler only reads it."""
    with _count_lock:
        _guard.deferring += 1
    finished = leave = False
    try:
        yield
        finished = True
    finally:
        with _count_lock:
            _guard.deferring -= 1
            # Only a block that finished raises the held signal: one that fails passes its
            # own error on and leaves the signal pending (not spent, so never swallowed).
            held = _guard.first is not None and not _guard.raised
            if finished and held and not _guard.deferring:
                _guard.raised = leave = True
    if leave:
        raise SignalReceived(_guard.first or signal.SIGINT)


def deferring() -> bool:
    """A destroy is under way inside :func:`deferred` (in any thread): do not cut it short."""
    return _guard.deferring > 0


def silence_std_streams() -> None:
    """Point stdout and stderr at /dev/null so no later write (or exit flush) can fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                fd = stream.fileno()
            except (AttributeError, ValueError, OSError):
                continue  # not a real file (tests capture output in memory)
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def output_lost(exc: OSError | None = None) -> None:
    """A write to stdout or stderr failed. A closed pipe (EPIPE) is handled as SIGPIPE:
    ``SignalReceived(SIGPIPE)`` unless a signal is already being handled. Either way the
    streams go to /dev/null first, so the cleanup that follows can say nothing, safely."""
    import errno

    silence_std_streams()
    if exc is None or isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
        _note(signal.SIGPIPE)
