"""The rental rules, in core, on a fixed clock: hard maximum, extend, dry run, budget, month."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gpushopper.core import rules
from gpushopper.core.costs import budget_warning, month_summary
from gpushopper.model.errors import UsageError
from gpushopper.model.session import Session
from gpushopper.model.units import iso

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=timezone.utc)
H = 3600.0


def test_hours_past_the_hard_maximum_are_refused_unless_overridden():
    rules.check_hours(12 * H, 12 * H, override=False)  # exactly the maximum is allowed
    with pytest.raises(UsageError, match="past the 12h hard maximum; add --override"):
        rules.check_hours(12 * H + 1, 12 * H, override=False)
    rules.check_hours(13 * H, 12 * H, override=True)


def test_reservation_and_hard_maximum():
    assert rules.reservation_end(NOW, 13 * H, 12 * H, False) == NOW + timedelta(hours=12)
    assert rules.reservation_end(NOW, 13 * H, 12 * H, True) == NOW + timedelta(hours=13)
    assert rules.hard_max_at(NOW, 13 * H, 12 * H, False) == NOW + timedelta(hours=12)
    assert rules.hard_max_at(NOW, 13 * H, 12 * H, True) == NOW + timedelta(hours=13)


def test_a_new_session_records_an_override_only_when_it_moved_the_hard_maximum():
    assert rules.overrides_at_creation(NOW, 13 * H, 12 * H, True) == [
        {"at": iso(NOW), "hard_max_at": iso(NOW + timedelta(hours=13)), "via": "provision"}
    ]
    assert rules.overrides_at_creation(NOW, 12 * H, 12 * H, True) == []  # exactly: not moved
    assert rules.overrides_at_creation(NOW, 13 * H, 12 * H, False) == []
    assert rules.hard_max_at(NOW, 2 * H, 12 * H, True) == NOW + timedelta(hours=12)


def record(**over):
    base = {
        "id": "a1b2c3",
        "status": "running",
        "reservation_ends_at": iso(NOW + timedelta(hours=1)),
        "hard_max_at": iso(NOW + timedelta(hours=3)),
    }
    return {**base, **over}


def test_extend_up_to_the_hard_maximum():
    ext = rules.extend("a1b2c3", record(), 2 * H, NOW, 12, override=False)
    assert ext.changes == {"reservation_ends_at": iso(NOW + timedelta(hours=3))}
    assert ext.moved_hard_max_to is None


def test_extend_counts_from_now_when_the_reservation_has_passed():
    ext = rules.extend(
        "a1b2c3", record(reservation_ends_at=iso(NOW - timedelta(hours=5))), H, NOW, 12, False
    )
    assert ext.changes["reservation_ends_at"] == iso(NOW + timedelta(hours=1))


def test_extend_past_the_hard_maximum_is_refused_then_recorded_with_override():
    with pytest.raises(UsageError, match="past the hard maximum .* \\(12h from creation\\)"):
        rules.extend("a1b2c3", record(), 2 * H + 1, NOW, 12, override=False)
    ext = rules.extend("a1b2c3", record(overrides=[{"via": "provision"}]), 3 * H, NOW, 12, True)
    assert ext.moved_hard_max_to == iso(NOW + timedelta(hours=4))
    assert ext.changes["hard_max_at"] == ext.moved_hard_max_to
    assert ext.changes["overrides"][-1] == {
        "at": iso(NOW),
        "hard_max_at": ext.moved_hard_max_to,
        "via": "extend",
    }
    assert len(ext.changes["overrides"]) == 2


@pytest.mark.parametrize("status", ["ended", "failed"])
def test_only_live_sessions_are_extended(status):
    with pytest.raises(UsageError, match=f"session a1b2c3 is {status}"):
        rules.extend("a1b2c3", record(status=status), H, NOW, 12, override=True)


def test_dry_run_plan():
    plan = rules.dry_run_plan(
        {"id": "vastai:1"},
        0.5,
        now=NOW,
        hours_s=3 * H,
        hard_max_s=12 * H,
        override=False,
        template=None,
        image="img",
        alternatives=["vastai:2"],
    )
    assert plan["projected_cost_usd"] == 1.5 and plan["hours"] == 3.0
    assert plan["reservation_ends_at"] == iso(NOW + timedelta(hours=3))
    assert plan["hard_max_at"] == iso(NOW + timedelta(hours=12))


def spent(provider, consumer, hours, price=1.0, start=NOW - timedelta(hours=10)):
    return Session.from_record(
        {
            "id": "a00001",
            "status": "ended",
            "provider": provider,
            "consumer": consumer,
            "price_per_hour": price,
            "billing_started_at": iso(start),
            "ended_at": iso(start + timedelta(hours=hours)),
        }
    )


def test_month_summary_counts_only_the_month():
    records = [
        spent("vastai", "alice", 2),
        spent("tensordock", None, 1, price=2.0),
        spent("vastai", "bob", 48, start=datetime(2026, 10, 31, 0, 0, tzinfo=timezone.utc)),
    ]
    out = month_summary(records, "2026-11", NOW, 10.0).to_json()
    assert out["by_provider"] == {"tensordock": 2.0, "vastai": 26.0}
    assert out["by_consumer"] == {"-": 2.0, "alice": 2.0, "bob": 24.0}
    assert out["total_usd"] == 28.0 and out["budget_used"] == 2.8
    assert month_summary(records, "2026-10", NOW, None).to_json()["total_usd"] == 24.0


def test_budget_warning_only_when_the_rental_passes_it():
    records = [spent("vastai", None, 8)]
    assert budget_warning(records, 2.0, NOW, 10.0) is None  # exactly the budget is fine
    assert "would pass the $10.00 budget" in budget_warning(records, 2.01, NOW, 10.0)
    assert budget_warning(records, 1e6, NOW, None) is None
