"""A loopback HTTP server that answers from a script, for the HTTP layer's own tests."""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedServer:
    """Answers each request with the next scripted ``(status, body, headers)``;
    when the script runs out, answers 200 ``{"ok": true}``. Records every request."""

    def __init__(self) -> None:
        self.script: deque[tuple[int, Any, dict[str, str]]] = deque()
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body.decode() if body else None,
                    }
                )
                status, payload, headers = (
                    outer.script.popleft() if outer.script else (200, {"ok": True}, {})
                )
                data = (
                    payload
                    if isinstance(payload, bytes)
                    else (
                        payload.encode()
                        if isinstance(payload, str)
                        else json.dumps(payload).encode()
                    )
                )
                self.send_response(status)
                ctype = "text/plain" if isinstance(payload, (str, bytes)) else "application/json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=lambda: self.server.serve_forever(poll_interval=0.02), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.script.append((status, {} if body is None else body, headers or {}))

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
