"""costs: per-session accrual by the second, filters, monthly summary and budget."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gpushopper.core.costs import month_cost
from gpushopper.model.session import Session
from gpushopper.model.units import iso
from gpushopper.state.store import StateStore

T0 = datetime(2026, 10, 31, 23, 0, tzinfo=timezone.utc)


def record(
    sid, provider="vastai", consumer="alice", price=1.2, start=T0, hours=2.0, status="ended"
):
    return {
        "id": sid,
        "status": status,
        "provider": provider,
        "consumer": consumer,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
        "price_per_hour": price,
        "created_at": iso(start - timedelta(minutes=1)),
        "billing_started_at": iso(start),
        "ended_at": iso(start + timedelta(hours=hours)) if status == "ended" else None,
        "cost_usd": price * hours if status == "ended" else 0.0,
    }


@pytest.fixture
def seeded(isolated_home):
    with StateStore(isolated_home / "state.json").transaction() as state:
        state["sessions"]["a1"] = record("a1")
        state["sessions"]["b2"] = record(
            "b2", provider="tensordock", consumer="bob", price=0.5, hours=0.01
        )
    return isolated_home


def test_costs_per_session_and_total(gs, seeded):
    data = gs("costs --json").json()
    assert data["total_usd"] == pytest.approx(2.4 + 0.005)
    by_id = {r["session_id"]: r for r in data["sessions"]}
    assert by_id["b2"]["cost_usd"] == pytest.approx(0.005)  # 36 seconds, not rounded to an hour
    assert by_id["a1"]["billed_hours"] == pytest.approx(2.0)


def test_costs_filters(gs, seeded):
    assert [r["session_id"] for r in gs("costs --consumer bob --json").json()["sessions"]] == ["b2"]
    assert [r["session_id"] for r in gs("costs --provider vastai --json").json()["sessions"]] == [
        "a1"
    ]
    assert gs("costs --since 2026-12-01 --json").json()["sessions"] == []
    assert gs("costs --since yesterday").exit_code == 2
    assert gs("costs --session nope").exit_code == 2


def test_summary_splits_across_months_and_shows_budget(gs, seeded, monkeypatch):
    monkeypatch.setenv("GPU_SHOPPER_SAFETY_MONTHLY_BUDGET_USD", "10")
    october = gs("costs summary --month 2026-10 --json").json()
    november = gs("costs summary --month 2026-11 --json").json()
    assert october["total_usd"] == pytest.approx(1.2 + 0.005)  # the first hour of a1 was in October
    assert november["total_usd"] == pytest.approx(1.2)
    assert november["by_consumer"] == {"alice": pytest.approx(1.2)}
    assert november["budget_used"] == pytest.approx(0.12)
    assert gs("costs summary --month 2026-13").exit_code == 2


def test_month_cost_of_a_live_session_runs_to_now():
    live = record("c3", status="running")
    assert month_cost(
        Session.from_record(live), T0, T0 + timedelta(days=1), T0 + timedelta(minutes=30)
    ) == pytest.approx(0.6)
