"""`inventory/provision/run --sort perf-per-dollar --workload NAME` over the Vast.ai
emulator's real HTTP: measured cost per unit of work orders the offers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.bench_helpers import result, submit


def offers(gs, args: str) -> list[dict]:
    out = gs(f"inventory --provider vastai --json {args}")
    assert out.exit_code == 0, out.stderr
    return out.json()


@pytest.fixture
def measured(gs, vast, tmp_path):
    """Results for three of the seeded offers: one machine measured, a GPU model on this
    provider, a GPU model measured only on another provider."""
    market = offers(gs, "")
    by_gpu = {}
    for o in market:
        by_gpu.setdefault((o["gpu_name"], o["num_gpus"]), []).append(o)
    dear_4090 = max(by_gpu[("RTX 4090", 1)], key=lambda o: o["price_per_hour"])
    submit(
        gs,
        tmp_path,
        [
            result(400.0, gpu="RTX 4090", provider="vastai", machine=dear_4090["machine_id"]),
            result(60.0, gpu="RTX 3090", provider="vastai", machine="elsewhere"),
            result(40.0, gpu="RTX 3090", provider="vastai", machine="elsewhere2"),
            result(5000.0, gpu="H100 SXM", provider="tensordock"),
            result(9999.0, gpu="RTX A6000", valid=False, invalid_reasons=["gpu mismatch"]),
        ],
    )
    return market, dear_4090


def test_measured_offers_come_first_by_cost_per_unit(gs, measured):
    market, dear_4090 = measured
    ranked = offers(gs, "--sort perf-per-dollar --workload mm")
    assert {o["id"] for o in ranked} == {o["id"] for o in market}  # every offer, reordered
    sources = [o["perf_source"] for o in ranked]
    known = [o for o in ranked if o["perf_source"] is not None]
    assert sources[: len(known)] == [o["perf_source"] for o in known]  # estimated ones first
    costs = [o["cost_per_unit"] for o in known]
    assert costs == sorted(costs)
    for o in known:
        assert o["cost_per_unit"] == pytest.approx(o["price_per_hour"] / o["perf_estimate"])
        assert o["perf_per_dollar"] == pytest.approx(1 / o["cost_per_unit"])
    by_id = {o["id"]: o for o in ranked}
    assert by_id[dear_4090["id"]]["perf_source"] == "machine"
    assert by_id[dear_4090["id"]]["perf_estimate"] == 400.0
    other_4090 = [o for o in ranked if o["gpu_name"] == "RTX 4090" and o["id"] != dear_4090["id"]]
    assert {o["perf_source"] for o in other_4090} == {"gpu_provider"}
    for o in (o for o in ranked if o["gpu_name"] == "RTX 3090"):
        assert (o["perf_source"], o["perf_estimate"]) == ("gpu_provider", 50.0)  # the median
    (h100,) = [o for o in ranked if o["gpu_name"] == "H100 SXM"]
    assert (h100["perf_source"], h100["perf_estimate"]) == ("gpu_model", 5000.0)
    (a6000,) = [o for o in ranked if o["gpu_name"] == "RTX A6000"]
    assert a6000["perf_source"] is None and a6000["perf_per_dollar"] is None  # invalid: unused
    assert ranked[0]["gpu_name"] == "H100 SXM"  # 2.35 $/h for 5000 beats every 4090 and 3090


def test_limit_cuts_after_the_measured_ranking(gs, measured):
    full = offers(gs, "--sort perf-per-dollar --workload mm")
    top = offers(gs, "--sort perf-per-dollar --workload mm --limit 2")
    assert [o["id"] for o in top] == [o["id"] for o in full[:2]]


def test_workload_alone_implies_the_sort_and_the_table_shows_the_estimate(
    gs, measured, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "200")  # 13 columns: one line per offer to look into
    ranked = offers(gs, "--workload mm")
    assert ranked[0]["gpu_name"] == "H100 SXM"
    table = gs("inventory --provider vastai --workload mm")
    assert table.exit_code == 0 and "gpu_model" in table.stdout and "PERF" in table.stdout


def test_without_workload_dlperf_stays_the_default(gs, measured):
    plain = offers(gs, "--sort perf-per-dollar")
    assert all(o["perf_source"] is None and o["cost_per_unit"] is None for o in plain)
    known = [o["perf_per_dollar"] for o in plain if o["perf_per_dollar"] is not None]
    assert known == sorted(known, reverse=True)


def test_workload_with_another_sort_is_refused(gs, vast):
    out = gs("inventory --provider vastai --sort price --workload mm")
    assert out.exit_code == 2 and "--sort perf-per-dollar" in out.stderr


def test_a_workload_nobody_measured_keeps_price_order_with_a_note(gs, vast):
    out = gs("inventory --provider vastai --workload nothing --json")
    assert out.exit_code == 0
    prices = [o["price_per_hour"] for o in out.json()]
    assert prices == sorted(prices) and all(not math.isnan(p) for p in prices)
    assert "no valid benchmark result of workload 'nothing'" in out.stderr


def test_plain_inventory_never_opens_the_benchmark_file(gs, vast, isolated_home: Path):
    (isolated_home / "benchmarks.json").write_text("{damaged")
    assert gs("inventory --provider vastai --json").exit_code == 0
    assert gs("inventory --provider vastai --sort perf-per-dollar --json").exit_code == 0
    plan = gs("provision --provider vastai --gpu 4090 --dry-run --json")  # its search too
    assert plan.exit_code == 0, plan.stderr
    out = gs("inventory --provider vastai --workload mm --json")
    assert out.exit_code == 1 and "benchmark file" in out.json()["error"]["message"]


def test_provision_dry_run_picks_the_best_measured_offer(gs, measured):
    plan = gs("provision --provider vastai --sort perf-per-dollar --workload mm --dry-run --json")
    assert plan.exit_code == 0, plan.stderr
    assert plan.json()["offer"]["gpu_name"] == "H100 SXM"
    assert plan.json()["offer"]["perf_source"] == "gpu_model"


def test_run_accepts_the_same_flags(gs, measured):
    out = gs("run --help")
    assert "--workload" in out.stdout
    bad = gs("run --provider vastai --sort vram --workload mm --yes -- true")
    assert bad.exit_code == 2 and "--sort perf-per-dollar" in bad.stderr
