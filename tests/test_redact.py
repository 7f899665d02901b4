"""Redaction: every occurrence of every secret, everywhere a line is written."""

from __future__ import annotations

from gpushopper.model.redact import mask, redact, register_secret


def test_every_occurrence_is_hidden():
    register_secret("vk-abcdefgh-1234")
    text = redact("key vk-abcdefgh-1234, again vk-abcdefgh-1234, and vk-abcdefgh-1234.")
    assert "vk-abcdefgh-1234" not in text
    assert text.count("****1234") == 3


def test_the_longest_secret_wins_when_one_contains_another():
    register_secret("short-secret")
    register_secret("short-secret-and-more-9876")
    assert redact("x short-secret-and-more-9876 y") == "x ****9876 y"


def test_mask_shows_at_most_four_characters():
    assert mask("abcdefghij") == "****ghij"
    assert mask("abcd") == "****"
    assert mask(None) == ""


def test_clip_redacts_before_it_cuts():
    """Cut first and the secret's head no longer matches: it would leak, cut short."""
    from gpushopper.model.redact import clip

    register_secret("clip-secret-abcdefgh-5678")
    text = "error: " + "clip-secret-abcdefgh-5678" + " and more"
    for limit in range(len("error: ") + 5, len(text)):
        assert "clip-secret-abcd" not in clip(text, limit), limit


def test_the_fast_json_path_for_flat_rows_is_redacted_too(capsys):
    """``emit_json`` writes lists of flat rows (offers, orphans) without json's encoder: a
    secret in a row, raw or in the escaped form JSON gives it, is masked all the same and
    the document stays valid JSON."""
    import json

    from gpushopper.cli.output import emit_json

    for secret in ("rows-secret-abcdefgh-4321", 'rows"sec\\ret-abcdefgh-8765'):
        register_secret(secret)
        rows = [{"id": "vastai:1", "note": f"key {secret} here", "n": 1}, {"id": "x", "n": 2}]
        emit_json(rows)
        out = capsys.readouterr().out
        assert secret not in out and json.dumps(secret)[1:-1] not in out
        assert json.loads(out)[0]["note"] == f"key {mask(secret)} here"
