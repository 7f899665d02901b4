"""Every match on a market of real size: 20,000 Vast.ai offers (thousands of cheap RTX 3060,
T4 and 3090, a few hundred 4090) and 1,500 TensorDock hostnodes, asked through the CLI over
real HTTP. What should come back is worked out here from the emulators' own rows, with the
filter semantics of shared/reference/vastai.md, not with the client's code."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from gpushopper.model.models import OfferQuery, rank_offers
from gpushopper.providers.tensordock import parse_hostnodes
from gpushopper.providers.vastai import parse_offer
from gpushopper.sandbox.tensordock import TensorDockEmulator
from gpushopper.sandbox.vastai import VastEmulator

MARKET_SIZE = 20_000


@pytest.fixture(scope="module")
def big_vast() -> Iterator[VastEmulator]:
    emu = VastEmulator()
    emu.start()
    emu.generate_market(MARKET_SIZE, seed=10)
    yield emu
    emu.stop()


@pytest.fixture
def on_big_vast(big_vast: VastEmulator, monkeypatch: pytest.MonkeyPatch) -> VastEmulator:
    monkeypatch.setenv("VASTAI_API_KEY", big_vast.api_key)
    monkeypatch.setenv("VASTAI_API_URL", big_vast.url)
    return big_vast


def _country(geo: str) -> str:
    return geo.rsplit(",", 1)[-1].strip().upper()


def vast_truth(emu: VastEmulator, f: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows that match ``f``, by brute force over every offer the emulator holds."""
    disk = f.get("disk", 32)
    out = []
    for raw in emu.offers.values():
        row = {**raw, **VastEmulator._pricing(raw, disk)}
        checks = [
            row["rentable"] and not row["rented"],
            not f.get("gpus") or row["gpu_name"] in f["gpus"],
            row["reliability"] >= f.get("rel", 0.0),
            "price" not in f or row["dph_total"] <= f["price"],
            "vram" not in f or row["gpu_ram"] >= f["vram"] * 1000,
            "num" not in f or row["num_gpus"] == f["num"],
            "cuda" not in f or row["cuda_max_good"] >= f["cuda"],
            row["disk_space"] >= max(disk, f.get("min_disk", 0)),
            "cc" not in f or _country(row["geolocation"]) in f["cc"],
            not f.get("verified") or row["verification"] == "verified",
        ]
        if all(checks):
            out.append(row)
    return out


CASES = [
    # (CLI flags, the same filters for the brute force, sort, limit)
    ("--gpu RTX_4090", {"gpus": {"RTX 4090"}}, "price", None),
    ("--gpu 4090 --gpu 3090 --max-price 0.5", {"gpus": {"RTX 4090", "RTX 3090"}, "price": 0.5},
     "price", 20),
    ("--gpu h100", {"gpus": {"H100 SXM", "H100 PCIE"}}, "vram", 10),
    ("--min-vram 40 --country US --country DE --verified-only",
     {"vram": 40, "cc": {"US", "DE"}, "verified": True}, "reliability", 25),
    ("--num-gpus 2 --min-cuda 12.6 --min-disk 500", {"num": 2, "cuda": 12.6, "min_disk": 500},
     "perf-per-dollar", 15),
    ("", {}, "price", 5),
    ("--gpu 'rtx 4090' --disk 100", {"gpus": {"RTX 4090"}, "disk": 100}, "reliability", None),
    # More matches than the first page holds: the answer must be widened to all of them.
    ("--max-price 0.12", {"price": 0.12}, "price", None),
    ("--verified-only", {"verified": True}, "reliability", 1500),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "f", "sort", "limit"), CASES)
def test_every_match_is_found_on_a_market_of_20000(on_big_vast, gs, flags, f, sort, limit):
    f = {"rel": 0.95, **f}
    truth = vast_truth(on_big_vast, f)
    assert truth, "a case that matches nothing proves nothing"
    args = f"inventory --json --refresh --provider vastai --min-reliability 0.95 --sort {sort} "
    result = gs(args + flags + (f" --limit {limit}" if limit else ""))
    assert result.exit_code == 0, result.stderr
    got = result.json()
    truth_ids = {f"vastai:{row['id']}" for row in truth}
    assert {o["id"] for o in got} <= truth_ids
    if limit is None:
        assert {o["id"] for o in got} == truth_ids
    # The best of all matches, in rank order (ties broken by price, then id).
    expected = rank_offers([parse_offer(row) for row in truth], sort)[:limit]
    assert [o["id"] for o in got] == [o.id for o in expected]


