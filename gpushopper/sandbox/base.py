"""What the loopback emulators share: the SSH backend they hand instances to, and the HTTP
server they answer on (127.0.0.1, an ephemeral port, a daemon thread).

Each emulator keeps its own API (paths, envelopes, errors, faults: they imitate
shared/reference/*.md and differ there); this module holds only the plumbing that does not.
Stdlib only, like the rest of gpushopper/sandbox/.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Protocol, TypeVar

HOST = "127.0.0.1"
_E = TypeVar("_E", bound="LoopbackEmulator")


class SSHBackend(Protocol):
    """What an emulator calls to give an instance a reachable sshd (gpushopper/sandbox/sshd.py).

    ``instance_key`` names the instance across markets ("vastai:ID", "tensordock:ID")."""

    def start(
        self, instance_key: str, authorized_keys: list[str], gpu: dict[str, Any]
    ) -> tuple[str, int]: ...

    def set_keys(self, instance_key: str, authorized_keys: list[str]) -> None: ...

    def stop(self, instance_key: str) -> None: ...


def free_port() -> int:
    """A loopback port that nothing listens on now (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive clients must not make stop() hang
    allow_reuse_address = True
    emulator: LoopbackEmulator


class LoopbackHandler(BaseHTTPRequestHandler):
    """One connection to an emulator; each method goes to ``serve(method)``.

    The connection is known to the emulator while it is open, so ``stop()`` can close it: a
    stopped market answers nothing, not even on a kept-alive connection."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: LoopbackServer

    def setup(self) -> None:
        super().setup()
        self.server.emulator._track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.emulator._track(self.connection, open_=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        return

    def serve(self, method: str) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self.serve("GET")

    def do_POST(self) -> None:
        self.serve("POST")

    def do_PUT(self) -> None:
        self.serve("PUT")

    def do_DELETE(self) -> None:
        self.serve("DELETE")

    def do_PATCH(self) -> None:
        self.serve("PATCH")


class LoopbackEmulator:
    """Start, stop and address of an emulator's HTTP server; the emulator's state lock.

    A subclass names its ``handler`` and ``thread_name``, calls ``super().__init__()`` first,
    and releases its instances' resources in ``_release()`` (called by every ``stop()``)."""

    handler: ClassVar[type[LoopbackHandler]]
    thread_name: ClassVar[str]
    poll_interval: ClassVar[float] = 0.05

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()  # set by stop(): waits inside handlers end
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def start(self: _E) -> _E:
        if self._server is not None:
            return self
        self._stop_event.clear()
        server = LoopbackServer((HOST, 0), self.handler)
        server.emulator = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": self.poll_interval},
            daemon=True,
            name=f"{self.thread_name}:{server.server_address[1]}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._stop_event.set()
            server.shutdown()
            with self._conns_lock:
                conns = list(self._conns)
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self.lock:
            self._release()

    def _release(self) -> None:
        """Free what the instances hold (sshds, reserved ports); under ``self.lock``."""

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._conns_lock:
            if open_:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def __enter__(self: _E) -> _E:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT (no API prefix)."""
        return f"http://{HOST}:{self.port}"
