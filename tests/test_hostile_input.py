"""Issue 9, items 10-11: nonsense on the command line is a usage error, exit 2, one line."""

from __future__ import annotations

import pytest


def _one_usage_line(result) -> None:
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "internal" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["inventory", "provision --dry-run"])
@pytest.mark.parametrize(
    "flag", ["--max-price", "--min-vram", "--min-reliability", "--min-cuda", "--min-disk"]
)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e309", "1e306"])
def test_non_finite_filters_are_usage_errors_before_any_request(vast, gs, command, flag, value):
    before = len(vast.requests)
    result = gs([*command.split(), "--provider", "vastai", flag, value, "--json"])
    _one_usage_line(result)
    assert result.json()["error"]["type"] == "usage"
    assert len(vast.requests) == before


@pytest.mark.parametrize("offer", ["", "   ", "vastai:", "tensordock:../instances:x"])
def test_an_empty_or_malformed_offer_id_never_rents_the_best_offer(vast, gs, offer):
    result = gs(["provision", offer, "--provider", "vastai", "--yes", "--json"])
    _one_usage_line(result)
    assert vast.live_instances() == []


def test_an_empty_offer_id_says_what_probably_happened(gs):
    result = gs(["provision", "", "--yes"])
    _one_usage_line(result)
    assert "empty" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["upload", "abc123", "a" * 5000, "/x"],
        ["upload", "abc123", "d/" + "n" * 300, "/x"],
        ["download", "abc123", "/x\nrm -rf ~", "."],
        ["download", "abc123", "/x", "b" * 5000],
    ],
)
def test_very_long_or_control_character_transfer_paths_are_usage_errors(gs, args):
    _one_usage_line(gs(["transfer", *args]))


@pytest.mark.parametrize("value", ["-1", "-0.5", "-100"])
def test_negative_numbers_reach_validation_as_values(gs, value):
    result = gs(["config", "set", "defaults.disk_gb", value])
    _one_usage_line(result)
    assert "No such option" not in result.stderr
    assert "at least 1" in result.stderr or "not an integer" in result.stderr