def test_the_server_is_asked_for_the_gpu_and_not_for_a_thousand_of_everything(on_big_vast, gs):
    before = len(on_big_vast.requests)
    result = gs("inventory --json --refresh --provider vastai --gpu 4090 --limit 5")
    assert result.exit_code == 0, result.stderr
    [sent] = [r for r in on_big_vast.requests[before:] if r["path"] == "/api/v0/bundles/"]
    assert "RTX 4090" in sent["json"]["gpu_name"]["in"]
    assert sent["json"]["limit"] < 100


@pytest.fixture(scope="module")
def big_tensordock() -> Iterator[TensorDockEmulator]:
    emu = TensorDockEmulator()
    emu.start()
    emu.generate_hostnodes(1500, seed=3)
    yield emu
    emu.stop()


@pytest.mark.parametrize(
    ("flags", "sort", "limit"),
    [("--gpu 4090", "price", None), ("", "price", 7), ("--min-vram 40", "vram", 12)],
)
def test_tensordock_finds_every_match_too(big_tensordock, gs, monkeypatch, flags, sort, limit):
    monkeypatch.setenv("TENSORDOCK_API_TOKEN", big_tensordock.api_token)
    monkeypatch.setenv("TENSORDOCK_API_URL", big_tensordock.url)
    query = OfferQuery(
        gpus=["4090"] if "4090" in flags else [],
        min_vram_gb=40 if "vram" in flags else None,
        min_reliability=0.9,
        disk_gb=32,
    )
    nodes = {"data": {"hostnodes": [big_tensordock._public_hostnode(n) for n in
                                    big_tensordock.hostnodes.values()]}}  # fmt: skip
    truth = rank_offers(parse_hostnodes(nodes, query), sort)
    assert truth
    args = f"inventory --json --refresh --provider tensordock --min-reliability 0.9 --sort {sort} "
    result = gs(args + flags + (f" --limit {limit}" if limit else ""))
    assert result.exit_code == 0, result.stderr
    got = [o["id"] for o in result.json()]
    assert got == [o.id for o in (truth[:limit] if limit else truth)]


def test_limit_is_still_the_best_n_when_the_best_offers_are_suppressed(
    on_big_vast, gs, isolated_home
):
    from gpushopper.model.units import iso
    from gpushopper.state.paths import resolve_paths
    from gpushopper.state.store import StateStore

    truth = vast_truth(on_big_vast, {"rel": 0.95, "gpus": {"RTX 4090"}})
    ranked = rank_offers([parse_offer(row) for row in truth], "price")
    hidden = [o.id for o in ranked[:4]]
    until = iso(datetime.now(timezone.utc) + timedelta(hours=1))
    store = StateStore(resolve_paths().state_file)
    with store.transaction() as state:
        health = state.setdefault("offer_health", {})
        for offer_id in hidden:
            health[offer_id] = {"failures": 3, "suppressed_until": until}
    result = gs("inventory --json --refresh --provider vastai --gpu 4090 --limit 6")
    assert result.exit_code == 0, result.stderr
    assert [o["id"] for o in result.json()] == [o.id for o in ranked[4:10]]


@pytest.mark.parametrize("flags", ["--gpu 4090", "--auto-retry 30"])
def test_provision_picks_the_best_of_all_matches(on_big_vast, gs, flags):
    truth = vast_truth(
        on_big_vast, {"rel": 0.95, "gpus": {"RTX 4090"} if "gpu" in flags else set()}
    )
    ranked = [o.id for o in rank_offers([parse_offer(row) for row in truth], "price")]
    result = gs(f"provision --provider vastai --dry-run --hours 1h --json {flags}")
    assert result.exit_code == 0, result.stderr
    plan = result.json()
    assert [plan["offer"]["id"], *plan["alternatives"]] == ranked[: len(plan["alternatives"]) + 1]
    assert len(plan["alternatives"]) == (33 if "auto-retry" in flags else 3)
