"""`gpu-shopper inventory` and friends over real HTTP to both emulators, through the real CLI
error mapping (the ``gs`` fixture), plus a few pure checks of the core they call."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from gpushopper.core.inventory import OfferCache, rank, search
from gpushopper.model.errors import MissingCredentials, Unavailable
from gpushopper.model.models import OFFER_KEYS, Offer, OfferQuery, canonical_gpu
from gpushopper.model.units import iso
from gpushopper.state.paths import resolve_paths
from gpushopper.state.store import StateStore

# CLI.md, "JSON shapes": the keys every Offer must have. Scripts depend on them.
CLI_MD_OFFER_KEYS = {
    "id",
    "provider",
    "gpu_name",
    "num_gpus",
    "vram_gb",
    "price_per_hour",
    "reliability",
    "cuda_version",
    "disk_gb",
    "cpu_cores",
    "ram_gb",
    "country",
    "location",
    "inet_down_mbps",
    "verified",
    "health",
}
# What `inventory --json` prints today, in order: change it consciously (CHANGELOG).
PINNED_OFFER_KEYS = [
    "id",
    "provider",
    "gpu_name",
    "num_gpus",
    "vram_gb",
    "price_per_hour",
    "reliability",
    "cuda_version",
    "disk_gb",
    "cpu_cores",
    "ram_gb",
    "country",
    "location",
    "inet_down_mbps",
    "verified",
    "health",
    "machine_id",
    "driver_version",
    "dlperf",
    "total_flops",
    "perf_per_dollar",
    "max_disk_gb",
    "perf_estimate",
    "perf_source",
    "cost_per_unit",
]
BUNDLES = "/api/v0/bundles/"


def approx(expected: float, **kw: Any) -> Any:
    """Prices are rounded to 6 decimals (micro-dollars) when parsed."""
    return pytest.approx(expected, abs=kw.pop("abs", 1e-5), **kw)


@pytest.fixture
def market(vast, tensordock):
    """Both emulators, seeded, and the tool configured for them."""
    return vast, tensordock


def offers(gs, args: str = "") -> list[dict[str, Any]]:
    result = gs(f"inventory --json {args}")
    assert result.exit_code == 0, result.stderr
    data = result.json()
    assert isinstance(data, list)
    return data


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


def searches(vast) -> int:
    return sum(1 for r in vast.requests if r["path"] == BUNDLES)


def hostnode_lists(tensordock) -> int:
    return sum(1 for r in tensordock.requests if r["path"] == "/hostnodes")


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    return lines[0]


def td_id(tensordock, city: str, v0name: str) -> str:
    node = next(
        n
        for n in tensordock.hostnodes.values()
        if n["location"]["city"] == city
        and any(g["v0Name"] == v0name for g in n["available_resources"]["gpus"])
    )
    return f"tensordock:{node['id']}:{v0name}"


# -- merged, ranked, shown ------------------------------------------------------------------
def test_both_providers_merged_cheapest_first_above_the_reliability_floor(market, gs):
    vast, tensordock = market
    rows = offers(gs)
    providers = [r["provider"] for r in rows]
    assert set(providers) == {"vastai", "tensordock"}
    # merged, not appended: a TensorDock offer ranks between Vast.ai ones
    assert providers.index("tensordock") < len(providers) - 1 - providers[::-1].index("vastai")
    prices = [r["price_per_hour"] for r in rows]
    assert prices == sorted(prices)
    assert all(r["reliability"] >= 0.95 for r in rows)  # the configured default floor
    assert "vastai:1000008" not in ids(rows)  # reliability 0.80
    assert td_id(tensordock, "Orlando", "geforcertx3090-pcie-24gb") not in ids(rows)  # 92 %
    assert rows[0]["id"] == "vastai:1000010"  # RTX 3090 at $0.15 + 32 GB of disk
    assert rows[0]["price_per_hour"] == approx(0.15 + 0.15 * 32 / 720)
    dallas = next(
        r for r in rows if r["id"] == td_id(tensordock, "Dallas", "geforcertx4090-pcie-24gb")
    )
    assert dallas["price_per_hour"] == approx(0.40 + 8 * 0.003 + 32 * 0.002 + 100 * 0.00005)


def test_providers_are_asked_once_each(market, gs):
    vast, tensordock = market
    offers(gs)
    assert (searches(vast), hostnode_lists(tensordock)) == (1, 1)


def test_table_shows_short_offer_ids_without_colour(market, gs, monkeypatch):
    vast, tensordock = market
    monkeypatch.setenv("COLUMNS", "120")
    result = gs("inventory --gpu 4090 --limit 5")
    assert result.exit_code == 0, result.stderr
    assert "\x1b[" not in result.stdout
    header = result.stdout.splitlines()[0].split()
    assert header[:5] == ["OFFER", "GPU", "#", "VRAM", "GB"]
    assert "$/h" in header
    # A TensorDock id is shown as a unique prefix, a Vast.ai ask (a number) whole.
    full = td_id(tensordock, "Dallas", "geforcertx4090-pcie-24gb")
    assert full not in result.stdout
    assert full[: len("tensordock:") + 8] in result.stdout
    assert "vastai:1000002" in result.stdout
    assert result.stderr == ""
    # ...and the prefix is taken back wherever an offer id is
    short = next(w for w in result.stdout.split() if full.startswith(w) and len(w) > 12)
    shown = gs(f"inventory show {short} --json")
    assert shown.exit_code == 0, shown.stderr
    assert shown.json()["id"] == full
    assert [o["id"] for o in gs("inventory --gpu 4090 --limit 5 --json").json()].count(full) == 1


def test_no_match_is_a_note_not_an_error(market, gs):
    result = gs("inventory --gpu B200")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "No offers match" in result.stderr
    assert gs("inventory --gpu B200 --json").json() == []


# -- every filter changes what comes back -----------------------------------------------------
FILTERS = [
    ("--gpu 4090", lambda r: canonical_gpu(r["gpu_name"]) == "rtx4090"),
    ("--min-vram 48", lambda r: r["vram_gb"] >= 48),
    ("--num-gpus 2", lambda r: r["num_gpus"] == 2),
    ("--max-price 0.45", lambda r: r["price_per_hour"] <= 0.45),
    ("--min-reliability 0.99", lambda r: r["reliability"] >= 0.99),
    ("--min-cuda 12.8", lambda r: r["cuda_version"] is None or r["cuda_version"] >= 12.8),
    ("--min-disk 500", lambda r: r["disk_gb"] >= 500),
    ("--country DE", lambda r: r["country"] == "DE"),
    ("--country us --country CA", lambda r: r["country"] in {"US", "CA"}),
    ("--provider tensordock", lambda r: r["provider"] == "tensordock"),
    ("--provider vastai", lambda r: r["provider"] == "vastai"),
    ("--verified-only", lambda r: r["verified"] is not False),
    ("--disk 200", lambda r: r["disk_gb"] >= 200),
    (
        "--template 'Ostris AI Toolkit'",
        lambda r: r["provider"] == "vastai" and r["cuda_version"] >= 12.8,
    ),
    ("--limit 3", lambda r: True),
]


@pytest.mark.parametrize(("args", "holds"), FILTERS, ids=[a for a, _ in FILTERS])
def test_each_filter_changes_what_comes_back(market, gs, args, holds):
    everything = offers(gs)
    narrowed = offers(gs, args)
    assert narrowed, args
    assert all(holds(r) for r in narrowed), args
    assert ids(narrowed) != ids(everything), args


def test_lower_reliability_floor_shows_more(market, gs):
    vast, tensordock = market
    everything = ids(offers(gs, "--min-reliability 0"))
    assert "vastai:1000008" in everything
    assert td_id(tensordock, "Orlando", "geforcertx3090-pcie-24gb") in everything
    assert set(ids(offers(gs))) < set(everything)


def test_limit_keeps_the_best(market, gs):
    assert ids(offers(gs, "--limit 3")) == ids(offers(gs))[:3]


def test_filters_combine(market, gs):
    rows = offers(gs, "--gpu 4090 --country US --max-price 0.45")
    assert ids(rows) == ["vastai:1000001"]


def test_disk_changes_prices_on_both_providers(market, gs):
    vast, tensordock = market
    small = {r["id"]: r["price_per_hour"] for r in offers(gs, "--disk 32")}
    big = {r["id"]: r["price_per_hour"] for r in offers(gs, "--disk 200")}
    assert big["vastai:1000001"] == approx(small["vastai:1000001"] + 0.15 * 168 / 720)
    dallas = td_id(tensordock, "Dallas", "geforcertx4090-pcie-24gb")
    assert big[dallas] == approx(small[dallas] + 100 * 0.00005)  # 100 GB minimum first
    assert "vastai:1000004" in small and "vastai:1000004" not in big  # 120 GB host disk


def test_filters_go_to_vast_server_side_in_its_units(market, gs):
    vast, _ = market
    offers(gs, "--min-vram 24 --max-price 0.5 --min-cuda 12.4 --country US --min-disk 100")
    body = next(r["json"] for r in reversed(vast.requests) if r["path"] == BUNDLES)
    assert body["gpu_ram"] == {"gte": 24000}
    assert body["dph_total"] == {"lte": 0.5}
    assert body["cuda_max_good"] == {"gte": 12.4}
    assert body["geolocation"] == {"in": ["US"]}
    assert body["disk_space"] == {"gte": 100}
    assert body["reliability"] == {"gte": 0.95}
    assert body["rentable"] == {"eq": True}
    assert body["order"] == [["dph_total", "asc"]]
    assert body["allocated_storage"] == 32.0


@pytest.mark.parametrize(
    "spelling", ["4090", "RTX_4090", "'rtx 4090'", "geforcertx4090-pcie-24gb", "'RTX 4090'"]
)
def test_gpu_names_are_matched_loosely(market, gs, spelling):
    rows = offers(gs, f"--gpu {spelling}")
    assert {r["provider"] for r in rows} == {"vastai", "tensordock"}
    assert ids(rows) == ids(offers(gs, "--gpu 4090"))


def test_several_gpus_are_alternatives(market, gs):
    rows = offers(gs, "--gpu 4090 --gpu H100")
    assert {canonical_gpu(r["gpu_name"]) for r in rows} == {"rtx4090", "h100"}


def test_a_form_factor_asked_for_is_respected(market, gs):
    assert {r["gpu_name"] for r in offers(gs, "--gpu A100")} == {"A100 SXM4", "A100"}
    assert ids(offers(gs, "--gpu 'A100 SXM4'")) == ["vastai:1000006"]
    assert ids(offers(gs, "--gpu a100-pcie-80gb"))[0].startswith("tensordock:")


# -- sorting --------------------------------------------------------------------------------
def test_sort_by_reliability(market, gs):
    rel = [r["reliability"] for r in offers(gs, "--sort reliability")]
    assert rel == sorted(rel, reverse=True)


def test_sort_by_vram(market, gs):
    total = [r["vram_gb"] * r["num_gpus"] for r in offers(gs, "--sort vram")]
    assert total == sorted(total, reverse=True)


def test_sort_perf_per_dollar_known_first_unknown_last(market, gs):
    rows = offers(gs, "--sort perf-per-dollar")
    known = [r["perf_per_dollar"] for r in rows if r["perf_per_dollar"] is not None]
    assert known == sorted(known, reverse=True)
    nulls = [r["perf_per_dollar"] is None for r in rows]
    assert nulls == sorted(nulls)  # all the unknowns (TensorDock) at the end
    assert any(nulls) and not all(nulls)
    top = rows[0]
    assert top["perf_per_dollar"] == approx(top["dlperf"] / top["price_per_hour"], rel=1e-3)
    # order asked of Vast.ai
    body = next(r["json"] for r in reversed(market[0].requests) if r["path"] == BUNDLES)
    assert body["order"] == [["dlperf_per_dphtotal", "desc"]]


# -- profiles -------------------------------------------------------------------------------
def test_flux_lora_profile(market, gs):
    result = gs("inventory --profile flux-lora --json")
    assert result.exit_code == 0, result.stderr
    rows = result.json()
    assert rows
    for row in rows:
        assert row["vram_gb"] >= 24
        assert row["reliability"] >= 0.98
        assert row["cuda_version"] >= 12.8  # the Ostris AI Toolkit template's extra_filters
    assert "tensordock" in result.stderr and "Ostris AI Toolkit" in result.stderr


def test_flags_override_the_profile(market, gs):
    assert ids(offers(gs, "--profile flux-lora --min-reliability 0.999")) == ["vastai:1000007"]


def test_profile_from_the_config_file(market, gs, isolated_home: Path):
    (isolated_home / "config.toml").write_text(
        '[profiles.cheap-de]\nmax_price = 0.6\ncountry = ["DE"]\n', encoding="utf-8"
    )
    rows = offers(gs, "--profile cheap-de")
    assert rows and all(r["country"] == "DE" and r["price_per_hour"] <= 0.6 for r in rows)
    assert {r["provider"] for r in rows} == {"vastai", "tensordock"}


def test_profile_template_no_provider_has_is_a_usage_error(market, gs, monkeypatch):
    monkeypatch.delenv("VASTAI_API_KEY")
    result = gs("inventory --profile flux-lora")
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert "tensordock: no template 'Ostris AI Toolkit'" in line


# -- failures ---------------------------------------------------------------------------------
def test_a_429_is_retried_and_then_answered(market, gs):
    vast, tensordock = market
    vast.rate_limit_next(times=1)
    tensordock.rate_limit_next(times=1)
    result = gs("inventory --json")
    assert result.exit_code == 0, result.stderr
    assert {r["provider"] for r in result.json()} == {"vastai", "tensordock"}
    assert [r["status"] for r in vast.requests if r["path"] == BUNDLES] == [429, 200]
    assert hostnode_lists(tensordock) == 2
    assert "Warning" not in result.stderr


@pytest.mark.parametrize("as_json", [False, True])
def test_one_provider_down_the_others_offers_still_print(market, gs, as_json):
    vast, tensordock = market
    vast.fail_next("POST", "bundles", status=500, times=10)
    result = gs("inventory --json" if as_json else "inventory")
    assert result.exit_code == 0
    warning = [line for line in result.stderr.splitlines() if "vastai" in line]
    assert len(warning) == 1 and warning[0].startswith("Warning: ")
    assert "Internal server error" in warning[0]
    if as_json:
        rows = result.json()
        assert rows and {r["provider"] for r in rows} == {"tensordock"}
    else:
        assert "tensordock:" in result.stdout and "vastai:" not in result.stdout


def test_tensordock_down_vast_still_prints(market, gs):
    vast, tensordock = market
    tensordock.fail_next("GET", "/hostnodes", status=500, times=10)
    result = gs("inventory --json")
    assert result.exit_code == 0
    assert {r["provider"] for r in result.json()} == {"vastai"}
    assert "Warning: tensordock" in result.stderr


def test_a_rejected_key_is_one_failing_provider(market, gs, monkeypatch):
    monkeypatch.setenv("VASTAI_API_KEY", "revoked-key-0000")
    result = gs("inventory --json")
    assert result.exit_code == 0
    assert {r["provider"] for r in result.json()} == {"tensordock"}
    assert "authentication failed" in result.stderr
    assert "revoked-key-0000" not in result.stderr + result.stdout


@pytest.mark.parametrize("as_json", [False, True])
def test_all_providers_down_exits_1(market, gs, as_json):
    vast, tensordock = market
    vast.fail_next("POST", "bundles", status=500, times=10)
    tensordock.fail_next("GET", "/hostnodes", status=500, times=10)
    result = gs("inventory --json" if as_json else "inventory")
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert "vastai" in line and "tensordock" in line
    if as_json:
        error = result.json()["error"]
        assert error["type"] and "vastai" in error["message"]
    else:
        assert result.stdout == ""


def test_only_provider_asked_down_exits_1(market, gs):
    vast, _ = market
    vast.fail_next("POST", "bundles", status=500, times=10)
    result = gs("inventory --provider vastai")
    assert result.exit_code == 1
    assert "vastai" in one_error_line(result.stderr)


def test_provider_without_credentials_is_skipped_with_a_note(market, gs, monkeypatch):
    vast, tensordock = market
    monkeypatch.delenv("TENSORDOCK_API_TOKEN")
    result = gs("inventory --json")
    assert result.exit_code == 0
    assert {r["provider"] for r in result.json()} == {"vastai"}
    note = [line for line in result.stderr.splitlines() if "tensordock" in line]
    assert len(note) == 1 and "no credentials" in note[0] and "TENSORDOCK_API_TOKEN" in note[0]
    assert not note[0].startswith(("Warning", "Error"))
    assert tensordock.requests == []


def test_no_credentials_at_all_exits_2(gs):
    result = gs("inventory")
    assert result.exit_code == 2
    assert "VASTAI_API_KEY" in one_error_line(result.stderr)


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        ("--min-vram -1", "--min-vram"),
        ("--min-reliability 2", "--min-reliability"),
        ("--min-reliability -0.1", "--min-reliability"),
        ("--provider aws", "aws"),
        ("--max-price 0", "--max-price"),
        ("--max-price cheap", "--max-price"),
        ("--num-gpus 0", "--num-gpus"),
        ("--disk 0", "--disk"),
        ("--limit 0", "--limit"),
        ("--sort fastest", "--sort"),
        ("--country USA", "--country"),
        ("--min-cuda twelve", "--min-cuda"),
        ("--profile nope", "nope"),
        ("--no-such-flag", "--no-such-flag"),
    ],
)
def test_bad_flag_values_exit_2_with_one_clear_line(market, gs, args, mentions):
    vast, tensordock = market
    result = gs(f"inventory {args}")
    assert result.exit_code == 2
    assert mentions in one_error_line(result.stderr)
    assert result.stdout == ""
    assert vast.requests == [] and tensordock.requests == []


def test_bad_flag_with_json_prints_the_error_object(market, gs):
    result = gs("inventory --min-reliability 2 --json")
    assert result.exit_code == 2
    assert result.json()["error"]["type"] == "usage"
    assert "--min-reliability" in result.json()["error"]["message"]


# -- the JSON document ------------------------------------------------------------------------
def test_json_offer_keys_match_cli_md(market, gs):
    rows = offers(gs)
    assert set(OFFER_KEYS) == CLI_MD_OFFER_KEYS
    for row in rows:
        assert set(row) >= CLI_MD_OFFER_KEYS
        assert list(row) == PINNED_OFFER_KEYS


def test_json_values_have_contract_types(market, gs):
    for row in offers(gs, "--min-reliability 0"):
        assert row["provider"] in ("vastai", "tensordock")
        assert row["id"].startswith(row["provider"] + ":")
        assert isinstance(row["price_per_hour"], float)
        assert 0 <= row["reliability"] <= 1
        assert isinstance(row["num_gpus"], int)
        assert row["health"] in ("ok", "degraded", "suppressed")
        assert row["country"] is None or (len(row["country"]) == 2 and row["country"].isupper())


def test_unknowns_are_null(market, gs):
    vast, tensordock = market
    vast.add_offer(
        gpu_name="RTX 4090",
        dph_base=0.05,
        geolocation=None,
        cuda_max_good=None,
        inet_down=None,
        dlperf=None,
        total_flops=None,
        verification=None,
    )
    result = gs("inventory --json --gpu 4090")
    assert result.exit_code == 0, result.stderr
    rows = result.json()
    sparse = rows[0]
    assert sparse["price_per_hour"] == approx(0.05 + 0.15 * 32 / 720)
    for key in ("cuda_version", "country", "location", "inet_down_mbps", "verified"):
        assert sparse[key] is None, key
    assert sparse["perf_per_dollar"] is None
    td = next(r for r in rows if r["provider"] == "tensordock")
    assert td["cuda_version"] is None and td["verified"] is None and td["dlperf"] is None
    assert '"cuda_version": null' in result.stdout


# -- the cache --------------------------------------------------------------------------------
def cache_files(home: Path, provider: str) -> list[Path]:
    return sorted((home / "cache" / "offers").glob(f"{provider}-*.json"))


def cache_file(home: Path, provider: str) -> Path:
    [path] = cache_files(home, provider)
    return path


def test_second_run_is_answered_from_the_cache(market, gs, isolated_home):
    vast, tensordock = market
    first = gs("inventory --json").stdout
    second = gs("inventory --json").stdout
    assert first == second
    assert (searches(vast), hostnode_lists(tensordock)) == (1, 1)
    for provider in ("vastai", "tensordock"):
        entry = json.loads(cache_file(isolated_home, provider).read_text())
        fetched = datetime.fromisoformat(entry["fetched_at"].replace("Z", "+00:00"))
        assert abs(fetched - datetime.now(timezone.utc)) < timedelta(minutes=1)
        assert entry["offers"]


def test_cache_is_per_query(market, gs):
    vast, tensordock = market
    offers(gs)
    offers(gs, "--gpu RTX_4090")
    offers(gs, "--gpu 'rtx 4090'")  # the same query, spelled differently
    assert (searches(vast), hostnode_lists(tensordock)) == (2, 2)


def test_only_the_providers_not_cached_are_asked(market, gs):
    vast, tensordock = market
    offers(gs, "--provider vastai")
    rows = offers(gs)
    assert {r["provider"] for r in rows} == {"vastai", "tensordock"}
    assert (searches(vast), hostnode_lists(tensordock)) == (1, 1)


def test_cache_expires_after_the_default_ttl(market, gs, monkeypatch):
    vast, tensordock = market
    offers(gs)
    monkeypatch.setenv("GPU_SHOPPER_CLOCK_OFFSET", "50s")
    offers(gs)
    assert (searches(vast), hostnode_lists(tensordock)) == (1, 1)
    monkeypatch.setenv("GPU_SHOPPER_CLOCK_OFFSET", "61s")
    offers(gs)
    assert (searches(vast), hostnode_lists(tensordock)) == (2, 2)


def test_cache_ttl_from_config(market, gs, monkeypatch):
    vast, _ = market
    monkeypatch.setenv("GPU_SHOPPER_DEFAULTS_CACHE_TTL", "10m")
    offers(gs, "--provider vastai")
    monkeypatch.setenv("GPU_SHOPPER_CLOCK_OFFSET", "9m")
    offers(gs, "--provider vastai")
    assert searches(vast) == 1
    monkeypatch.setenv("GPU_SHOPPER_CLOCK_OFFSET", "11m")
    offers(gs, "--provider vastai")
    assert searches(vast) == 2


def test_refresh_bypasses_the_cache(market, gs):
    vast, tensordock = market
    before = offers(gs)
    vast.add_offer(gpu_name="RTX 4090", dph_base=0.01, geolocation="Texas, US")
    assert ids(offers(gs)) == ids(before)  # cached: the new offer is not seen yet
    fresh = offers(gs, "--refresh")
    assert fresh[0]["price_per_hour"] < 0.02
    assert (searches(vast), hostnode_lists(tensordock)) == (2, 2)
    assert ids(offers(gs)) == ids(fresh)  # and the refreshed answer is cached


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2, 3]", '{"entries": 7}', ""])
def test_a_corrupt_cache_file_is_ignored_and_replaced(market, gs, isolated_home, garbage):
    vast, _ = market
    offers(gs, "--provider vastai")
    path = cache_file(isolated_home, "vastai")
    path.write_text(garbage, encoding="utf-8")
    result = gs("inventory --json --provider vastai")
    assert result.exit_code == 0, result.stderr
    assert result.json()
    assert searches(vast) == 2
    assert json.loads(path.read_text())["offers"]
    offers(gs, "--provider vastai")
    assert searches(vast) == 2  # the replacement is used


def test_a_cache_entry_with_a_bad_timestamp_is_refetched(market, gs, isolated_home):
    vast, _ = market
    offers(gs, "--provider vastai")
    path = cache_file(isolated_home, "vastai")
    data = json.loads(path.read_text())
    data["fetched_at"] = "not a time"
    path.write_text(json.dumps(data))
    offers(gs, "--provider vastai")
    assert searches(vast) == 2


def test_after_a_429_the_cache_lives_longer(market, gs, monkeypatch):
    vast, _ = market
    cached = offers(gs, "--provider vastai")
    vast.rate_limit_next(times=20, retry_after=0)
    result = gs("inventory --json --provider vastai --refresh")
    assert result.exit_code == 0, result.stderr
    assert ids(result.json()) == ids(cached)  # answered from the earlier cache
    assert "rate limited" in result.stderr
    vast.clear_faults()
    asked = searches(vast)
    monkeypatch.setenv("GPU_SHOPPER_CLOCK_OFFSET", "2m")  # past the 60 s default
    offers(gs, "--provider vastai")
    assert searches(vast) == asked
    monkeypatch.setenv("GPU_SHOPPER_CLOCK_OFFSET", "6m")  # past the longer TTL too
    offers(gs, "--provider vastai")
    assert searches(vast) == asked + 1


def test_a_429_with_nothing_cached_is_a_failure(market, gs):
    vast, _ = market
    vast.rate_limit_next(times=20, retry_after=0)
    result = gs("inventory --provider vastai")
    assert result.exit_code == 1
    assert "rate limited" in one_error_line(result.stderr)


# -- offer health -----------------------------------------------------------------------------
def record_health(entries: dict[str, dict[str, Any]]) -> None:
    with StateStore(resolve_paths().state_file).transaction() as state:
        state["offer_health"].update(entries)


def failure(*, failures: int = 3, suppressed_for: timedelta | None = timedelta(hours=1)):
    now = datetime.now(timezone.utc)
    return {
        "failures": failures,
        "last_failure_at": iso(now - timedelta(minutes=5)),
        "last_reason": "SSH never came up",
        "suppressed_until": iso(now + suppressed_for) if suppressed_for is not None else None,
    }


def test_suppressed_offers_are_hidden_unless_asked_for(market, gs):
    record_health({"vastai:1000002": failure()})
    result = gs("inventory --json")
    assert result.exit_code == 0
    assert "vastai:1000002" not in ids(result.json())
    assert "1 offers hidden" in result.stderr and "--include-unhealthy" in result.stderr
    shown = offers(gs, "--include-unhealthy")
    [row] = [r for r in shown if r["id"] == "vastai:1000002"]
    assert row["health"] == "suppressed"


def test_a_suppressed_machine_hides_its_offers(market, gs):
    vast, tensordock = market
    dallas = td_id(tensordock, "Dallas", "geforcertx4090-pcie-24gb")
    node_id = dallas.split(":")[1]
    record_health(
        {
            f"machine:vastai:{vast.offers[1000002]['machine_id']}": failure(),
            f"machine:tensordock:{node_id}": failure(),
        }
    )
    rows = offers(gs)
    assert "vastai:1000002" not in ids(rows) and dallas not in ids(rows)
    assert "vastai:1000001" in ids(rows)


def test_degraded_and_expired_suppressions_are_shown_and_marked(market, gs, monkeypatch):
    record_health(
        {
            "vastai:1000001": failure(failures=1, suppressed_for=None),
            "vastai:1000002": failure(suppressed_for=timedelta(minutes=30)),
        }
    )
    result = gs("inventory --gpu 4090")
    assert "degraded" in result.stdout
    monkeypatch.setenv("GPU_SHOPPER_CLOCK_OFFSET", "1h")  # the suppression has run out
    health = {r["id"]: r["health"] for r in offers(gs, "--gpu 4090")}
    assert health["vastai:1000001"] == "degraded"
    assert health["vastai:1000002"] == "degraded"
    assert health["vastai:1000003"] == "ok"


def test_offer_health_is_empty_for_now(gs):
    result = gs("offer-health --json")
    assert result.exit_code == 0
    assert result.json() == []
    table = gs("offer-health")
    assert table.exit_code == 0 and "No failures recorded" in table.stderr


def test_offer_health_reads_what_provisioning_records(gs, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: whole cells, one line each
    record_health(
        {
            "vastai:1000002": failure(),
            "machine:vastai:40000": failure(failures=1, suppressed_for=None),
        }
    )
    rows = {r["key"]: r for r in gs("offer-health --json").json()}
    assert rows["vastai:1000002"]["suppressed"] is True
    assert rows["vastai:1000002"]["failures"] == 3
    assert rows["vastai:1000002"]["last_reason"] == "SSH never came up"
    assert rows["machine:vastai:40000"]["suppressed"] is False
    table = gs("offer-health")
    assert "vastai:1000002" in table.stdout and "SSH never came up" in table.stdout


# -- inventory show -----------------------------------------------------------------------------
def test_show_refetches_one_offer(market, gs):
    vast, _ = market
    offers(gs)
    asked = searches(vast)
    result = gs("inventory show vastai:1000002 --json")
    assert result.exit_code == 0, result.stderr
    offer = result.json()
    assert offer["id"] == "vastai:1000002"
    assert list(offer) == PINNED_OFFER_KEYS
    assert offer["price_per_hour"] == approx(0.36 + 0.15 * 32 / 720)
    assert searches(vast) == asked + 1  # fresh, never from the cache
    bigger = gs("inventory show vastai:1000002 --disk 100 --json").json()
    assert bigger["price_per_hour"] == approx(0.36 + 0.15 * 100 / 720)


def test_show_a_tensordock_offer(market, gs):
    _, tensordock = market
    offer_id = td_id(tensordock, "Frankfurt", "geforcertx4090-pcie-24gb")
    offer = gs(f"inventory show {offer_id} --json").json()
    assert offer["id"] == offer_id
    assert offer["price_per_hour"] == approx(0.42 + 8 * 0.003 + 32 * 0.002 + 0.005)
    assert tensordock.requests[-1]["path"] == f"/hostnodes/{offer_id.split(':')[1]}"
    table = gs(f"inventory show {offer_id}")
    assert "Frankfurt, Hesse, Germany" in table.stdout


def test_show_marks_health(market, gs):
    record_health({"vastai:1000002": failure()})
    assert gs("inventory show vastai:1000002 --json").json()["health"] == "suppressed"


def test_show_an_offer_that_is_gone_exits_2(market, gs):
    result = gs("inventory show vastai:4040404")
    assert result.exit_code == 2  # bad input, like an unknown session
    assert "vastai:4040404" in one_error_line(result.stderr)
    result = gs("inventory show tensordock:no-such-node:geforcertx4090-pcie-24gb")
    assert result.exit_code == 2


@pytest.mark.parametrize(
    "bad", ["4040404", "vastai:abc", "aws:123", "tensordock:only-a-node", "vastai:"]
)
def test_show_a_malformed_id_exits_2(market, gs, bad):
    result = gs(f"inventory show {bad}")
    assert result.exit_code == 2
    assert "offer id" in one_error_line(result.stderr)


# -- templates ----------------------------------------------------------------------------------
def test_compatible_templates_follow_the_cuda_requirement(market, gs, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: whole cells, one line each
    older = {t["name"] for t in gs("inventory compatible-templates vastai:1000003 --json").json()}
    assert older == {"PyTorch (Vast)", "NVIDIA CUDA"}  # CUDA 12.4: not the 12.8 toolkit
    newer = {t["name"] for t in gs("inventory compatible-templates vastai:1000002 --json").json()}
    assert newer == {"Ostris AI Toolkit", "PyTorch (Vast)", "NVIDIA CUDA"}
    table = gs("inventory compatible-templates vastai:1000002")
    assert table.exit_code == 0 and "Ostris AI Toolkit" in table.stdout


def test_compatible_templates_with_unknown_cuda_lists_what_was_not_checked(market, gs):
    vast, tensordock = market
    vast.add_offer(id=1000777, gpu_name="RTX 4090", cuda_max_good=None)
    rows = {t["name"]: t for t in gs("inventory compatible-templates vastai:1000777 --json").json()}
    assert rows["Ostris AI Toolkit"]["unchecked"] == ["cuda_max_good"]
    offer_id = td_id(tensordock, "Dallas", "geforcertx4090-pcie-24gb")
    images = {t["id"]: t for t in gs(f"inventory compatible-templates {offer_id} --json").json()}
    assert "ubuntu2404_ml_pytorch" in images
    assert images["ubuntu2404_ml_pytorch"]["unchecked"] == []
    assert "nvidia_driver" in images["ubuntu2404"]["unchecked"][0]


def test_templates_from_both_providers(market, gs, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: whole cells, one line each
    rows = gs("templates --json").json()
    by_provider: dict[str, set[str]] = {}
    for row in rows:
        by_provider.setdefault(row["provider"], set()).add(row["name"])
    assert "Ostris AI Toolkit" in by_provider["vastai"]
    assert "ubuntu2404_ml_pytorch" in by_provider["tensordock"]
    only_td = gs("templates --provider tensordock --json").json()
    assert {r["provider"] for r in only_td} == {"tensordock"}
    named = gs("templates --name 'ai toolkit' --json").json()
    assert [r["name"] for r in named] == ["Ostris AI Toolkit"]
    table = gs("templates")
    assert table.exit_code == 0 and "vastai/ostris-ai-toolkit" in table.stdout


def test_templates_use_ssh_filter_is_sent(market, gs):
    vast, _ = market
    assert gs("templates --provider vastai --use-ssh --json").exit_code == 0
    sent = next(r for r in reversed(vast.requests) if r["path"] == "/api/v0/template/")
    assert json.loads(sent["query"]["select_filters"]) == {"use_ssh": {"eq": True}}


def test_templates_with_one_provider_down(market, gs):
    vast, _ = market
    vast.fail_next("GET", "template", status=500, times=10)
    result = gs("templates --json")
    assert result.exit_code == 0
    assert {r["provider"] for r in result.json()} == {"tensordock"}
    assert "vastai" in result.stderr


def test_templates_show_by_name_hash_or_image(market, gs):
    vast, _ = market
    by_name = gs("templates show 'Ostris AI Toolkit' --json").json()
    assert by_name["min_cuda"] == 12.8 and by_name["provider"] == "vastai"
    by_hash = gs(f"templates show {by_name['hash_id']} --json").json()
    assert by_hash["name"] == "Ostris AI Toolkit"
    image = gs("templates show ubuntu2404_ml_pytorch --json").json()
    assert image["provider"] == "tensordock"
    table = gs("templates show 'Ostris AI Toolkit'")
    assert "vastai/ostris-ai-toolkit" in table.stdout
    missing = gs("templates show 'No Such Template'")
    assert missing.exit_code == 2  # bad input, like an unknown session
    assert "No Such Template" in one_error_line(missing.stderr)


# -- the core, without HTTP ---------------------------------------------------------------------
class FakeProvider:
    """Answers after every other provider has been asked: proves the fan-out is concurrent."""

    def __init__(self, name: str, barrier: threading.Barrier, answer: list[Offer] | None = None):
        self.name = name
        self.barrier = barrier
        self.answer = answer

    def search_offers(self, query: OfferQuery, limit: int = 200) -> list[Offer]:
        self.barrier.wait()  # raises BrokenBarrierError if the providers are asked one by one
        if self.answer is None:
            raise Unavailable(self.name, "down")
        return self.answer


def offer(provider: str, native: str, price: float | None, **kw: Any) -> Offer:
    return Offer(
        id=f"{provider}:{native}",
        provider=provider,
        gpu_name="RTX 4090",
        num_gpus=1,
        price_per_hour=price,
        reliability=kw.pop("reliability", 0.99),
        **kw,
    )


def test_providers_are_asked_concurrently_and_failures_isolated():
    barrier = threading.Barrier(3, timeout=5)
    fakes = {
        "vastai": FakeProvider("vastai", barrier, [offer("vastai", "1", 0.5)]),
        "tensordock": FakeProvider("tensordock", barrier, [offer("tensordock", "n:g", 0.4)]),
        "third": FakeProvider("third", barrier, None),
    }

    def factory(name: str) -> FakeProvider:
        return fakes[name]

    result = search(
        OfferQuery(providers=["vastai", "tensordock", "third"], min_reliability=0.95),
        factory,
        now=lambda: datetime.now(timezone.utc),
    )
    assert [o.id for o in result.offers] == ["tensordock:n:g", "vastai:1"]
    assert list(result.errors) == ["third"]


def test_missing_credentials_are_skipped_not_errors():
    def factory(name: str) -> Any:
        if name == "vastai":
            raise MissingCredentials("vastai", "set VASTAI_API_KEY")
        return FakeProvider(name, threading.Barrier(1), [offer(name, "n:g", 0.4)])

    result = search(OfferQuery(), factory, now=lambda: datetime.now(timezone.utc))
    assert result.no_credentials == ["vastai"]
    assert "VASTAI_API_KEY" in result.skipped["vastai"]
    assert [o.provider for o in result.offers] == ["tensordock"]
    assert result.errors == {}


def test_rank_puts_unknown_values_last():
    known = offer("vastai", "1", 0.3, perf_per_dollar=10.0, vram_gb=24.0)
    pricier = offer("vastai", "2", 0.6, perf_per_dollar=50.0, vram_gb=80.0, reliability=0.999)
    unknown = offer("tensordock", "n:g", None, reliability=None)
    assert [o.id for o in rank([unknown, pricier, known], "price")] == [
        known.id,
        pricier.id,
        unknown.id,
    ]
    assert rank([unknown, known, pricier], "perf-per-dollar")[-1] is unknown
    assert rank([unknown, known, pricier], "reliability")[0] is pricier
    assert rank([unknown, known, pricier], "vram")[0] is pricier


def test_offer_cache_round_trips_and_expires(tmp_path):
    clock = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    cache = OfferCache(tmp_path, 60, lambda: clock[0])
    stored = offer("vastai", "1", 0.5, extra={"ask_id": 1})
    cache.put("vastai", "k", [stored])
    [back] = cache.get("vastai", "k")
    assert back.id == stored.id and back.extra == {"ask_id": 1}
    assert cache.get("vastai", "other") is None
    clock[0] += timedelta(seconds=61)
    assert cache.get("vastai", "k") is None
    cache.note_rate_limited("vastai")
    assert cache.get("vastai", "k") is not None  # the longer TTL after a 429


# -- issue 10: per-query cache, taken offers, did-you-mean, progress, one decode ------------------
def test_each_query_has_its_own_small_cache_file_and_a_refresh_writes_only_its_own(
    market, gs, isolated_home
):
    offers(gs, "--provider vastai")
    offers(gs, "--provider vastai --gpu 4090")
    first, second = cache_files(isolated_home, "vastai")
    before = {p: p.read_bytes() for p in (first, second)}
    offers(gs, "--provider vastai --gpu 4090 --refresh")
    changed = [p for p in (first, second) if p.read_bytes() != before[p]]
    assert len(changed) == 1
    assert "4090" in json.loads(changed[0].read_text())["key"]


def test_the_cache_keeps_a_bounded_number_of_queries(tmp_path):
    from gpushopper.core.inventory import MAX_CACHED_QUERIES

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cache = OfferCache(tmp_path, 60, lambda: now)
    for i in range(MAX_CACHED_QUERIES + 10):
        cache.put("vastai", f"q{i}", [offer("vastai", str(i), 0.5)])
    files = sorted((tmp_path / "offers").glob("vastai-*.json"))
    assert len(files) == MAX_CACHED_QUERIES
    assert cache.get("vastai", f"q{MAX_CACHED_QUERIES + 9}") is not None  # the newest stays


def test_an_offer_just_rented_is_marked_taken_until_the_next_refresh(market, gs, isolated_home):
    first = offers(gs, "--provider vastai")
    target = first[0]["id"]
    OfferCache(isolated_home / "cache", 60, lambda: datetime.now(timezone.utc)).mark_taken(target)
    cached = {r["id"]: r["health"] for r in offers(gs, "--provider vastai")}
    assert cached[target] == "taken"
    assert [h for i, h in cached.items() if i != target] == ["ok"] * (len(cached) - 1)
    assert "taken" in gs("inventory --provider vastai").stdout  # the HEALTH column
    fresh = {r["id"]: r["health"] for r in offers(gs, "--provider vastai --refresh")}
    assert fresh[target] == "ok"
    assert {r["id"]: r["health"] for r in offers(gs, "--provider vastai")}[target] == "ok"


def test_provision_marks_its_offer_taken_in_the_cache(vast, gs, isolated_home):
    cached = offers(gs, "--provider vastai --gpu 4090")
    result = gs("provision --provider vastai --gpu 4090 --hours 1h --yes --json")
    assert result.exit_code == 0, result.stderr
    session = result.json()
    rented = session["offer_id"]
    assert rented in ids(cached)
    again = {r["id"]: r["health"] for r in offers(gs, "--provider vastai --gpu 4090")}
    assert again[rented] == "taken"
    assert gs(f"sessions done {session['id']} --json").exit_code == 0


@pytest.mark.parametrize("name", ["4900", "rtx_4900"])
def test_an_unknown_gpu_name_gets_a_did_you_mean_on_stderr(market, gs, name):
    result = gs(f"inventory --json --gpu {name}")
    assert result.exit_code == 0, result.stderr
    assert result.json() == []  # stdout stays one JSON document
    assert "did you mean RTX 4090" in result.stderr


def test_a_known_gpu_name_gets_no_hint(market, gs):
    result = gs("inventory --json --gpu 4090")
    assert result.exit_code == 0 and result.json()
    assert "did you mean" not in result.stderr


class RecordingProgress:
    def __init__(self) -> None:
        self.shown: list[list[str]] = []
        self.stopped = False

    def show(self, waiting: list[str]) -> None:
        self.shown.append(list(waiting))

    def stop(self) -> None:
        self.stopped = True


class GatedProvider:
    """Answers only when its gate opens: a slow provider without sleeping."""

    def __init__(self, name: str, gate: threading.Event | None) -> None:
        self.name, self.gate = name, gate

    def search_offers(self, query: OfferQuery, limit: int | None = None) -> list[Offer]:
        if self.gate is not None:
            assert self.gate.wait(5)
        return [offer(self.name, "n:g" if self.name == "tensordock" else "1", 0.4)]


def test_progress_names_the_providers_still_being_asked():
    gate = threading.Event()
    fakes = {
        "vastai": GatedProvider("vastai", None),
        "tensordock": GatedProvider("tensordock", gate),
    }
    progress = RecordingProgress()
    original_show = progress.show

    def show(waiting: list[str]) -> None:
        original_show(waiting)
        gate.set()  # the slow provider answers once the line is up

    progress.show = show  # type: ignore[method-assign]
    result = search(
        OfferQuery(min_reliability=0.9),
        fakes.__getitem__,
        now=lambda: datetime.now(timezone.utc),
        progress=progress,
        progress_after_s=0.0,
    )
    assert progress.shown == [["tensordock"]]
    assert progress.stopped
    assert len(result.offers) == 2


def test_fast_answers_show_no_progress():
    fakes = {n: GatedProvider(n, None) for n in ("vastai", "tensordock")}
    progress = RecordingProgress()
    search(
        OfferQuery(min_reliability=0.9),
        fakes.__getitem__,
        now=lambda: datetime.now(timezone.utc),
        progress=progress,
        progress_after_s=5.0,
    )
    assert progress.shown == [] and not progress.stopped


def test_no_status_line_on_a_pipe_or_with_json(monkeypatch):
    from gpushopper.cli import inventory as inv

    class Tty:
        def isatty(self) -> bool:
            return True

    assert inv.status_line(as_json=True) is None
    monkeypatch.setattr("sys.stderr", Tty())
    assert isinstance(inv.status_line(as_json=False), inv.StatusLine)
    assert inv.status_line(as_json=True) is None
    monkeypatch.setattr("sys.stderr", object())  # a pipe: no isatty at all
    assert inv.status_line(as_json=False) is None


def test_each_answer_is_decoded_once(market, monkeypatch):
    import gpushopper.providers.base as base
    from gpushopper.providers.vastai import VastAI, VastAIConfig

    vast, _ = market
    calls: list[int] = []
    real_loads = json.loads

    def counting_loads(data: Any, *args: Any, **kw: Any) -> Any:
        calls.append(len(data))
        return real_loads(data, *args, **kw)

    import types

    import requests

    monkeypatch.setattr(base, "json", types.SimpleNamespace(loads=counting_loads, dumps=json.dumps))
    monkeypatch.setattr(requests.Response, "json", lambda self, **kw: calls.append(-1))
    VastAI(VastAIConfig(vast.api_key, vast.url)).search_offers(OfferQuery(), limit=3)
    assert len(calls) == 1 and calls[0] > 0


def test_a_cached_best_few_does_not_answer_a_question_for_more(market, gs):
    vast, _ = market
    assert len(offers(gs, "--provider vastai --gpu 4090 --limit 1")) == 1
    assert len(offers(gs, "--provider vastai --gpu 4090 --limit 1")) == 1
    assert searches(vast) == 1  # the same question: cached
    every = offers(gs, "--provider vastai --gpu 4090")
    assert len(every) == 3 and searches(vast) == 2  # all of them: asked again
    assert len(offers(gs, "--provider vastai --gpu 4090 --limit 2")) == 2
    assert searches(vast) == 2  # every match is cached: enough for any limit


class FilterIgnoringProvider:
    """A provider that ignores ``verified``: our own check drops half of each answer."""

    def __init__(self) -> None:
        self.asked: list[int | None] = []
        self.rows = [
            offer("vastai", str(i), 0.1 + i / 100, verified=(i % 2 == 0)) for i in range(40)
        ]

    def search_offers(self, query: OfferQuery, limit: int | None = None) -> list[Offer]:
        self.asked.append(limit)
        return rank(list(self.rows), query.sort)[:limit]


def test_when_our_own_check_drops_offers_the_provider_is_asked_for_more():
    provider = FilterIgnoringProvider()
    result = search(
        OfferQuery(providers=["vastai"], verified=True, limit=5),
        lambda name: provider,
        now=lambda: datetime.now(timezone.utc),
    )
    assert [o.id for o in result.offers] == [f"vastai:{i}" for i in (0, 2, 4, 6, 8)]
    assert provider.asked == [5, 20]


def test_asking_for_more_stops_at_a_bound_with_a_provider_that_never_runs_out(monkeypatch):
    monkeypatch.setattr("gpushopper.core.inventory.MAX_ASKED", 1000)

    class Endless:
        asked: list[int | None] = []

        def search_offers(self, query: OfferQuery, limit: int | None = None) -> list[Offer]:
            self.asked.append(limit)
            return [offer("vastai", "1", 0.5, verified=False)] * (limit or 1)

    provider = Endless()
    result = search(
        OfferQuery(providers=["vastai"], verified=True, limit=3),
        lambda name: provider,
        now=lambda: datetime.now(timezone.utc),
    )
    assert result.offers == []
    assert provider.asked == [3, 12, 48, 192, 768, 3072]


@pytest.mark.parametrize("native", ["None", "12/../13", "7#x", ""])
def test_an_offer_whose_id_provision_would_refuse_is_never_shown(native):
    """A row's id reaches the create call's URL (``/asks/<id>/``): one that is not the
    provider's offer id shape is dropped, as ``provision <id>`` would refuse it."""

    class One:
        def search_offers(self, query, limit=None):
            return [offer("vastai", native, 0.1), offer("vastai", "5", 0.2)]

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    got = search(OfferQuery(providers=["vastai"]), lambda name: One(), now=lambda: now)
    assert [o.id for o in got.offers] == ["vastai:5"]


