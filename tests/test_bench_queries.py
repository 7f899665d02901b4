"""`benchmark list/show/best/cheapest/compare/recommendations` over stored results, and
`--live` re-pricing over the emulators' real HTTP."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from gpushopper.core.bench.queries import estimate_offers
from gpushopper.model.models import Offer
from gpushopper.state.benchstore import ROW_KEYS, BenchStore, ResultTable, result_row
from tests.bench_helpers import result, submit


def test_cheapest_names_the_cheaper_offer_and_list_holds_both_with_cost(gs, tmp_path):
    ids = submit(
        gs,
        tmp_path,
        [
            result(100.0, gpu="A100 SXM4", price=1.20, offer_id="vastai:9"),
            result(100.0, gpu="RTX 4090", price=0.40, offer_id="vastai:7"),
        ],
    )
    rows = gs("benchmark cheapest --workload mm --json").json()
    assert rows[0]["gpu_name"] == "RTX 4090" and rows[0]["price_per_hour"] == 0.40
    assert rows[0]["offer_id"] == "vastai:7"
    assert rows[0]["cost_per_unit"] == pytest.approx(0.004)
    assert rows[1]["cost_per_unit"] == pytest.approx(0.012)
    table = gs("benchmark cheapest --workload mm")
    assert table.exit_code == 0
    assert table.stdout.index("RTX 4090") < table.stdout.index("A100 SXM4")
    listed = gs("benchmark list --json").json()
    assert {r["id"] for r in listed} == set(ids)
    assert sorted(r["cost_per_unit"] for r in listed) == pytest.approx([0.004, 0.012])


def test_a_dear_fast_gpu_beats_a_cheap_slow_one_per_unit_of_work(gs, tmp_path):
    submit(
        gs,
        tmp_path,
        [
            result(10.0, gpu="RTX 3090", price=0.20),  # 0.02 $/h per TFLOPS
            result(1000.0, gpu="H100 SXM", price=2.00),  # 0.002 $/h per TFLOPS
        ],
    )
    rows = gs("benchmark cheapest --workload mm --json").json()
    assert [r["gpu_name"] for r in rows] == ["H100 SXM", "RTX 3090"]
    assert [r["cost_per_unit"] for r in rows] == pytest.approx([0.002, 0.02])
    recs = gs("benchmark recommendations --workload mm --json").json()
    assert [r["gpu_name"] for r in recs] == ["H100 SXM", "RTX 3090"]


def test_lower_is_better_costs_price_times_value(gs, tmp_path):
    # seconds per step: 2 s at 1 $/h (2) beats 1 s at 3 $/h (3), though it is slower
    submit(
        gs,
        tmp_path,
        [
            result(2.0, gpu="RTX 4090", price=1.0, higher=False),
            result(1.0, gpu="H100 SXM", price=3.0, higher=False),
        ],
    )
    cheap = gs("benchmark cheapest --workload mm --json").json()
    assert [r["gpu_name"] for r in cheap] == ["RTX 4090", "H100 SXM"]
    assert [r["cost_per_unit"] for r in cheap] == pytest.approx([2.0, 3.0])  # not price / value
    fast = gs("benchmark best --workload mm --json").json()
    assert [r["gpu_name"] for r in fast] == ["H100 SXM", "RTX 4090"]


def test_invalid_results_are_listed_but_never_ranked(gs, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per result to look into
    submit(
        gs,
        tmp_path,
        [
            result(100.0, gpu="RTX 4090", price=0.4),
            result(900.0, gpu="RTX 3090", price=0.1, valid=False, invalid_reasons=["gpu mismatch"]),
        ],
    )
    listed = gs("benchmark list")
    assert "no" in listed.stdout.split("RTX 3090")[1].split("\n")[0]
    out = gs("benchmark cheapest --workload mm --json")
    assert [r["gpu_name"] for r in out.json()] == ["RTX 4090"]
    assert "1 invalid results left out" in out.stderr
    assert gs("benchmark best --workload mm --json").json()[0]["gpu_name"] == "RTX 4090"
    assert [r["gpu_name"] for r in gs("benchmark compare --workload mm --json").json()] == [
        "RTX 4090"
    ]


def test_results_without_a_price_rank_last_in_cheapest(gs, tmp_path):
    submit(gs, tmp_path, [result(500.0, gpu="H100 SXM", price=None), result(1.0, price=2.0)])
    rows = gs("benchmark cheapest --workload mm --json").json()
    assert [r["gpu_name"] for r in rows] == ["RTX 4090", "H100 SXM"]
    assert rows[1]["cost_per_unit"] is None


def test_compare_gives_ratios_to_the_best(gs, tmp_path):
    submit(
        gs,
        tmp_path,
        [
            result(200.0, gpu="H100 SXM", price=2.0),
            result(100.0, gpu="RTX 4090", price=0.5),
            result(120.0, gpu="RTX 4090", price=0.5),
            result(80.0, gpu="RTX 4090", price=0.5),
        ],
    )
    rows = {r["gpu_name"]: r for r in gs("benchmark compare --workload mm --json").json()}
    assert rows["H100 SXM"]["perf_ratio"] == 1.0
    assert rows["RTX 4090"]["perf_ratio"] == 0.5  # median 100 of 200
    assert rows["RTX 4090"]["cost_ratio"] == 1.0  # 0.005 per unit, the lowest
    assert rows["H100 SXM"]["cost_ratio"] == 2.0  # 0.01 per unit
    assert gs("benchmark compare --workload mm").exit_code == 0


def test_recommendations_group_by_model_and_count(gs, tmp_path):
    submit(
        gs,
        tmp_path,
        [
            result(100.0, gpu="RTX 4090", price=0.4, extra_metrics={"peak_vram_mb": 9000}),
            result(110.0, gpu="rtx_4090", price=0.5, extra_metrics={"peak_vram_mb": 12000}),
            result(90.0, gpu="RTX 4090", price=0.6),
            result(190.0, gpu="RTX 4090", price=1.2, count=2),
        ],
    )
    rows = gs("benchmark recommendations --workload mm --json").json()
    assert [(r["gpu_name"], r["gpu_count"], r["n"]) for r in rows] == [
        ("RTX 4090", 1, 3),
        ("RTX 4090", 2, 1),
    ]
    one = rows[0]
    assert one["median_value"] == 100.0 and one["median_price_per_hour"] == 0.5
    assert one["cost_per_unit"] == pytest.approx(0.005)
    assert one["peak_vram_mb"] == 12000 and one["live_cost_per_unit"] is None
    assert gs("benchmark recommendations --workload mm").exit_code == 0


def test_bare_workload_name_means_its_newest_version(gs, tmp_path):
    submit(
        gs,
        tmp_path,
        [result(1.0, workload="mm2@1", gpu="RTX 3090"), result(2.0, workload="mm2@2")],
    )
    assert [r["gpu_name"] for r in gs("benchmark best --workload mm2 --json").json()] == [
        "RTX 4090"
    ]
    exact = gs("benchmark best --workload mm2@1 --json").json()
    assert [r["gpu_name"] for r in exact] == ["RTX 3090"]
    assert len(gs("benchmark list --workload mm2 --json").json()) == 1


def test_list_filters(gs, tmp_path):
    submit(
        gs,
        tmp_path,
        [
            result(1.0, gpu="RTX 4090", provider="vastai"),
            result(2.0, gpu="RTX 3090", provider="tensordock"),
            result(3.0, gpu="RTX 4090", provider="tensordock", workload="other"),
        ],
    )
    assert len(gs("benchmark list --gpu 4090 --json").json()) == 2
    assert len(gs("benchmark list --provider tensordock --json").json()) == 2
    assert len(gs("benchmark list --workload other --gpu 4090 --json").json()) == 1
    assert gs("benchmark list --provider nope").exit_code == 2


def test_table_is_capped_and_says_so(gs, tmp_path):
    submit(gs, tmp_path, [result(float(i + 1)) for i in range(5)])
    out = gs("benchmark list --limit 2")
    assert out.exit_code == 0 and "2 of 5 results shown" in out.stderr
    assert len(gs("benchmark list --json").json()) == 5


def test_unknown_workload_is_a_clear_usage_error(gs):
    out = gs("benchmark cheapest --workload nothing --json")
    assert out.exit_code == 2
    assert "no stored results for workload 'nothing'" in out.json()["error"]["message"]


def test_show_result_and_run_by_prefix(gs, tmp_path, isolated_home):
    (rid,) = submit(gs, tmp_path, result(5.0))
    store = BenchStore(isolated_home / "benchmarks.json")
    run = {
        "id": "b-abc123",
        "workload": "mm",
        "status": "completed",
        "budget": {"max": 5.0, "spent": 0.1, "committed": 0.0},
        "args": ["--workload", "mm"],
        "entries": [{"key": "RTX 4090/vastai", "status": "succeeded", "result_id": rid}],
    }
    store.put("runs", "b-abc123", run)
    shown = gs(f"benchmark show {rid} --json")
    assert shown.json()["id"] == rid and shown.json()["cost_per_unit"] == pytest.approx(0.1)
    prefix = gs(f"benchmark show {rid[:5]} --json")
    assert prefix.json()["id"] == rid
    assert gs("benchmark show b-abc --json").json()["status"] == "completed"
    table = gs("benchmark show b-abc123")
    assert table.exit_code == 0 and "RTX 4090/vastai" in table.stdout
    assert gs(f"benchmark show {rid}").exit_code == 0
    assert gs("benchmark show r-zzz").exit_code == 2
    store.put("results", rid[:-1] + ("0" if rid[-1] != "0" else "1"), {"id": "twin"})
    ambiguous = gs(f"benchmark show {rid[:-1]}")
    assert ambiguous.exit_code == 2 and "matches 2" in ambiguous.stderr


# -- --live: the cheapest current offer of each GPU, over the emulator's HTTP -------------------
def test_live_reprices_with_the_cheapest_current_offer(gs, vast, tmp_path):
    inventory = gs("inventory --provider vastai --json").json()
    cheapest_4090 = min(
        (o for o in inventory if o["gpu_name"] == "RTX 4090" and o["num_gpus"] == 1),
        key=lambda o: o["price_per_hour"],
    )
    submit(
        gs,
        tmp_path,
        [
            result(100.0, gpu="RTX 4090", price=0.90, provider="vastai"),
            result(100.0, gpu="GTX 1080", price=0.05, provider="vastai"),  # nobody rents one now
        ],
    )
    rows = gs("benchmark cheapest --workload mm --live --json").json()
    assert rows[0]["gpu_name"] == "RTX 4090"  # live price first, though dearer when measured
    assert rows[0]["live_offer_id"] == cheapest_4090["id"]
    assert rows[0]["live_price_per_hour"] == cheapest_4090["price_per_hour"]
    assert rows[0]["live_cost_per_unit"] == pytest.approx(cheapest_4090["price_per_hour"] / 100)
    assert rows[1]["gpu_name"] == "GTX 1080" and rows[1]["live_cost_per_unit"] is None
    recs = gs("benchmark recommendations --workload mm --live --json").json()
    assert recs[0]["live_offer_id"] == cheapest_4090["id"]
    table = gs("benchmark compare --workload mm --live")
    assert table.exit_code == 0 and "RTX 4090" in table.stdout


def test_live_without_credentials_is_a_clear_error(gs, tmp_path):
    submit(gs, tmp_path, result(1.0))
    out = gs("benchmark best --workload mm --live")
    assert out.exit_code == 2 and "no provider has credentials" in out.stderr


# -- the estimate behind `inventory --sort perf-per-dollar --workload` ---------------------------
NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


def stored_result(value, *, gpu, provider="vastai", machine=None, created="2026-11-30T00:00:00Z"):
    """A result's flat row, as BenchStore.rows() gives it."""
    record = {
        "workload": "mm",
        "workload_name": "mm",
        "workload_version": None,
        "metric": "tflops",
        "value": value,
        "unit": "TFLOPS",
        "higher_is_better": True,
        "offer": {"provider": provider, "machine_id": machine, "gpu_name": gpu},
        "valid": True,
        "created_at": created,
    }
    return dict(zip(ROW_KEYS, result_row(f"r-{value:06.0f}", record), strict=True))


