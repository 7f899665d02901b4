"""``gpu-shopper benchmark run|status|cancel`` end to end: the Vast.ai emulator, a real
sshd, real remote processes (the fake instance is this machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpushopper.state.benchstore import BenchStore
from gpushopper.state.store import StateStore
from tests.test_run import _kill_job_groups, _log_has, _when

RESULT = '{"metric": "steps_per_s", "value": 12.5, "unit": "steps/s", "higher_is_better": true}'
WRITE = f"printf '%s' '{RESULT}' > \"$GPU_SHOPPER_RESULT\""


def bench(home: Path) -> BenchStore:
    return BenchStore(home / "benchmarks.json")


def state(home: Path) -> dict:
    return StateStore(home / "state.json").read()


def bench_run(gs, *args: str, budget: str = "5", extra: tuple[str, ...] = ()):
    argv = ["benchmark", "run", *args, "--max-budget", budget, "--yes", "--json", *extra]
    return gs(argv)


def two_offers(vast, **second):
    vast.offers.clear()
    cheap = vast.add_offer(gpu_name="RTX 4090", dph_base=0.20)
    dear = vast.add_offer(gpu_name="RTX 4090", dph_base=0.40, **second)
    return cheap, dear


def test_custom_workload_on_two_offers_stores_both_with_their_cost(
    gs, vast, isolated_home
):
    cheap, dear = two_offers(vast)
    result = bench_run(
        gs,
        "--workload",
        "my-step",
        "--command",
        WRITE,
        "--offer",
        f"vastai:{cheap['id']}",
        "--offer",
        f"vastai:{dear['id']}",
        "--provider",
        "vastai",
    )
    assert result.exit_code == 0, result.stderr
    run = result.json()
    assert run["status"] == "completed"
    assert [e["status"] for e in run["entries"]] == ["succeeded", "succeeded"]
    results = bench(isolated_home).results()
    assert len(results) == 2
    by_offer = {r["offer"]["offer_id"]: r for r in results.values()}
    for offer, price in ((cheap, 0.20), (dear, 0.40)):
        found = by_offer[f"vastai:{offer['id']}"]
        assert found["value"] == 12.5 and found["metric"] == "steps_per_s"
        assert found["workload"] == "my-step" and found["workload_version"] is None
        assert found["valid"] is True, found["invalid_reasons"]
        assert found["cost_usd"] > 0
        assert found["offer"]["price_per_hour"] == pytest.approx(price, rel=0.2)
        assert found["cost_per_unit"] == pytest.approx(
            found["offer"]["price_per_hour"] / 12.5
        )
        assert found["hardware"]["gpu_name"] == "NVIDIA GeForce RTX 4090"
        assert found["hardware"]["vram_mb"] == 24564 and found["hardware"]["gpu_count"] == 1
        assert found["hardware"]["driver"] and found["hardware"]["cuda"]
        assert found["run_id"] == run["id"] and found["source"] == "run"
    spent = sum(a["cost_usd"] for e in run["entries"] for a in e["attempts"])
    assert run["budget"]["spent"] == pytest.approx(spent)
    assert vast.live_instances() == []
    jobs = state(isolated_home)["jobs"]
    assert len(jobs) == 2 and all(j["teardown"]["confirmed"] for j in jobs.values())
