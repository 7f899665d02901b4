"""What every provider shares: the protocol, the registry, and one careful HTTP client.

The HTTP client gives each provider one ``requests`` session with connect and read
timeouts; retries idempotent calls (GET, DELETE, label updates) on 429/502/503/504 and
connection errors with backoff, honouring ``Retry-After`` up to a bound; never retries a
create; and turns error answers into typed errors carrying the provider's own message,
with every secret redacted.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple, Protocol

from gpushopper.model.errors import (
    AuthFailed,
    NotFound,
    ProviderError,
    RateLimited,
    Unavailable,
)
from gpushopper.model.jsontypes import JSONObject, JSONValue
from gpushopper.model.redact import clip, redact, register_secret

if TYPE_CHECKING:
    import logging

    import requests

    from gpushopper.model.models import Instance, LaunchSpec, Offer, OfferQuery, Template


class _LazyLog:
    """``logging`` costs ~9 ms to import; load it only when a call is logged."""

    @staticmethod
    def _logger() -> logging.Logger:
        import logging

        return logging.getLogger("gpushopper.http")

    def debug(self, msg: str, *args: object) -> None:
        self._logger().debug(msg, *args)

    def info(self, msg: str, *args: object) -> None:
        self._logger().info(msg, *args)


log = _LazyLog()

RETRY_STATUSES = frozenset({429, 502, 503, 504})


class HttpConfig(NamedTuple):  # a NamedTuple: a frozen dataclass costs ~0.4 ms at import
    """The HTTP knobs every provider client takes (``defaults.http_*``; built by the
    registry). ``timeout`` is the read timeout, ``retries`` the attempts an idempotent
    call gets, ``backoff`` the first retry's delay. Nothing secret: the key stays in the
    provider's own config, whose repr hides it."""

    timeout: float = 30.0
    retries: int = 4
    backoff: float = 0.5


class SettingsReader(Protocol):
    """Settings as dotted keys, already validated (``state.config.Settings``, or in a test
    a dict's ``get``-alike).

    Providers never import ``state``, and an adapter never reads a key: the registry builds
    each provider's typed config from a reader (``registry.provider_config``). Core's
    services read their own keys through it too."""

    # A setting's value as its key's type (state.config validated it): typed per key only
    # there, so a plain JSON value here.
    def get(self, key: str) -> JSONValue: ...