def test_estimate_prefers_machine_then_gpu_provider_then_gpu_model():
    records = [
        stored_result(300, gpu="RTX 4090", machine="m1"),
        stored_result(100, gpu="RTX 4090", machine="m2"),
        stored_result(50, gpu="RTX 4090", machine="m3", created="2026-10-01T00:00:00Z"),
        stored_result(400, gpu="H100 SXM", provider="tensordock"),
    ]
    offers = [
        Offer("vastai:1", "vastai", "RTX 4090", 1, price_per_hour=0.3, machine_id="m1"),
        Offer("vastai:2", "vastai", "RTX_4090", 1, price_per_hour=0.3, machine_id="m3"),
        Offer("vastai:3", "vastai", "H100 SXM", 1, price_per_hour=2.0, machine_id="m9"),
        Offer("vastai:4", "vastai", "RTX 3090", 1, price_per_hour=0.1, machine_id="m8"),
    ]
    assert estimate_offers(offers, ResultTable.of_rows(records), "mm", NOW) == 3
    by_id = {o.id: o for o in offers}
    assert (by_id["vastai:1"].perf_source, by_id["vastai:1"].perf_estimate) == ("machine", 300)
    # m3's result is 61 days old: not the machine's, but still counted for the model
    assert (by_id["vastai:2"].perf_source, by_id["vastai:2"].perf_estimate) == ("gpu_provider", 100)
    assert (by_id["vastai:3"].perf_source, by_id["vastai:3"].perf_estimate) == ("gpu_model", 400)
    assert by_id["vastai:4"].perf_source is None and by_id["vastai:4"].perf_per_dollar is None
    assert by_id["vastai:1"].cost_per_unit == pytest.approx(0.001)
    assert by_id["vastai:1"].perf_per_dollar == pytest.approx(1000)


