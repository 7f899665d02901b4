"""Issue 9, items 1-3: no secret leaks in any form; keys never need the command line."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from urllib.parse import quote

import pytest

from gpushopper.model.redact import clip, redact, register_secret
from tests.fakes.scripted_http import ScriptedServer

KEY = "k3y-Secret-0123456789abcdefXYZ"


# -- 1. whitespace and control characters where credentials are read --------------------------
def test_trailing_crlf_on_the_env_key_is_stripped_and_works(vast, gs, monkeypatch):
    """`export VASTAI_API_KEY=$(cat key.txt)` on a CRLF file: requests used to refuse the
    header and quote 'Bearer <key>\\r' everywhere."""
    monkeypatch.setenv("VASTAI_API_KEY", vast.api_key + "\r\n")
    result = gs("inventory --provider vastai --json --refresh")
    assert result.exit_code == 0, result.stderr
    assert vast.api_key not in result.stdout + result.stderr


@pytest.mark.parametrize("where", ["env", "dotenv", "file", "keyfile"])
def test_surrounding_whitespace_is_stripped_wherever_a_key_is_read(
    where, gs, monkeypatch, isolated_home, tmp_path
):
    from gpushopper.state.config import Settings
    from gpushopper.state.paths import resolve_paths

    padded = f" \t{KEY}\r\n"
    if where == "env":
        monkeypatch.setenv("VASTAI_API_KEY", padded)
    elif where == "dotenv":
        Path(".env").write_bytes(f'VASTAI_API_KEY="{KEY}\\r"\r\n'.encode())
    elif where == "file":
        (isolated_home / "config.toml").write_text(f'[vastai]\napi_key = "{KEY}\\r\\n"\n')
    else:
        keyfile = tmp_path / "user-home" / ".config" / "vastai" / "vast_api_key"
        keyfile.parent.mkdir(parents=True)
        keyfile.write_bytes(padded.encode())
    import os

    settings = Settings(paths=resolve_paths(), environ=dict(os.environ), cwd=Path.cwd())
    assert settings.get("vastai.api_key") == KEY


@pytest.mark.parametrize("inner", ["\r", "\n", "\x01", "\x1b", "\x7f"])
def test_a_key_with_an_inner_control_character_is_refused_naming_the_variable(
    gs, monkeypatch, inner
):
    monkeypatch.setenv("VASTAI_API_KEY", KEY[:10] + inner + KEY[10:])
    monkeypatch.setenv("VASTAI_API_URL", "http://127.0.0.1:9")
    result = gs("inventory --provider vastai --json")
    assert result.exit_code == 2, result.stderr
    assert "VASTAI_API_KEY" in result.stderr
    assert "control character" in result.stderr
    for leaked in (KEY[:10], KEY[10:]):
        assert leaked not in result.stdout + result.stderr
    assert json.loads(result.stdout)["error"]["type"] == "config"
    assert len(result.stderr.strip().splitlines()) == 1


# -- 1. every form a secret takes in text, redacted before any cut ---------------------------
FORMS = {
    "raw": lambda k: k,
    "upper": str.upper,
    "lower": str.lower,
    "repr": lambda k: repr(k + "\r")[1:-1],
    "json": lambda k: json.dumps(k + "\r\n")[1:-1],
    "url": lambda k: quote(k + "\r", safe=""),
    "url-header": lambda k: quote("Bearer " + k + "\r", safe=""),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_of_a_registered_secret_is_redacted(form):
    """The key as read (with its CR) is what was registered; text shows it escaped."""
    key = f"fresh-{form}-Key-0123456789abcdef"  # unique: the registry is process-wide
    register_secret(key + "\r")
    out = redact(f"header rejected: 'Authorization: {FORMS[form](key)}' (see docs)")
    assert key.lower() not in out.lower()
    assert key[:12].lower() not in out.lower()


def test_clip_redacts_before_cutting():
    key = "clip-Key-0123456789abcdefghij"
    register_secret(key)
    cut = clip("x" * 10 + key, 30)
    assert key[:20] not in cut
    assert len(cut) <= 30


def test_an_escaped_key_echoed_by_a_server_never_reaches_output(gs, monkeypatch, isolated_home):
    """A proxy that echoes the key back upper-cased, URL-encoded and JSON-escaped."""
    with ScriptedServer() as server:
        body = {
            "error": "bad_request",
            "msg": f"rejected {KEY.upper()} / {quote(KEY, safe='')} / {json.dumps(KEY + chr(13))}",
        }
        for _ in range(8):
            server.add(400, body)
        monkeypatch.setenv("VASTAI_API_KEY", KEY)
        monkeypatch.setenv("VASTAI_API_URL", server.url)
        result = gs("inventory --provider vastai --json --refresh")
    text = result.stdout + result.stderr
    assert result.exit_code == 1, text
    assert KEY.lower() not in text.lower()
    assert KEY[:12].lower() not in text.lower()
    journal = isolated_home / "journal.jsonl"
    if journal.exists():
        assert KEY.lower() not in journal.read_text().lower()


# -- 2. a key never on the command line ------------------------------------------------------
def test_config_set_dash_reads_the_key_from_stdin(gs, isolated_home):
    result = gs("config set vastai.api_key -", input=KEY + "\r\n")
    assert result.exit_code == 0, result.stderr
    assert KEY not in result.stdout + result.stderr
    config = isolated_home / "config.toml"
    assert f'api_key = "{KEY}"' in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    shown = gs("config get vastai.api_key --json").json()
    assert shown["value"] == "****" + KEY[-4:]


def test_config_set_without_a_value_prompts_without_echo(isolated_home, monkeypatch):
    import sys

    import click
    from click.testing import CliRunner

    from gpushopper.cli import cli
    from gpushopper.cli.output import run

    seen: dict[str, object] = {}

    def fake_prompt(text, hide_input=False, err=False, **kw):
        seen.update(text=text, hide_input=hide_input, err=err)
        return KEY

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(click, "prompt", fake_prompt)
    with CliRunner().isolation() as (out, err, _):
        monkeypatch.setattr(sys, "stdin", Terminal())
        # Not through ``gs``: stdin must be a terminal inside the isolation. A crash still
        # fails the test, as there.
        code = run(cli, ["config", "set", "vastai.api_key"], reraise_internal=True)
        printed = out.getvalue().decode() + err.getvalue().decode()
    assert code == 0
    assert seen == {"text": "vastai.api_key", "hide_input": True, "err": True}
    assert KEY in (isolated_home / "config.toml").read_text()
    assert KEY not in printed


def test_config_set_without_a_value_off_a_terminal_is_a_usage_error(gs):
    result = gs("config set vastai.api_key", input="")
    assert result.exit_code == 2
    assert "'-'" in result.stderr


# -- 3. webhook URLs are masked like keys ----------------------------------------------------
def test_webhook_url_is_masked_in_list_get_and_set(gs, monkeypatch):
    hook = "https://hooks.slack.com/services/T000/B000/XXXXsecretTOKENxxxx"
    result = gs(f"config set alerts.webhook_url {hook} --json")
    assert result.exit_code == 0, result.stderr
    assert "secretTOKEN" not in result.stdout + result.stderr
    listing = gs("config list --json")
    assert "secretTOKEN" not in listing.stdout
    row = {r["key"]: r for r in listing.json()}["alerts.webhook_url"]
    assert row["value"] == "https://hooks.slack.com/****"
    got = gs("config get alerts.webhook_url")
    assert "secretTOKEN" not in got.stdout
    assert "hooks.slack.com" in got.stdout


@pytest.mark.internal_errors
def test_a_crash_quoting_the_key_leaves_it_in_no_file(vast, gs, isolated_home, monkeypatch):
    """A bug whose message quotes the key (escaped, as repr does): state.json, the journal
    and the output get the mask only."""
    from gpushopper.providers.vastai import VastAI

    real_create = VastAI.create_instance

    def create_then_crash(self, spec):
        real_create(self, spec)
        raise KeyError(f"Authorization: Bearer {vast.api_key}\r")

    monkeypatch.setattr(VastAI, "create_instance", create_then_crash)
    result = gs("provision --provider vastai --gpu 4090 --yes --json")
    assert result.exit_code == 1
    assert vast.live_instances() == []
    for text in (
        result.stdout,
        result.stderr,
        (isolated_home / "state.json").read_text(),
        (isolated_home / "journal.jsonl").read_text(),
    ):
        assert vast.api_key not in text


def test_redaction_never_breaks_the_json_it_writes(isolated_home):
    """Text redaction of serialized JSON could cut an escape in half (``\\n`` + the rest
    of a key starting with ``n``): values are redacted, not the document."""
    from gpushopper.state.store import StateStore

    key = "nkey-starting-with-n-0123456789"
    register_secret(key)
    store = StateStore(isolated_home / "state.json")
    with store.transaction() as state:
        state["offer_health"]["x"] = {"last_reason": "line one\n" + key[1:], "k": key}
    data = store.read()  # parses: the file is valid JSON
    assert data["offer_health"]["x"]["last_reason"] == "line one\n" + key[1:]
    assert data["offer_health"]["x"]["k"] == "****6789"
