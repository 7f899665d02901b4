"""The enforcer against the in-process fake provider: what it believes, what it destroys."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gpushopper.core.enforcer import Enforcer, TickReport
from gpushopper.core.lifecycle import DESTROY_ORPHAN, Action, Policy
from gpushopper.core.runtime import Runtime
from gpushopper.model.errors import MissingCredentials
from gpushopper.model.models import Instance
from gpushopper.model.units import iso
from tests.fakes.provider import FakeProvider, factory
from tests.fakes.records import T0, label, new_store, put
from tests.fakes.records import running as record


@pytest.fixture
def store(tmp_path):
    return new_store(tmp_path)


def enforcer(store, *providers, now=T0 + timedelta(minutes=5), names=None, outcomes=None):
    def provider_factory(name):
        by = {p.NAME: p for p in providers}
        if name not in by:
            raise MissingCredentials(name, "not configured in this test")
        return by[name]

    return Enforcer(
        store=store,
        provider_factory=provider_factory,
        providers=names or ["vastai", "tensordock"],
        runtime=Runtime(clock=lambda: now, sleep=lambda s: None),
        on_outcome=(outcomes.append if outcomes is not None else lambda o: None),
    )


POLICY = Policy(install_id=None)


class Exploding(FakeProvider):
    def destroy_instance(self, instance_id: str) -> None:
        if instance_id == self.bomb:
            raise RuntimeError("bug in the adapter")
        super().destroy_instance(instance_id)

    bomb: str = ""


def test_one_action_blowing_up_does_not_stop_the_others(store):
    provider = Exploding()
    a, b = provider.add(label("b00001")), provider.add(label("b00002"))
    provider.bomb = a
    outcomes: list = []
    e = enforcer(store, provider, outcomes=outcomes)
    actions = [
        Action(DESTROY_ORPHAN, "unknown_to_state", "vastai", instance_id=a, label=label("b00001")),
        Action(DESTROY_ORPHAN, "unknown_to_state", "vastai", instance_id=b, label=label("b00002")),
    ]
    results = e.execute_all(actions)
    assert [r.result for r in results] == ["failed", "destroyed"]
    assert "RuntimeError: bug in the adapter" in (results[0].error or "")
    assert provider.live() == {a}
    assert len(outcomes) == 2  # both were reported (logged, alerted)


def test_a_session_missing_from_the_list_is_closed_only_when_the_provider_says_gone(store):
    provider = FakeProvider(listing="partial", partial_drops={label("a00001")})
    iid = provider.add(label("a00001"))
    put(store, record("a00001", iid))
    report = enforcer(store, provider).tick(POLICY)
    assert not report.ok
    assert [(o.action.kind, o.result) for o in report.outcomes] == [("mark_ended", "failed")]
    assert store.get_session("a00001").status == "running"
    provider.instances[iid].destroyed = True  # now it really is gone
    report = enforcer(store, provider).tick(POLICY)
    assert report.ok and store.get_session("a00001").status == "ended"


def test_a_malformed_listing_closes_nothing_and_the_pass_is_not_ok(store):
    provider = FakeProvider(listing="malformed")
    iid = provider.add(label("a00001"))
    provider.add(label("b00009"))  # an orphan: not destroyed on a listing that failed
    put(store, record("a00001", iid))
    report = enforcer(store, provider).tick(POLICY)
    assert not report.ok and "vastai" in report.provider_errors
    assert report.outcomes == [] and provider.count("destroy_instance") == 0
    assert store.get_session("a00001").status == "running"


def test_one_provider_failing_to_list_never_holds_back_the_others_deadlines(store):
    broken = FakeProvider("vastai", listing="malformed")
    healthy = FakeProvider("tensordock")
    v = broken.add(label("a00001"))
    t = healthy.add(label("a00002"))
    put(store, record("a00001", v), record("a00002", t, provider="tensordock"))
    late = T0 + timedelta(hours=3)  # both reservations are over
    report = enforcer(store, broken, healthy, now=late).tick(POLICY)
    assert not report.ok and list(report.provider_errors) == ["vastai"]
    assert healthy.live() == set()
    assert store.get_session("a00002").status == "ended"
    # the time rules need no listing: the expired vastai session is destroyed too
    assert broken.live() == set() and store.get_session("a00001").end_reason == (
        "reservation_ended"
    )
    assert report.listed_at.keys() == {"tensordock"}


class BuggyLister(FakeProvider):
    def list_instances(self) -> list[Instance]:
        raise KeyError("id")  # an adapter bug on a malformed answer, not a GpuShopperError


def test_one_provider_whose_listing_blows_up_never_holds_back_the_others_deadlines(store):
    broken = BuggyLister("vastai")
    healthy = FakeProvider("tensordock")
    v = broken.add(label("a00001"))
    t = healthy.add(label("a00002"))
    orphan = broken.add(label("b00009"))
    put(store, record("a00001", v), record("a00002", t, provider="tensordock"))
    report = enforcer(store, broken, healthy, now=T0 + timedelta(hours=3)).tick(POLICY)
    assert not report.ok and report.provider_errors == {"vastai": "KeyError: 'id'"}
    assert healthy.live() == set() and store.get_session("a00002").status == "ended"
    # the expired session is still destroyed by its record; the unlisted orphan is not touched
    assert broken.live() == {orphan}
    assert store.get_session("a00001").end_reason == "reservation_ended"


def test_a_destroy_the_state_cannot_record_is_unrecorded_and_the_pass_not_ok(store, monkeypatch):
    from gpushopper.model.errors import StateWriteError

    provider = FakeProvider()
    iid = provider.add(label("a00001"))
    put(store, record("a00001", iid))

    def full(*args, **kwargs):
        raise StateWriteError("cannot write state file: No space left on device")

    monkeypatch.setattr(store, "update_session", full)
    monkeypatch.setattr(store, "transaction", full)
    report = enforcer(store, provider, now=T0 + timedelta(hours=3)).tick(POLICY)
    assert provider.live() == set()  # the full disk never stood in the destroy's way
    assert [(o.action.kind, o.result) for o in report.outcomes] == [
        ("destroy_session", "unrecorded")
    ]
    assert not report.ok


def test_instances_of_another_install_are_never_reaped(store):
    provider = FakeProvider()
    foreign = provider.add(label("c00001", install="bbbb2222"))
    ours = provider.add(label("c00002"))
    for _ in range(3):
        report = enforcer(store, provider).tick(POLICY)
    assert provider.live() == {foreign}
    assert ours not in provider.live()
    assert ("report_foreign", "left") in [(o.action.kind, o.result) for o in report.outcomes]


@pytest.mark.parametrize("real_label", ["someone-elses-job", None])
def test_an_orphan_is_destroyed_only_if_it_still_carries_our_label(store, real_label):
    # None: an unlabelled instance (no session's create made it) is not ours either
    provider = FakeProvider()
    foreign = provider.add(real_label)
    # the listing claims the foreign id carries our label (a provider glitch)
    provider.duplicates = [Instance("vastai", foreign, label("c00003"), "running")]
    provider.instances[foreign].unlisted_for = 5  # only the lying row is listed
    report = enforcer(store, provider).tick(POLICY)
    assert provider.live() == {foreign}
    (outcome,) = report.outcomes
    assert outcome.result == "failed" and "not ours" in (outcome.error or "")


def test_a_listing_naming_one_id_with_two_labels_is_not_believed(store):
    provider = FakeProvider()
    foreign = provider.add("someone-elses-job")
    provider.duplicates = [Instance("vastai", foreign, label("c00004"), "running")]
    report = enforcer(store, provider).tick(POLICY)
    assert not report.ok and "twice" in report.provider_errors["vastai"]
    assert provider.live() == {foreign} and report.outcomes == []


def test_live_sessions_at_a_provider_without_credentials_make_the_pass_blind(store):
    provider = FakeProvider("vastai")
    put(store, record("a00001", "55", provider="tensordock"))
    report = enforcer(store, provider).tick(POLICY)
    assert not report.ok
    assert "tensordock" in report.provider_errors


def test_bad_records_are_reported_and_the_pass_is_not_ok(store):
    provider = FakeProvider()
    iid = provider.add(label("a00001"))
    put(store, record("a00001", iid, reservation_ends_at=iso(T0)))
    with store.transaction() as state:
        state["sessions"]["b00001"] = "a string"
    report = TickReport()
    actions = enforcer(store, provider).evaluate(POLICY, report)
    assert report.bad_records == {"b00001": "is str, not a session object"}
    assert [(a.kind, a.session_id) for a in actions] == [
        ("report_bad_record", "b00001"),
        ("destroy_session", "a00001"),
    ]
    assert not report.ok


def test_a_booting_session_of_a_dead_process_is_destroyed(store):
    import subprocess
    import sys

    from gpushopper.core.owner import current_owner

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    owner = {**current_owner(), "pid": child.pid, "started": "1"}
    provider = FakeProvider()
    iid = provider.add(label("a00001"), status="loading")
    put(store, record("a00001", iid, status="provisioning", owner=owner))
    report = enforcer(store, provider).tick(POLICY)
    assert [(o.action.reason, o.result) for o in report.outcomes] == [("owner_gone", "destroyed")]
    assert provider.live() == set()


def test_a_booting_session_of_a_live_process_is_left_to_it(store):
    from gpushopper.core.owner import current_owner

    provider = FakeProvider()
    iid = provider.add(label("a00001"), status="loading")
    put(store, record("a00001", iid, status="provisioning", owner=current_owner()))
    report = enforcer(store, provider).tick(POLICY)
    assert report.outcomes == [] and provider.live() == {iid}


def test_factory_helper_serves_by_name():
    a, b = FakeProvider("vastai"), FakeProvider("tensordock")
    get = factory(a, b)
    assert get("vastai") is a and get("tensordock") is b


def test_a_session_that_changed_since_the_plan_is_not_closed(store):
    # planned on instance 901 (gone); meanwhile its boot recorded instance 902, which runs:
    # the provider said only that 901 is gone, so the session is left to its boot
    provider = FakeProvider()
    put(store, record("a00001", "901", status="provisioning"))
    live = "902"

    def boot_moves_on(instance_id: str) -> None:
        provider.add(label("a00001"), iid=live)
        store.update_session("a00001", instance_id=live)

    provider.on_get = boot_moves_on
    report = enforcer(store, provider).tick(POLICY)
    assert [o.result for o in report.outcomes] == ["left"]
    assert store.get_session("a00001").status == "provisioning"
    assert provider.live() == {live}


def test_a_booting_session_whose_instance_is_gone_is_closed_failed_keeping_its_reason(store):
    """Gone at the provider while booting: the boot failed (never 'ended', which would
    count it a finished rental), and a reason already recorded is kept; a running one ends."""
    provider = FakeProvider()
    booting = record("a00001", "901", status="provisioning", end_reason="boot failed: exited")
    put(store, booting, record("a00002", "902"))
    report = enforcer(store, provider).tick(POLICY)
    assert sorted((o.action.session_id, o.result) for o in report.outcomes) == [
        ("a00001", "marked_ended"),
        ("a00002", "marked_ended"),
    ]
    failed, ended = store.get_session("a00001"), store.get_session("a00002")
    assert failed.status == "failed" and failed.end_reason == "boot failed: exited"
    assert ended.status == "ended" and ended.end_reason == "instance gone at the provider"
