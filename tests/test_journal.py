"""The audit journal records every provider mutation, success or failure, without secrets."""

from __future__ import annotations

import json

import pytest


def entries(home):
    path = home / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_provision_and_done_are_journaled(vast, gs, isolated_home):
    session = gs("provision --provider vastai --gpu 4090 --yes --json").json()
    gs(f"sessions done {session['id']}")
    ops = [(e["op"], e["result"]) for e in entries(isolated_home)]
    assert ops == [("create_instance", "ok"), ("attach_ssh_key", "ok"), ("destroy_instance", "ok")]
    create = entries(isolated_home)[0]
    assert create["label"] == session["label"] and create["instance_id"] == session["instance_id"]
    assert oct((isolated_home / "journal.jsonl").stat().st_mode & 0o777) == "0o600"
    assert vast.api_key not in (isolated_home / "journal.jsonl").read_text()


def test_failed_create_is_journaled_with_the_error(tensordock, gs, isolated_home, fake_time):
    tensordock.error_in_200_next("POST", r"/instances$", "No available nodes found", times=5)
    gs("provision --provider tensordock --gpu 4090 --yes")
    (event,) = entries(isolated_home)
    assert event["op"] == "create_instance" and event["result"] == "error"
    assert "No available nodes found" in event["error"]


def test_reads_are_not_journaled(vast, gs, isolated_home):
    gs("inventory --provider vastai --json")
    gs("cleanup-orphans --json")
    assert entries(isolated_home) == []


def test_a_secret_in_a_journaled_error_is_masked_every_time(tmp_path):
    """The journal redacts what it writes itself: an adapter's raw error can carry a key
    (twice, here), and nothing upstream has redacted it."""
    import pytest

    from gpushopper.core.journal import JournaledProvider
    from gpushopper.model.redact import register_secret

    secret = "td-token-9f8e7d6c5b4a"
    register_secret(secret)

    class Leaky:
        NAME = "tensordock"

        def destroy_instance(self, instance_id: str) -> None:
            raise RuntimeError(f"DELETE ?token={secret} failed; retry with {secret}")

    journaled = JournaledProvider(Leaky(), tmp_path / "journal.jsonl")
    with pytest.raises(RuntimeError):
        journaled.destroy_instance("1")
    text = (tmp_path / "journal.jsonl").read_text()
    assert secret not in text
    assert text.count("****5b4a") == 2


def test_a_note_is_redacted_as_it_is_written(tmp_path):
    """``note`` fields reach the file unclipped: the line itself must be redacted."""
    from gpushopper.core.journal import JournaledProvider
    from gpushopper.model.redact import register_secret

    secret = "vk-note-key-0a1b2c3d4e5f"
    register_secret(secret)

    class Quiet:
        NAME = "vastai"

    JournaledProvider(Quiet(), tmp_path / "journal.jsonl").note(
        "state_write_failed", error=f"cannot write {secret}", **{secret: secret}
    )
    text = (tmp_path / "journal.jsonl").read_text()
    assert secret not in text and text.count("****4e5f") == 3


@pytest.mark.internal_errors
def test_an_api_key_in_an_adapter_error_never_reaches_the_journal(
    vast, gs, isolated_home, monkeypatch
):
    from gpushopper.providers.vastai import VastAI

    session = gs("provision --provider vastai --gpu 4090 --yes --json").json()

    def leaky_destroy(self, instance_id):
        raise RuntimeError(f"proxy said: bad request for key {vast.api_key} ({vast.api_key})")

    monkeypatch.setattr(VastAI, "destroy_instance", leaky_destroy)
    gs(f"sessions done {session['id']}")
    text = (isolated_home / "journal.jsonl").read_text()
    assert '"op": "destroy_instance"' in text and "RuntimeError" in text
    assert vast.api_key not in text
