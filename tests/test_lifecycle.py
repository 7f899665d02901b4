"""The lifecycle policy, every branch, with a fake clock and plain lists."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gpushopper.core.lifecycle import (
    DESTROY_ORPHAN,
    DESTROY_SESSION,
    MARK_ENDED,
    REPORT_BAD_RECORD,
    REPORT_FOREIGN,
    REPORT_MALFORMED,
    WARN,
    Policy,
)
from gpushopper.core.lifecycle import plan as _plan
from gpushopper.model.models import Instance
from gpushopper.model.session import SessionRecords
from gpushopper.model.units import iso

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
ME = "aaaa1111"
POLICY = Policy(install_id=ME, warn_before_s=600, provision_timeout_s=900)


def plan(records, *args, **kwargs):
    """The policy over records as the store hands them out (valid typed, damaged apart)."""
    return _plan(SessionRecords.split(records), *args, **kwargs)


def session(
    sid="a00001", status="running", created=T0, hours=2.0, hard=12.0, instance="100", **extra
):
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


def inst(iid="100", label=f"gpu-shopper:{ME}:a00001", status="running"):
    return Instance("vastai", iid, label, status, started_at=T0.timestamp())


def kinds(actions):
    return [(a.kind, a.reason, a.session_id) for a in actions]


def at(**delta):
    return T0 + timedelta(**delta)


def test_healthy_running_session_needs_nothing():
    assert plan({"a00001": session()}, {"vastai": [inst()]}, at(minutes=30), POLICY) == []


def test_warn_before_reservation_end_once():
    actions = plan({"a00001": session()}, {"vastai": [inst()]}, at(hours=1, minutes=55), POLICY)
    assert kinds(actions) == [(WARN, "reservation_ending", "a00001")]
    warned = session(warned_at=iso(at(hours=1, minutes=55)))
    assert plan({"a00001": warned}, {"vastai": [inst()]}, at(hours=1, minutes=56), POLICY) == []


def test_destroy_at_reservation_end():
    actions = plan({"a00001": session()}, {"vastai": [inst()]}, at(hours=2), POLICY)
    assert kinds(actions) == [(DESTROY_SESSION, "reservation_ended", "a00001")]
    assert actions[0].instance_id == "100"


def test_extended_session_is_left_alone():
    extended = session(hours=4)
    assert plan({"a00001": extended}, {"vastai": [inst()]}, at(hours=3), POLICY) == []


def test_hard_max_beats_everything_unless_overridden():
    record = session(hours=13, hard=12)
    assert kinds(plan({"a00001": record}, {"vastai": [inst()]}, at(hours=12), POLICY)) == [
        (DESTROY_SESSION, "hard_max", "a00001")
    ]
    overridden = session(hours=13, hard=13)
    assert plan({"a00001": overridden}, {"vastai": [inst()]}, at(hours=12, minutes=1), POLICY) == []


@pytest.mark.parametrize("status", ["creating", "provisioning", "verifying"])
def test_stuck_provisioning_destroyed_after_timeout(status):
    record = session(status=status)
    assert (
        plan({"a00001": record}, {"vastai": [inst(status="loading")]}, at(minutes=10), POLICY) == []
    )
    actions = plan({"a00001": record}, {"vastai": [inst(status="loading")]}, at(minutes=16), POLICY)
    assert kinds(actions) == [(DESTROY_SESSION, "provision_timeout", "a00001")]


def test_a_longer_boot_timeout_chosen_at_provision_is_waited_out():
    # A measured (or --timeout) boot timeout of 25m: watch must not kill the boot at 16m.
    record = session(status="provisioning", boot_timeout_s=1500.0)
    listed = {"vastai": [inst(status="loading")]}
    assert plan({"a00001": record}, listed, at(minutes=16), POLICY) == []
    actions = plan({"a00001": record}, listed, at(minutes=26), POLICY)
    assert kinds(actions) == [(DESTROY_SESSION, "provision_timeout", "a00001")]
    # a shorter one never makes watch quicker than its own policy, nor does garbage count
    for odd in (60.0, "25m", None, True, float("nan")):
        record = session(status="provisioning", boot_timeout_s=odd)
        assert plan({"a00001": record}, listed, at(minutes=14), POLICY) == []
        assert plan({"a00001": record}, listed, at(minutes=16), POLICY) != []
    # nor can a huge one switch the sweep off: past the hard maximum it is stuck, even
    # for a record without hard_max_at (the hard-max rule itself cannot fire there)
    for huge in (1e12, float("inf")):
        record = session(status="provisioning", boot_timeout_s=huge)
        del record["hard_max_at"]
        assert plan({"a00001": record}, listed, at(hours=11, minutes=59), POLICY) == []
        actions = plan({"a00001": record}, listed, at(hours=12, minutes=1), POLICY)
        assert kinds(actions) == [(DESTROY_SESSION, "provision_timeout", "a00001")]
        young = session(status="creating", instance=None, boot_timeout_s=huge)
        assert kinds(plan({"a00001": young}, {"vastai": []}, at(hours=12, minutes=1), POLICY)) == [
            (MARK_ENDED, "instance_gone", "a00001")
        ]


def test_creating_without_instance_found_by_label():
    record = session(status="creating", instance=None)
    actions = plan({"a00001": record}, {"vastai": [inst()]}, at(minutes=16), POLICY)
    assert kinds(actions) == [(DESTROY_SESSION, "provision_timeout", "a00001")]
    assert actions[0].instance_id == "100"


def test_instance_gone_marks_ended():
    assert kinds(plan({"a00001": session()}, {"vastai": []}, at(minutes=5), POLICY)) == [
        (MARK_ENDED, "instance_gone", "a00001")
    ]


def test_booting_session_not_closed_while_create_may_be_running():
    young = session(status="creating", instance=None)
    assert plan({"a00001": young}, {"vastai": []}, at(minutes=1), POLICY) == []
    fresh = session(status="provisioning")
    assert plan({"a00001": fresh}, {"vastai": []}, at(seconds=30), POLICY) == []
    assert kinds(plan({"a00001": fresh}, {"vastai": []}, at(minutes=5), POLICY)) == [
        (MARK_ENDED, "instance_gone", "a00001")
    ]
    assert kinds(plan({"a00001": young}, {"vastai": []}, at(minutes=16), POLICY)) == [
        (MARK_ENDED, "instance_gone", "a00001")
    ]


def test_unlisted_provider_proves_nothing():
    # vastai could not be listed this tick: absence means nothing, time rules still apply
    assert plan({"a00001": session()}, {}, at(minutes=5), POLICY) == []
    assert kinds(plan({"a00001": session()}, {}, at(hours=3), POLICY)) == [
        (DESTROY_SESSION, "reservation_ended", "a00001")
    ]


def test_ending_session_is_retried():
    record = session(status="ending")
    assert kinds(plan({"a00001": record}, {"vastai": [inst()]}, at(minutes=5), POLICY)) == [
        (DESTROY_SESSION, "ending_incomplete", "a00001")
    ]


def test_orphans_unknown_and_ended():
    unknown = inst("200", f"gpu-shopper:{ME}:ffff09")
    ended = session(sid="a00002", status="ended", instance="300")
    leftover = inst("300", f"gpu-shopper:{ME}:a00002")
    actions = plan({"a00002": ended}, {"vastai": [unknown, leftover]}, at(minutes=5), POLICY)
    assert sorted((a.kind, a.reason, a.instance_id) for a in actions) == [
        (DESTROY_ORPHAN, "session_ended", "300"),
        (DESTROY_ORPHAN, "unknown_to_state", "200"),
    ]
    assert all(a.age_seconds == 300 for a in actions)


def test_foreign_reported_never_destroyed_unless_included():
    foreign = inst("400", "gpu-shopper:bbbb2222:0000b1")
    actions = plan({}, {"vastai": [foreign]}, at(minutes=5), POLICY)
    assert kinds(actions) == [(REPORT_FOREIGN, "foreign", "0000b1")]
    included = Policy(install_id=ME, include_foreign=True)
    assert [a.kind for a in plan({}, {"vastai": [foreign]}, at(minutes=5), included)] == [
        DESTROY_ORPHAN
    ]


def test_without_install_id_every_label_is_foreign():
    no_state = Policy(install_id=None)
    actions = plan(
        {}, {"vastai": [inst("500", f"gpu-shopper:{ME}:000009")]}, at(minutes=1), no_state
    )
    assert [a.kind for a in actions] == [REPORT_FOREIGN]


def test_unlabelled_instances_are_never_touched():
    others = [inst("600", None), inst("601", "my-own-box"), inst("603", "gpu-shopper-ish")]
    assert plan({}, {"vastai": others}, at(minutes=1), POLICY) == []


def test_done_sessions_produce_nothing():
    record = session(status="ended", instance="100")
    assert plan({"a00001": record}, {"vastai": []}, at(hours=20), POLICY) == []


def test_ended_sessions_instance_is_an_orphan_whatever_the_other_sessions_are():
    """The orphan check must look at the instance's own session, not whichever came last."""
    ended = session(sid="a0000a", status="ended", instance="300")
    live = session(sid="ffff99", instance="100")  # sorts after a0000a
    listed = [inst("300", f"gpu-shopper:{ME}:a0000a"), inst("100", f"gpu-shopper:{ME}:ffff99")]
    actions = plan({"a0000a": ended, "ffff99": live}, {"vastai": listed}, at(minutes=5), POLICY)
    assert [(a.kind, a.reason, a.instance_id) for a in actions] == [
        (DESTROY_ORPHAN, "session_ended", "300")
    ]