def test_a_cache_file_holding_another_querys_answer_is_a_miss(tmp_path):
    """The file name is a 64-bit hash of the query: on a collision (or a file copied
    across) the key stored inside decides, never the name."""
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cache = OfferCache(tmp_path, 60, lambda: now)
    cache.put("vastai", "gpu=4090", [offer("vastai", "1", 0.5)])
    cache._path("vastai", "gpu=4090").replace(cache._path("vastai", "gpu=H100"))
    assert cache.get("vastai", "gpu=H100") is None


# -- issue 11: the steps of search (question, clients, cache, each provider, merge) -------------
class Answering:
    """Answers ``rows`` (or raises ``fails``), noting each question it is asked."""

    def __init__(self, rows: list[Offer], fails: Exception | None = None) -> None:
        self.rows, self.fails = rows, fails
        self.asked: list[OfferQuery] = []

    def search_offers(self, query: OfferQuery, limit: int | None = None) -> list[Offer]:
        self.asked.append(query)
        if self.fails is not None:
            raise self.fails
        return list(self.rows)[:limit]


def test_search_refuses_an_unknown_sort_and_a_workload_it_cannot_rank_before_asking_anyone():
    from gpushopper.model.errors import UsageError

    asked: list[str] = []

    def factory(name: str) -> Any:
        asked.append(name)
        return Answering([])

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(UsageError, match=r"^unknown sort 'bogus' \(choose from price, "):
        search(OfferQuery(sort="bogus"), factory, now=lambda: now)
    with pytest.raises(UsageError, match="--workload ranks by benchmark results"):
        search(OfferQuery(workload="sd@1"), factory, now=lambda: now)
    assert asked == []


