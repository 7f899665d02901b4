"""The HTTP layer against a real loopback server: retries, Retry-After, no create retry."""

from __future__ import annotations

import pytest

from gpushopper.model.errors import AuthFailed, NotFound, ProviderError, RateLimited, Unavailable
from gpushopper.providers.base import HttpClient
from tests.fakes.scripted_http import ScriptedServer


@pytest.fixture
def server():
    with ScriptedServer() as srv:
        yield srv


def client(server, sleeps, **kw):
    return HttpClient(
        "testprov",
        server.url,
        headers={"Authorization": "Bearer sekrit-token-1234"},
        secrets=["sekrit-token-1234"],
        sleep=sleeps.append,
        **kw,
    )


def test_get_retries_5xx_then_succeeds_with_backoff(server):
    sleeps: list[float] = []
    server.add(503, {"msg": "busy"})
    server.add(502, "bad gateway")
    server.add(200, {"answer": 42})
    assert client(server, sleeps).request("GET", "/thing") == {"answer": 42}
    assert len(server.requests) == 3
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] > 0


def test_retry_after_is_honoured(server):
    sleeps: list[float] = []
    server.add(429, "API requests too frequent", {"Retry-After": "3"})
    server.add(200, {"ok": 1})
    assert client(server, sleeps).request("GET", "/x") == {"ok": 1}
    assert sleeps == [3.0]


def test_retry_after_beyond_bound_gives_up(server):
    sleeps: list[float] = []
    server.add(
        429, {"error": "search_quota_exceeded", "msg": "daily quota"}, {"Retry-After": "3600"}
    )
    with pytest.raises(RateLimited) as err:
        client(server, sleeps, max_retry_after=60).request("GET", "/x")
    assert err.value.retry_after == 3600
    assert sleeps == [] and len(server.requests) == 1


def test_429_without_retry_after_backs_off(server):
    sleeps: list[float] = []
    server.add(429, "API requests too frequent")
    server.add(200, {"ok": 1})
    assert client(server, sleeps).request("DELETE", "/x") == {"ok": 1}
    assert len(sleeps) == 1


def test_gives_up_after_max_attempts(server):
    sleeps: list[float] = []
    for _ in range(5):
        server.add(503, {"msg": "down for maintenance"})
    with pytest.raises(Unavailable, match="down for maintenance"):
        client(server, sleeps, max_attempts=3).request("GET", "/x")
    assert len(server.requests) == 3


def test_create_is_never_retried(server):
    sleeps: list[float] = []
    server.add(503, {"msg": "busy"})
    with pytest.raises(Unavailable):
        client(server, sleeps).request("PUT", "/asks/1/", json_body={"a": 1}, idempotent=False)
    assert len(server.requests) == 1 and sleeps == []
    server.add(429, "too frequent", {"Retry-After": "1"})
    with pytest.raises(RateLimited):
        client(server, sleeps).request("POST", "/instances", json_body={})
    assert len(server.requests) == 2


def test_connection_refused_retried_for_get_only():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    sleeps: list[float] = []
    http = HttpClient("p", f"http://127.0.0.1:{port}", sleep=sleeps.append, max_attempts=3)
    with pytest.raises(Unavailable, match="cannot connect"):
        http.request("GET", "/x")
    assert len(sleeps) == 2
    sleeps.clear()
    with pytest.raises(Unavailable):
        http.request("POST", "/x", json_body={})
    assert sleeps == []


@pytest.mark.parametrize(
    "status, body, exc, text",
    [
        (
            401,
            {"success": False, "error": "auth_error", "msg": "Invalid user key"},
            AuthFailed,
            "Invalid user key",
        ),
        (
            404,
            {"success": False, "error": "not_found", "msg": "Instance 5 not found"},
            NotFound,
            "Instance 5 not found",
        ),
        (
            400,
            {"success": False, "error": "invalid_args", "msg": "invalid env type"},
            ProviderError,
            "invalid env type",
        ),
        (
            400,
            {"detail": "API requests too frequent endpoint threshold=4.5"},
            ProviderError,
            "too frequent",
        ),
        (
            400,
            {"error": "Hostnode unavailable", "status": 400},
            ProviderError,
            "Hostnode unavailable",
        ),
    ],
)
def test_error_bodies_become_typed_errors_with_provider_message(server, status, body, exc, text):
    server.add(status, body)
    with pytest.raises(exc) as err:
        client(server, []).request("GET", "/x")
    assert text in str(err.value)
    assert err.value.status == status


def test_malformed_json_is_a_clear_error(server):
    server.add(200, b"{not json")
    with pytest.raises(Unavailable, match="malformed JSON"):
        client(server, []).request("GET", "/x")


def test_secret_echoed_by_server_is_redacted(server):
    server.add(400, {"msg": "bad token sekrit-token-1234 rejected"})
    with pytest.raises(ProviderError) as err:
        client(server, []).request("GET", "/x")
    assert "sekrit-token-1234" not in str(err.value)
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sekrit-token-1234"


class _BrokenSession:
    """A requests session whose every call dies mid-answer (a truncated body)."""

    def __init__(self) -> None:
        self.calls = 0
        self.headers: dict[str, str] = {}

    def request(self, *args, **kwargs):
        import requests

        self.calls += 1
        raise requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead")


def test_any_requests_failure_becomes_a_typed_error_and_is_retried_when_safe():
    sleeps: list[float] = []
    http = HttpClient("p", "http://127.0.0.1:9", sleep=sleeps.append, max_attempts=3)
    broken = _BrokenSession()
    http._session = broken  # type: ignore[assignment]
    with pytest.raises(Unavailable, match="IncompleteRead"):
        http.request("DELETE", "/instances/1/")
    assert broken.calls == 3 and len(sleeps) == 2
    with pytest.raises(Unavailable):
        http.request("PUT", "/asks/1/", json_body={}, idempotent=False)
    assert broken.calls == 4  # a create is never repeated