class Provider(Protocol):
    """What every provider adapter offers (see vastai.py and tensordock.py)."""

    NAME: str
    ssh_user: str

    @classmethod
    def from_settings(cls, settings: SettingsReader) -> Provider: ...

    def check(self) -> str: ...

    def search_offers(self, query: OfferQuery, limit: int | None = None) -> list[Offer]:
        """The ``limit`` best matches for ``query.sort`` (all when None), best first."""
        ...

    def get_offer(self, native_id: str, disk_gb: float) -> Offer | None: ...

    def list_templates(
        self, name: str | None = None, use_ssh: bool | None = None
    ) -> list[Template]: ...

    def get_template(self, ident: str) -> Template | None: ...

    def create_instance(self, spec: LaunchSpec) -> str: ...

    def attach_ssh_key(self, instance_id: str, public_key: str) -> None: ...

    def get_instance(self, instance_id: str) -> Instance | None: ...

    def list_instances(self) -> list[Instance]: ...

    def destroy_instance(self, instance_id: str) -> None: ...

    def instance_logs(self, instance_id: str, tail: int | None = None) -> str:
        """The instance's own log as text (a ProviderError where the API has none)."""
        ...


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_text(body: JSONValue) -> str | None:
    """The human message inside a provider error body, whatever its shape."""
    if isinstance(body, dict):
        for key in ("msg", "message", "detail", "error_description"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
        err = body.get("error")
        if isinstance(err, str) and err.strip():
            return err.strip()
        if isinstance(err, dict):
            return error_text(err)
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            return str(first.get("detail") or first.get("title") or first)
    if isinstance(body, str) and body.strip():
        text = body.strip()
        if text.startswith("<"):  # an HTML error page from a proxy: its title, not its markup
            title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
            text = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
            text = " ".join(text.split())
        return clip(text, 300) or None
    return None


class _Call(NamedTuple):
    """One request as ``HttpClient.request`` sends it, try after try."""

    method: str
    path: str  # as the adapter gave it (messages name it, redacted)
    url: str
    params: JSONObject | None
    json_body: JSONValue
    timeout: tuple[float, float]


class HttpClient:
    """One provider's HTTP session. ``sleep`` is injectable so retries test instantly."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        secrets: Iterable[str | None] = (),
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        classify: Callable[[int, JSONValue, str], ProviderError | None] | None = None,
        total_timeout: float | None = None,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.timeout = (connect_timeout, read_timeout)
        # Connect + headers + whole body, per attempt: a server dripping a byte a second
        # never trips the per-read timeout.
        self.total_timeout = total_timeout or 3 * read_timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.sleep = sleep
        self.classify = classify
        self._session: requests.Session | None = None
        for secret in secrets:
            register_secret(secret)

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            import requests

            from gpushopper.providers.http_deadline import DeadlineAdapter

            self._session = requests.Session()
            self._session.mount("http://", DeadlineAdapter())
            self._session.mount("https://", DeadlineAdapter())
            self._session.headers.update({"Accept": "application/json", **self.headers})
            self._session.headers.setdefault("User-Agent", _user_agent())
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.base_url + "/" + path.lstrip("/")

    def _backoff(self, attempt: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * (2**attempt))
        import random  # only on a retry: importing it costs every start ~0.7 ms

        return delay * (0.8 + 0.4 * random.random())

    def request(
        self,
        method: str,
        path: str,
        *,
        params: JSONObject | None = None,
        json_body: JSONValue = None,
        idempotent: bool | None = None,
        timeout: tuple[float, float] | None = None,
    ) -> JSONValue:
        """Send one call and return its decoded JSON (or None for an empty body).

        ``idempotent`` defaults to True for GET/HEAD/DELETE; pass False for creates,
        which are never retried, and True for safe PUTs such as label updates.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "DELETE")
        call = _Call(method, path, self.url(path), params, json_body, timeout or self.timeout)
        attempts = self.max_attempts if idempotent else 1
        last_error: ProviderError | None = None
        for attempt in range(attempts):
            body, last_error = self._attempt(call)
            if last_error is None:
                return body
            if attempt + 1 < attempts:
                self._wait_to_retry(last_error, attempt)
        assert last_error is not None
        raise last_error

    def _attempt(self, call: _Call) -> tuple[JSONValue, ProviderError | None]:
        """One try: (the body, None), or (None, the error worth another try). An answer
        that no retry can mend (too slow, malformed, an error not in RETRY_STATUSES, a
        Retry-After past the bound) is raised."""
        import requests

        from gpushopper.providers.http_deadline import deadline

        started = time.monotonic()
        limit = deadline(self.total_timeout)
        try:
            with limit:
                response = self.session.request(
                    call.method,
                    call.url,
                    params=call.params,
                    json=call.json_body,
                    timeout=call.timeout,
                )
        except requests.RequestException as exc:
            if limit.expired():
                raise self._too_slow(call.method, call.path) from None
            return None, self._failure(exc, call.method, call.path)
        if limit.expired():  # cut mid-headers, the answer may look whole: it is not
            raise self._too_slow(call.method, call.path)
        log.debug(
            "%s %s %s -> %s in %.2fs",
            self.provider,
            call.method,
            redact(response.url),
            response.status_code,
            time.monotonic() - started,
        )
        return self._judge(response, call)

    def _judge(
        self, response: requests.Response, call: _Call
    ) -> tuple[JSONValue, ProviderError | None]:
        """An answer as (its body, None), or (None, an error a retry may mend); raises
        what a retry cannot."""
        body, malformed = self._decode(response)
        error = self._error_for(response, body)
        if error is None:
            if malformed:
                raise Unavailable(
                    self.provider,
                    f"{call.method} {redact(call.path)} returned malformed JSON "
                    f"(HTTP {response.status_code}): {clip(response.text, 120)!r}",
                    status=response.status_code,
                )
            return body, None
        if response.status_code not in RETRY_STATUSES:
            raise error
        wait = error.retry_after if isinstance(error, RateLimited) else None
        if wait is not None and wait > self.max_retry_after:  # a daily quota: not worth it
            raise error
        return None, error

    def _wait_to_retry(self, error: ProviderError, attempt: int) -> None:
        """Sleep before the next try: the server's Retry-After when it sent one (already
        within the bound), else the backoff for this attempt."""
        if isinstance(error, RateLimited) and error.retry_after is not None:
            log.info(
                "%s rate limited; retrying in %.1fs (Retry-After)",
                self.provider,
                error.retry_after,
            )
            self.sleep(error.retry_after)
            return
        delay = self._backoff(attempt)
        log.info("%s: %s; retrying in %.1fs", self.provider, error, delay)
        self.sleep(delay)

    def _too_slow(self, method: str, path: str) -> Unavailable:
        # The deadline cut the socket. Not retried: a slow server is no faster next time.
        return Unavailable(
            self.provider,
            f"{method} {redact(path)} took longer than {self.total_timeout:g}s in total "
            "(the answer came too slowly)",
        )

    def _failure(self, exc: Exception, method: str, path: str) -> ProviderError:
        """A requests failure as a typed error (retried like a connection error when safe)."""
        import requests

        if isinstance(exc, requests.Timeout):
            return Unavailable(
                self.provider, f"{method} {redact(path)} timed out after {self.timeout[1]:.0f}s"
            )
        if isinstance(exc, requests.ConnectionError):
            return Unavailable(
                self.provider, f"cannot connect to {self.base_url}: {_short_reason(exc)}"
            )
        # A broken answer (truncated body, bad chunking...): typed, so every caller's
        # cleanup path sees it.
        return Unavailable(
            self.provider,
            f"{method} {redact(path)} failed: {clip(str(exc), 200) or type(exc).__name__}",
        )

    @staticmethod
    def _decode(response: requests.Response) -> tuple[JSONValue, bool]:
        """The answer decoded once: (JSON value or None when empty, False), or
        (the text, True) when the body is not JSON."""
        content = response.content
        if not content or not content.strip():
            return None, False
        try:
            return json.loads(content), False
        except ValueError:
            return response.text, True

    def _error_for(self, response: requests.Response, body: JSONValue) -> ProviderError | None:
        status = response.status_code
        if self.classify is not None:
            custom = self.classify(status, body, response.text)
            if custom is not None:
                return custom
        if 200 <= status < 300:
            return None
        message = redact(error_text(body) or f"HTTP {status} {response.reason or ''}".strip())
        code = (
            body.get("error")
            if isinstance(body, dict) and isinstance(body.get("error"), str)
            else None
        )
        if status in (401, 403):
            return AuthFailed(
                self.provider, f"authentication failed: {message}", status=status, code=code
            )
        if status == 404:
            return NotFound(self.provider, message, status=status, code=code)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return RateLimited(
                self.provider,
                f"rate limited: {message}",
                retry_after=retry_after,
                status=status,
                code=code,
            )
        if status >= 500:
            return Unavailable(self.provider, f"HTTP {status}: {message}", status=status, code=code)
        return ProviderError(self.provider, message, status=status, code=code)


def _short_reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "reset"):
        if marker in text:
            return marker.lower()
    return clip(text.split("(Caused by")[-1].strip(" )"), 160)


def _user_agent() -> str:
    from gpushopper import __version__

    return f"gpu-shopper/{__version__}"


def dumps_query(value: JSONValue) -> str:
    """JSON-encode a query-string argument the way the providers' own clients do."""
    return json.dumps(value, separators=(",", ":"))