def test_answers_merge_in_the_order_asked_cached_or_not_and_each_provider_is_made_once(tmp_path):
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cache = OfferCache(tmp_path, 60, lambda: now)
    providers = {  # the same price: the merge order decides the ranking's order
        "tensordock": Answering([offer("tensordock", "n:g", 0.5)]),
        "vastai": Answering([offer("vastai", "1", 0.5)]),
    }
    search(OfferQuery(providers=["vastai"]), providers.__getitem__, cache=cache, now=lambda: now)
    made: list[str] = []

    def factory(name: str) -> Any:
        made.append(name)
        return providers[name]

    query = OfferQuery(providers=["tensordock", "vastai", "tensordock"])
    result = search(query, factory, cache=cache, now=lambda: now)
    assert made == ["tensordock", "vastai"]
    assert len(providers["vastai"].asked) == 1  # the second time from the cache, read first
    assert [o.id for o in result.offers] == ["tensordock:n:g", "vastai:1"]
    assert result.cached == {"tensordock": False, "vastai": True}
    assert list(result.cached) == ["tensordock", "vastai"]


def test_a_template_raises_each_providers_cuda_floor_or_skips_or_fails_it():
    from gpushopper.model.models import Template

    providers = {
        name: Answering(
            [offer(name, "n:g" if name == "tensordock" else "1", 0.5, cuda_version=13.0)]
        )
        for name in ("vastai", "tensordock")
    }

    def resolve(provider: Any, ident: str) -> Template | None:
        if provider is providers["tensordock"]:
            return None
        return Template(id="7", provider="vastai", name=ident, min_cuda=12.4)

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    result = search(
        OfferQuery(template="Trainer", min_cuda=11.0),
        providers.__getitem__,
        now=lambda: now,
        template_resolver=resolve,
    )
    assert [q.min_cuda for q in providers["vastai"].asked] == [12.4]
    assert providers["tensordock"].asked == []
    assert result.skipped["tensordock"].startswith("tensordock: no template 'Trainer'")
    assert [o.id for o in result.offers] == ["vastai:1"]

    def broken(provider: Any, ident: str) -> Template | None:
        raise Unavailable("vastai", "templates are down")

    failed = search(
        OfferQuery(providers=["vastai"], template="Trainer"),
        providers.__getitem__,
        now=lambda: now,
        template_resolver=broken,
    )
    assert "templates are down" in failed.errors["vastai"] and failed.offers == []