def test_a_second_instance_with_a_live_sessions_label_is_a_duplicate():
    listed = [inst("100"), inst("101")]  # both carry a00001's label; a00001 holds 100
    actions = plan({"a00001": session()}, {"vastai": listed}, at(minutes=5), POLICY)
    assert [(a.kind, a.reason, a.instance_id) for a in actions] == [
        (DESTROY_ORPHAN, "duplicate", "101")
    ]


# -- labels are ours only in our exact shape ------------------------------------------------
@pytest.mark.parametrize(
    "label",
    [
        f"gpu-shopper:{ME}:$(touch x)",
        f"gpu-shopper:{ME}:a0001",  # one digit short
        f"gpu-shopper:{ME}:A00001",  # our ids are lowercase
        f"gpu-shopper:{ME}:a00001:extra",
        f"gpu-shopper:{ME}:a00001 ",
        "gpu-shopper:broken",
        f"gpu-shopper:{ME[:-1]}:a00001",
    ],
)
def test_a_gpu_shopper_label_not_of_our_shape_is_reported_never_destroyed(label):
    odd = inst("700", label)
    for policy in (POLICY, Policy(install_id=ME, include_foreign=True), Policy(install_id=None)):
        actions = plan({}, {"vastai": [odd]}, at(minutes=1), policy)
        assert [(a.kind, a.reason) for a in actions] == [(REPORT_MALFORMED, "malformed_label")]


