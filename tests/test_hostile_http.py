"""Issue 9, items 12-14: slow answers, endless pages and wrong shapes end cleanly."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from gpushopper.model.errors import ProviderError, Unavailable
from gpushopper.providers.base import HttpClient


class SlowDrip:
    """A hostile server on 127.0.0.1: headers (or the body) one byte per ``gap`` seconds."""

    def __init__(self, gap: float = 0.05, drip_headers: bool = False) -> None:
        self.gap = gap
        self.drip_headers = drip_headers
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.connections = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        body = b'{"offers": []}' + b" " * 200
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n".encode()
        try:
            conn.recv(65536)
            if not self.drip_headers:
                conn.sendall(head)
            for byte in (head if self.drip_headers else b"") + body:
                if self.stop.is_set():
                    break
                conn.sendall(bytes([byte]))
                time.sleep(self.gap)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("drip_headers", [False, True], ids=["body", "headers"])
def test_a_slow_drip_answer_ends_at_the_total_deadline(drip_headers):
    server = SlowDrip(drip_headers=drip_headers)
    try:
        client = HttpClient("vastai", server.url, read_timeout=0.3, total_timeout=0.8)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="took longer than"):
            client.request("GET", "/api/v0/bundles/")
        elapsed = time.monotonic() - started
        assert elapsed < 3.0
        assert server.connections == 1  # a slow server is not asked again
    finally:
        server.close()


def test_inventory_against_a_slow_drip_provider_exits_1_quickly(gs, monkeypatch):
    server = SlowDrip()
    try:
        monkeypatch.setenv("VASTAI_API_KEY", "drip-key-1234")
        monkeypatch.setenv("VASTAI_API_URL", server.url)
        monkeypatch.setenv("GPU_SHOPPER_DEFAULTS_HTTP_TIMEOUT", "0.3")
        started = time.monotonic()
        result = gs("inventory --provider vastai --json --refresh")
        assert time.monotonic() - started < 5.0
        assert result.exit_code == 1, result.stderr
        assert "took longer than" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        server.close()


def test_a_fast_answer_is_untouched_by_the_deadline(vast, gs):
    assert gs("inventory --provider vastai --json --refresh").exit_code == 0


# -- 13. pagination is bounded ---------------------------------------------------------------
def test_a_repeated_next_token_fails_the_pass_after_two_pages(vast):
    from gpushopper.providers.vastai import VastAI, VastAIConfig

    vast.fail_next(
        "GET",
        r"/api/v1/instances",
        status=200,
        body={"instances": [], "next_token": "t1"},
        times=1000,
    )
    before = len(vast.requests)
    with pytest.raises(ProviderError, match="repeated a next_token"):
        VastAI(VastAIConfig(vast.api_key, vast.url)).list_instances()
    assert len(vast.requests) - before == 2


def test_an_endless_stream_of_new_tokens_stops_at_the_page_bound():
    from gpushopper.providers.vastai import MAX_PAGES, VastAI, VastAIConfig
    from tests.fakes.scripted_http import ScriptedServer

    with ScriptedServer() as server:
        for i in range(MAX_PAGES + 50):
            server.add(200, {"instances": [], "next_token": f"token-{i}"})
        with pytest.raises(ProviderError, match=f"did not end after {MAX_PAGES} pages"):
            VastAI(VastAIConfig("page-key-1234", server.url)).list_instances()
        assert len(server.requests) == MAX_PAGES


@pytest.mark.parametrize("token", [["x"], 7, {"a": 1}, "x" * 5000])
def test_an_odd_next_token_is_a_provider_error(vast, token):
    from gpushopper.providers.vastai import VastAI, VastAIConfig

    vast.fail_next(
        "GET", r"/api/v1/instances", status=200, body={"instances": [], "next_token": token}
    )
    with pytest.raises(ProviderError, match="next_token"):
        VastAI(VastAIConfig(vast.api_key, vast.url)).list_instances()


# -- 14. wrong-shaped answers are provider errors --------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        {"templates": {"not": "a list"}},
        {"templates": "nope"},
        {"templates": 7},
        [{"hash_id": "x"}],
        "just text",
    ],
)
@pytest.mark.parametrize(
    "command", ["templates --provider vastai", "templates --provider vastai --name x"]
)
def test_a_wrong_shaped_template_list_is_exit_1_one_line(vast, gs, body, command):
    vast.fail_next("GET", r"/template/", status=200, body=body, times=10)
    result = gs(f"{command} --json")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert result.json()["error"]["type"] in ("provider", "unavailable")
    assert "internal" not in result.stderr and "AttributeError" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_wrong_shaped_template_search_is_exit_1_one_line(vast, gs):
    vast.fail_next("GET", r"/template/", status=200, body=[{"templates": []}], times=10)
    result = gs("inventory --provider vastai --template 'PyTorch' --json --refresh")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "internal" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
