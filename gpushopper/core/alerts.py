"""Alerts: always a line on stderr; optionally a JSON POST to ``alerts.webhook_url``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from gpushopper.model.jsontypes import JSONObject

if TYPE_CHECKING:
    import requests

log = logging.getLogger("gpushopper.alerts")


class Alerter:
    def __init__(
        self, webhook_url: str | None, emit: Callable[[str], None], timeout: float = 5.0
    ) -> None:
        self.webhook_url = webhook_url
        self.emit = emit
        self.timeout = timeout
        self._session: requests.Session | None = None

    def send(self, line: str, event: JSONObject) -> None:
        self.emit(line)
        if not self.webhook_url:
            return
        try:
            import json

            from gpushopper.model.redact import redact
            from gpushopper.providers.http_deadline import DeadlineAdapter, deadline

            if self._session is None:
                import requests

                self._session = requests.Session()
                self._session.mount("http://", DeadlineAdapter())
                self._session.mount("https://", DeadlineAdapter())
            body = json.loads(redact(json.dumps(event, default=str)))
            with deadline(3 * self.timeout):  # a slow hook must not stall the daemon
                self._session.post(self.webhook_url, json=body, timeout=self.timeout)
        except Exception as exc:  # an alert channel failing must never stop the daemon
            self.emit(f"alert webhook failed: {type(exc).__name__}")