def test_parse_label_takes_only_our_exact_shape():
    from gpushopper.model.session import make_label, parse_label

    assert parse_label(make_label(ME, "0a1b2c")) == (ME, "0a1b2c")
    assert parse_label(f"gpu-shopper:{ME}:$(rm -rf ~)") is None
    assert parse_label(None) is None and parse_label(42) is None  # type: ignore[arg-type]


def test_a_listing_repeating_an_id_acts_once_per_real_id():
    twice = [inst("800", f"gpu-shopper:{ME}:b00001"), inst("800", f"gpu-shopper:{ME}:b00001")]
    actions = plan({}, {"vastai": twice}, at(minutes=1), POLICY)
    assert [(a.kind, a.instance_id) for a in actions] == [(DESTROY_ORPHAN, "800")]


# -- the owner check ----------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["creating", "provisioning", "verifying"])
def test_a_booting_session_whose_owner_is_gone_is_destroyed_at_once(status):
    record = session(status=status)
    listed = {"vastai": [inst(status="loading")]}
    assert plan({"a00001": record}, listed, at(minutes=1), POLICY) == []
    actions = plan({"a00001": record}, listed, at(minutes=1), POLICY, gone_owners={"a00001"})
    assert kinds(actions) == [(DESTROY_SESSION, "owner_gone", "a00001")]


def test_a_running_session_is_not_judged_by_its_owner():
    assert (
        plan({"a00001": session()}, {"vastai": [inst()]}, at(minutes=1), POLICY, {"a00001"}) == []
    )


# -- one bad record never stops a pass ---------------------------------------------------------
@pytest.mark.parametrize(
    "bad, why",
    [
        ("a string", "not a session object"),
        (None, "null"),
        ({**session(sid="b00001"), "created_at": "yesterday"}, "created_at 'yesterday'"),
        ({**session(sid="b00001"), "status": "weird"}, "unknown status"),
        ({**session(sid="b00001"), "price_per_hour": "cheap"}, "price_per_hour"),
    ],
    ids=["string", "null", "bad-time", "bad-status", "bad-price"],
)
def test_a_bad_record_is_reported_skipped_and_the_rest_enforced(bad, why):
    expired = session(sid="a00001", hours=1)
    held = inst("900", f"gpu-shopper:{ME}:b00001")  # the broken record's instance: left alone
    listed = {"vastai": [inst(), held]}
    actions = plan({"a00001": expired, "b00001": bad}, listed, at(hours=2), POLICY)
    assert kinds(actions) == [
        (REPORT_BAD_RECORD, "bad_record", "b00001"),
        (DESTROY_SESSION, "reservation_ended", "a00001"),
    ]
    assert why in actions[0].detail
