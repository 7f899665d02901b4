"""A total deadline for one HTTP call: connect, headers and the whole body.

``requests``' read timeout applies to each read, so an answer dripping one byte a second
never times out. Here every connection a call uses arms a timer when the request is
sent; at the deadline it shuts the socket down, which ends any read blocked on it.
Imported only by the HTTP client (it loads ``requests`` and ``urllib3``).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_local = threading.local()


def _arm(conn: HTTPConnection) -> None:
    deadline = getattr(_local, "deadline", None)
    sock = getattr(conn, "sock", None)
    if deadline is None or sock is None:
        return

    def cut() -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), cut)
    timer.daemon = True
    timer.start()
    _local.timers.append(timer)


class _Conn(HTTPConnection):
    # A pass-through override: urllib3's own (long, version-dependent) signature.
    def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[explicit-any]
        if self.sock is None:
            self.connect()
        _arm(self)
        return super().request(*args, **kwargs)


class _SConn(HTTPSConnection):
    # A pass-through override: urllib3's own (long, version-dependent) signature.
    def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[explicit-any]
        if self.sock is None:
            self.connect()
        _arm(self)
        return super().request(*args, **kwargs)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Conn


class _SPool(HTTPSConnectionPool):
    ConnectionCls = _SConn


class DeadlineAdapter(HTTPAdapter):
    """Mount on a session; wrap each call in :func:`deadline`."""

    # A pass-through override: requests' own signature.
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[explicit-any]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _SPool}


class deadline:  # noqa: N801 - used like a function
    """``with deadline(seconds): session.request(...)`` ends the call by then."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def __enter__(self) -> deadline:
        _local.deadline = self.at
        _local.timers = []
        return self

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def __exit__(self, *exc: object) -> None:
        for timer in getattr(_local, "timers", []):
            timer.cancel()
        _local.deadline = None
        _local.timers = []
