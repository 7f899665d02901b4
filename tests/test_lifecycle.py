"""The lifecycle policy, every branch, with a fake clock and plain lists."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gpushopper.core.lifecycle import (
    DESTROY_ORPHAN,
    DESTROY_SESSION,
    MARK_ENDED,
    REPORT_FOREIGN,
    WARN,
    Policy,
    plan,
)
from gpushopper.core.models import Instance
from gpushopper.core.units import iso

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
ME = "aaaa1111"
POLICY = Policy(install_id=ME, warn_before_s=600, provision_timeout_s=900)


def session(sid="s1", status="running", created=T0, hours=2.0, hard=12.0, instance="100", **extra):
    return {
        "id": sid,
        "status": status,
        "provider": "vastai",
        "instance_id": instance,
        "label": f"gpu-shopper:{ME}:{sid}",
        "created_at": iso(created),
        "reservation_ends_at": iso(created + timedelta(hours=hours)),
        "hard_max_at": iso(created + timedelta(hours=hard)),
        "price_per_hour": 0.5,
        **extra,
    }


def inst(iid="100", label=f"gpu-shopper:{ME}:s1", status="running"):
    return Instance("vastai", iid, label, status, started_at=T0.timestamp())


def kinds(actions):
    return [(a.kind, a.reason, a.session_id) for a in actions]


def at(**delta):
    return T0 + timedelta(**delta)


def test_healthy_running_session_needs_nothing():
    assert plan({"s1": session()}, {"vastai": [inst()]}, at(minutes=30), POLICY) == []


def test_warn_before_reservation_end_once():
    actions = plan({"s1": session()}, {"vastai": [inst()]}, at(hours=1, minutes=55), POLICY)
    assert kinds(actions) == [(WARN, "reservation_ending", "s1")]
    warned = session(warned_at=iso(at(hours=1, minutes=55)))
    assert plan({"s1": warned}, {"vastai": [inst()]}, at(hours=1, minutes=56), POLICY) == []


def test_destroy_at_reservation_end():
    actions = plan({"s1": session()}, {"vastai": [inst()]}, at(hours=2), POLICY)
    assert kinds(actions) == [(DESTROY_SESSION, "reservation_ended", "s1")]
    assert actions[0].instance_id == "100"


def test_extended_session_is_left_alone():
    extended = session(hours=4)
    assert plan({"s1": extended}, {"vastai": [inst()]}, at(hours=3), POLICY) == []


def test_hard_max_beats_everything_unless_overridden():
    record = session(hours=13, hard=12)
    assert kinds(plan({"s1": record}, {"vastai": [inst()]}, at(hours=12), POLICY)) == [
        (DESTROY_SESSION, "hard_max", "s1")
    ]
    overridden = session(hours=13, hard=13)
    assert plan({"s1": overridden}, {"vastai": [inst()]}, at(hours=12, minutes=1), POLICY) == []


@pytest.mark.parametrize("status", ["creating", "provisioning", "verifying"])
def test_stuck_provisioning_destroyed_after_timeout(status):
    record = session(status=status)
    assert plan({"s1": record}, {"vastai": [inst(status="loading")]}, at(minutes=10), POLICY) == []
    actions = plan({"s1": record}, {"vastai": [inst(status="loading")]}, at(minutes=16), POLICY)
    assert kinds(actions) == [(DESTROY_SESSION, "provision_timeout", "s1")]


def test_creating_without_instance_found_by_label():
    record = session(status="creating", instance=None)
    actions = plan({"s1": record}, {"vastai": [inst()]}, at(minutes=16), POLICY)
    assert kinds(actions) == [(DESTROY_SESSION, "provision_timeout", "s1")]
    assert actions[0].instance_id == "100"


def test_instance_gone_marks_ended():
    assert kinds(plan({"s1": session()}, {"vastai": []}, at(minutes=5), POLICY)) == [
        (MARK_ENDED, "instance_gone", "s1")
    ]


def test_booting_session_not_closed_while_create_may_be_running():
    young = session(status="creating", instance=None)
    assert plan({"s1": young}, {"vastai": []}, at(minutes=1), POLICY) == []
    fresh = session(status="provisioning")
    assert plan({"s1": fresh}, {"vastai": []}, at(seconds=30), POLICY) == []
    assert kinds(plan({"s1": fresh}, {"vastai": []}, at(minutes=5), POLICY)) == [
        (MARK_ENDED, "instance_gone", "s1")
    ]
    assert kinds(plan({"s1": young}, {"vastai": []}, at(minutes=16), POLICY)) == [
        (MARK_ENDED, "instance_gone", "s1")
    ]


def test_unlisted_provider_proves_nothing():
    # vastai could not be listed this tick: absence means nothing, time rules still apply
    assert plan({"s1": session()}, {}, at(minutes=5), POLICY) == []
    assert kinds(plan({"s1": session()}, {}, at(hours=3), POLICY)) == [
        (DESTROY_SESSION, "reservation_ended", "s1")
    ]


def test_ending_session_is_retried():
    record = session(status="ending")
    assert kinds(plan({"s1": record}, {"vastai": [inst()]}, at(minutes=5), POLICY)) == [
        (DESTROY_SESSION, "ending_incomplete", "s1")
    ]


def test_orphans_unknown_and_ended():
    unknown = inst("200", f"gpu-shopper:{ME}:zz9")
    ended = session(sid="s2", status="ended", instance="300")
    leftover = inst("300", f"gpu-shopper:{ME}:s2")
    actions = plan({"s2": ended}, {"vastai": [unknown, leftover]}, at(minutes=5), POLICY)
    assert sorted((a.kind, a.reason, a.instance_id) for a in actions) == [
        (DESTROY_ORPHAN, "session_ended", "300"),
        (DESTROY_ORPHAN, "unknown_to_state", "200"),
    ]
    assert all(a.age_seconds == 300 for a in actions)


def test_foreign_reported_never_destroyed_unless_included():
    foreign = inst("400", "gpu-shopper:bbbb2222:x1")
    actions = plan({}, {"vastai": [foreign]}, at(minutes=5), POLICY)
    assert kinds(actions) == [(REPORT_FOREIGN, "foreign", "x1")]
    included = Policy(install_id=ME, include_foreign=True)
    assert [a.kind for a in plan({}, {"vastai": [foreign]}, at(minutes=5), included)] == [
        DESTROY_ORPHAN
    ]


def test_without_install_id_every_label_is_foreign():
    no_state = Policy(install_id=None)
    actions = plan({}, {"vastai": [inst("500", f"gpu-shopper:{ME}:s9")]}, at(minutes=1), no_state)
    assert [a.kind for a in actions] == [REPORT_FOREIGN]


def test_unlabelled_instances_are_never_touched():
    others = [inst("600", None), inst("601", "my-own-box"), inst("602", "gpu-shopper:broken")]
    assert plan({}, {"vastai": others}, at(minutes=1), POLICY) == []


def test_done_sessions_produce_nothing():
    record = session(status="ended", instance="100")
    assert plan({"s1": record}, {"vastai": []}, at(hours=20), POLICY) == []


def test_ended_sessions_instance_is_an_orphan_whatever_the_other_sessions_are():
    """The orphan check must look at the instance's own session, not whichever came last."""
    ended = session(sid="a1", status="ended", instance="300")
    live = session(sid="z9", instance="100")  # sorts after a1
    listed = [inst("300", f"gpu-shopper:{ME}:a1"), inst("100", f"gpu-shopper:{ME}:z9")]
    actions = plan({"a1": ended, "z9": live}, {"vastai": listed}, at(minutes=5), POLICY)
    assert [(a.kind, a.reason, a.instance_id) for a in actions] == [
        (DESTROY_ORPHAN, "session_ended", "300")
    ]


def test_a_second_instance_with_a_live_sessions_label_is_a_duplicate():
    listed = [inst("100"), inst("101")]  # both carry s1's label; s1 holds 100
    actions = plan({"s1": session()}, {"vastai": listed}, at(minutes=5), POLICY)
    assert [(a.kind, a.reason, a.instance_id) for a in actions] == [
        (DESTROY_ORPHAN, "duplicate", "101")
    ]