def test_a_rate_limited_provider_is_answered_from_an_earlier_cache_and_says_so(tmp_path):
    from gpushopper.model.errors import RateLimited

    clock = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    cache = OfferCache(tmp_path, 60, lambda: clock[0])
    provider = Answering([offer("vastai", "1", 0.5)])
    query = OfferQuery(providers=["vastai"])
    first = search(query, lambda name: provider, cache=cache, now=lambda: clock[0])
    assert first.cached == {"vastai": False} and first.notes == []
    clock[0] += timedelta(minutes=10)  # past the TTL, within the stale limit
    provider.fails = RateLimited("vastai", "slow down")
    again = search(query, lambda name: provider, cache=cache, now=lambda: clock[0])
    assert [o.id for o in again.offers] == ["vastai:1"] and again.cached == {"vastai": True}
    assert again.notes == ["vastai: rate limited; showing answers cached earlier"]
    nothing = search(query, lambda name: provider, now=lambda: clock[0])  # no cache at all
    assert "slow down" in nothing.errors["vastai"] and nothing.notes == []


def test_a_cache_that_cannot_be_written_is_a_note_and_the_answer_still_comes(tmp_path):
    (tmp_path / "file").write_text("")
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cache = OfferCache(tmp_path / "file" / "cache", 60, lambda: now)
    provider = Answering([offer("vastai", "1", 0.5)])
    result = search(
        OfferQuery(providers=["vastai"]), lambda name: provider, cache=cache, now=lambda: now
    )
    assert [o.id for o in result.offers] == ["vastai:1"]
    assert result.notes == ["could not write the offer cache: Not a directory"]