@pytest.mark.parametrize(
    "argv",
    [
        ["benchmark", "list", "--json"],
        ["benchmark", "cheapest", "--workload", "mm", "--json"],
        ["benchmark", "best", "--workload", "mm", "--json"],
        ["benchmark", "schedule", "list", "--json"],
        ["benchmark", "list"],
        ["benchmark", "cheapest", "--workload", "mm"],
        ["benchmark", "compare", "--workload", "mm", "--json"],
        ["benchmark", "recommendations", "--workload", "mm", "--json"],
        ["benchmark", "recommendations", "--workload", "mm"],
    ],
)
def test_queries_tables_and_groupings_load_no_heavy_module(gs, tmp_path, argv):
    """Off a terminal a table is plain text (no rich), and grouping by GPU model needs
    only gpushopper.model.gpus (not the offer dataclasses)."""
    import subprocess
    import sys

    submit(gs, tmp_path, [result(1.0), result(2.0, gpu="A100")])
    heavy = ("requests", "rich", "paramiko", "gpushopper.model.models", "gpushopper.providers")
    code = (
        "import sys; from gpushopper.cli import cli; "
        f"from gpushopper.cli.output import run; code = run(cli, {argv!r}); "
        f"print('LOADED:' + ','.join(m for m in {heavy!r} if m in sys.modules) + f' {{code}}')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "LOADED: 0", out.stderr
