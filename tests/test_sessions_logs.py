"""``sessions logs``: Vast.ai's request_logs over real HTTP (the answer's result_url checked,
fetched without the key, polled until ready), cleaned and redacted; TensorDock says it has
no log endpoint."""

from __future__ import annotations

import pytest

from gpushopper.providers import vastai as vast_adapter


@pytest.fixture
def session(vast, gs, monkeypatch):
    monkeypatch.setattr(vast_adapter, "LOG_POLL_S", 0.01)
    result = gs("provision --provider vastai --gpu 4090 --yes --json")
    assert result.exit_code == 0, result.stderr
    return result.json()


def _iid(session) -> int:
    return int(session["instance_id"])


def test_logs_fetched_through_result_url_cleaned_and_redacted(vast, gs, session):
    vast.log_ready_after = 3  # the URL answers 404 three times, as S3 does until the upload
    vast.container_logs[_iid(session)] += [
        "\x1b[32mloading weights\x1b[0m",
        "step 1/10\rstep 2/10",
        f"leaked key {vast.api_key} here",
        "bell\x07 and \x1b]0;title\x07 gone",
    ]
    result = gs(f"sessions logs {session['id']} --tail 5")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "loading weights"
    assert lines[1:3] == ["step 1/10", "step 2/10"]
    assert vast.api_key not in result.stdout and "leaked key ****" in result.stdout
    assert lines[-1] == "bell? and  gone"
    assert "\x1b" not in result.stdout
    asked = [r for r in vast.requests if "request_logs" in r["path"]]
    assert asked[-1]["method"] == "PUT" and asked[-1]["json"] == {"tail": "5"}
    fetched = [r for r in vast.requests if r["path"].startswith("/logs/")]
    assert len(fetched) == 4  # three 404s, then the log
    assert not any(r["authorization_sent"] for r in fetched)  # the key never goes there


def test_logs_json(vast, gs, session):
    result = gs(f"sessions logs {session['id']} --tail 2 --json")
    assert result.exit_code == 0, result.stderr
    doc = result.json()
    assert doc["session_id"] == session["id"] and doc["provider"] == "vastai"
    assert doc["instance_id"] == session["instance_id"] and doc["tail"] == 2
    assert len(doc["lines"]) == 2


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "http://logs.example.com/x.log",  # http off loopback
        "https://user:pw@logs.example.com/x.log",
        "https://logs.example.com/x.log\nHost: evil",
        "gopher://127.0.0.1/x",
        "not a url",
    ],
)
def test_a_result_url_that_is_not_plain_https_is_refused_unfetched(vast, gs, session, url):
    vast.log_url_override = url
    result = gs(f"sessions logs {session['id']}")
    assert result.exit_code == 1, result.stderr
    assert "result_url" in result.stderr and "not ready" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not [r for r in vast.requests if r["path"].startswith("/logs/")]


def test_a_refused_result_url_is_shown_without_its_signature(vast, gs, session):
    vast.log_url_override = "http://logs.example.com/x.log?X-Amz-Signature=abcdef0123456789"
    result = gs(f"sessions logs {session['id']}")
    assert result.exit_code == 1
    assert "logs.example.com/x.log" in result.stderr and "abcdef0123456789" not in result.stderr


def test_a_log_that_never_becomes_ready_exits_1(vast, gs, session):
    vast.log_ready_after = 10_000
    result = gs(f"sessions logs {session['id']}")
    assert result.exit_code == 1
    assert "not ready" in result.stderr


def test_a_job_secret_in_the_log_is_masked(vast, gs, session, isolated_home, monkeypatch):
    from gpushopper.state.store import StateStore

    secret = "hf_" + "LogSecretValue12345678"
    monkeypatch.setenv("HF_TOKEN", secret)
    with StateStore(isolated_home / "state.json").transaction() as state:
        state.setdefault("jobs", {})["j000001"] = {
            "id": "j000001",
            "session_id": session["id"],
            "secret_names": ["HF_TOKEN"],
        }
    vast.container_logs[_iid(session)].append(f"token={secret}")
    result = gs(f"sessions logs {session['id']} --json")
    assert result.exit_code == 0, result.stderr
    assert secret not in result.stdout
    assert result.json()["lines"][-1].startswith("token=****")


def test_an_ended_session_has_no_log(vast, gs, session):
    assert gs(f"sessions done {session['id']}").exit_code == 0
    result = gs(f"sessions logs {session['id']}")
    assert result.exit_code == 1
    assert "destroyed" in result.stderr


def test_bad_tail_exits_2(vast, gs, session):
    assert gs(f"sessions logs {session['id']} --tail 0").exit_code == 2
    assert gs("sessions logs nosuch").exit_code == 2


def test_tensordock_has_no_log_endpoint_and_says_what_to_do(tensordock, gs):
    made = gs("provision --provider tensordock --gpu 4090 --yes --json")
    assert made.exit_code == 0, made.stderr
    result = gs(f"sessions logs {made.json()['id']}")
    assert result.exit_code == 1
    assert "no log endpoint" in result.stderr and "cloud-init-output.log" in result.stderr
    assert gs(f"sessions done {made.json()['id']}").exit_code == 0


def test_slow_polling_is_bounded_in_time_not_only_in_tries(vast, gs, session, monkeypatch):
    # Each try may wait its whole read timeout: the time bound covers the polling as well
    # (a bound of 0 s: the first miss already spent it).
    monkeypatch.setattr(vast_adapter, "LOG_FETCH_MAX_S", 0.0)
    vast.log_ready_after = 10_000
    result = gs(f"sessions logs {session['id']}")
    assert result.exit_code == 1
    assert "within 0s" in result.stderr and "HTTP 404" in result.stderr
    fetched = [r for r in vast.requests if r["path"].startswith("/logs/")]
    assert len(fetched) == 1


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/x.log", "http://localhost/x.log", "http://[::1]/x.log"],
)
def test_http_on_loopback_is_refused_when_the_api_is_the_real_one(url):
    # Plain http is the emulator's allowance only: with the real (https) API, a result_url
    # on this machine's loopback is as refused as any other http one.
    from gpushopper.model.errors import ProviderError

    with pytest.raises(ProviderError, match="not https"):
        vast_adapter.checked_log_url(url, "https://console.vast.ai")
    assert vast_adapter.checked_log_url(url, "http://127.0.0.1:5000") == url


def test_a_host_that_only_starts_like_loopback_is_not_loopback():
    from gpushopper.model.errors import ProviderError

    with pytest.raises(ProviderError, match="not https"):
        vast_adapter.checked_log_url("http://127.0.0.1.example.com/x", "http://127.0.0.1:5000")
