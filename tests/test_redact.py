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
