"""Durations need a unit (except where the unit is the option's own name), and make sense."""

from __future__ import annotations

import pytest

from gpushopper.model.units import UNIT_HINT, parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("45m", 2700), ("2h", 7200), ("1h30m", 5400), ("1d", 86400), ("0.5h", 1800)],
)
def test_durations_with_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "600", "900", 900, 30.0, "1e3"])
def test_a_bare_number_is_refused_with_the_hint(text):
    with pytest.raises(ValueError, match=UNIT_HINT):
        parse_duration(text)


def test_a_bare_number_is_taken_where_the_unit_is_the_name():
    assert parse_duration("3", bare_unit="h") == 3 * 3600
    assert parse_duration(1.5, bare_unit="h") == 5400


@pytest.mark.parametrize(
    "text", ["nan", "inf", "-inf", "NaN", "-1", "-5m", "0", "0s", "1e9", "400d", "", "soon", True]
)
def test_nonsense_is_refused_everywhere(text):
    with pytest.raises(ValueError):
        parse_duration(text, bare_unit="h")


def test_zero_only_where_it_means_something():
    assert parse_duration("0s", allow_zero=True) == 0
    with pytest.raises(ValueError):
        parse_duration("0s")


@pytest.mark.parametrize(
    "key, value",
    [
        ("safety.provision_timeout", "900"),
        ("safety.provision_timeout", "nan"),
        ("safety.provision_timeout", "0s"),
        ("defaults.hours", "3"),
        ("defaults.hours", "inf"),
        ("safety.warn_before", "10"),
        ("defaults.cache_ttl", "60"),
    ],
)
def test_config_refuses_bare_and_senseless_durations(gs, isolated_home, key, value):
    result = gs(["config", "set", key, value])
    assert result.exit_code == 2, result.stderr
    assert key in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (isolated_home / "config.toml").exists()


@pytest.mark.parametrize(
    "key, value",
    [("safety.warn_before", "0s"), ("defaults.cache_ttl", "0s"), ("defaults.hours", "3h")],
)
def test_config_takes_durations_with_units(gs, key, value):
    assert gs(["config", "set", key, value]).exit_code == 0


def test_a_bare_number_in_a_profile_is_refused(gs, isolated_home):
    (isolated_home / "config.toml").write_text("[profiles.mine]\ntimeout = 600\n")
    result = gs("provision --profile mine --dry-run")
    assert result.exit_code == 2
    assert "profiles.mine.timeout" in result.stderr and UNIT_HINT in result.stderr
