"""What cleanup-orphans decides (core/cleanup.py), on a fixed clock against the in-process
fake provider: what a sweep destroys, lists and leaves, what it warns about, its exit code
(0 all clear, 3 left running, 1 blind: never "all clear" when something went unseen)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gpushopper.core.cleanup import ALL_CLEAR, BLIND, LEFT_RUNNING, orphan_json, sweep
from gpushopper.core.enforcer import Enforcer, Outcome
from gpushopper.core.lifecycle import DESTROY_ORPHAN, Action, Policy
from gpushopper.core.runtime import Runtime
from gpushopper.model.errors import MissingCredentials, NoProviderConfigured
from gpushopper.state.store import StateStore
from tests.fakes.provider import FakeProvider
from tests.fakes.records import T0, label, new_store, put
from tests.fakes.records import running as record

NOW = T0 + timedelta(minutes=5)
POLICY = Policy(install_id=None)


@pytest.fixture
def store(tmp_path):
    return new_store(tmp_path)


def enforcer(store, *providers, names=("vastai",)):
    def provider_factory(name):
        by = {p.NAME: p for p in providers}
        if name not in by:
            raise MissingCredentials(name, "not configured in this test")
        return by[name]

    return Enforcer(
        store=store,
        provider_factory=provider_factory,
        providers=list(names),
        runtime=Runtime(clock=lambda: NOW, sleep=lambda s: None),
    )


def test_without_destroy_an_orphan_is_listed_left_and_exits_3(store):
    provider = FakeProvider()
    orphan = provider.add(label("b00001"))
    done = sweep(enforcer(store, provider), POLICY, destroy=False)
    assert provider.live() == {orphan}
    assert [(r["instance_id"], r["reason"], r["action"]) for r in done.rows] == [
        (orphan, "unknown_to_state", "left")
    ]
    assert not done.blind and done.exit_code == LEFT_RUNNING
    assert "--yes" in done.left_hint()


def test_with_destroy_an_orphan_of_ours_is_destroyed_and_all_is_clear(store):
    provider = FakeProvider()
    orphan = provider.add(label("b00001"))
    done = sweep(enforcer(store, provider), POLICY, destroy=True)
    assert provider.live() == set()
    assert [r["action"] for r in done.rows] == ["destroyed"]
    assert done.exit_code == ALL_CLEAR and done.warnings() == []
    assert orphan not in provider.live()


def test_another_installs_instance_is_never_destroyed_and_never_all_clear(store):
    provider = FakeProvider()
    foreign = provider.add(label("c00001", install="bbbb2222"))
    done = sweep(enforcer(store, provider), POLICY, destroy=True)
    assert provider.live() == {foreign}
    assert [(r["reason"], r["action"]) for r in done.rows] == [("foreign", "left")]
    assert done.exit_code == LEFT_RUNNING
    assert "--include-foreign" in done.left_hint()


def test_include_foreign_destroys_another_installs_instance(store):
    provider = FakeProvider()
    provider.add(label("c00001", install="bbbb2222"))
    policy = Policy(install_id=None, include_foreign=True)
    done = sweep(enforcer(store, provider), policy, destroy=True)
    assert provider.live() == set() and done.exit_code == ALL_CLEAR


def test_a_malformed_label_is_listed_never_destroyed(store):
    provider = FakeProvider()
    odd = provider.add("gpu-shopper:not-our-shape")
    done = sweep(enforcer(store, provider), POLICY, destroy=True)
    assert provider.live() == {odd}
    assert [(r["reason"], r["action"]) for r in done.rows] == [("malformed_label", "left")]
    assert done.exit_code == LEFT_RUNNING


def test_a_provider_that_cannot_be_listed_makes_the_sweep_blind(store):
    provider = FakeProvider(listing="malformed")
    put(store, record("a00001", "55"))  # not listed: it may still run
    done = sweep(enforcer(store, provider), POLICY, destroy=True)
    assert done.rows == [] and done.blind and done.exit_code == BLIND
    assert any(line.startswith("vastai: ") for line in done.warnings())
    # an unlisted session is not concluded gone: still running in the state
    assert store.sessions()["a00001"].status == "running"


def test_a_failed_destroy_is_warned_about_and_the_sweep_is_blind(store):
    provider = FakeProvider(destroy_failures=99)
    orphan = provider.add(label("b00001"))
    done = sweep(enforcer(store, provider), POLICY, destroy=True)
    assert provider.live() == {orphan}
    assert [r["action"] for r in done.rows] == ["destroy_failed"]
    assert done.exit_code == BLIND
    assert [line.split(":")[0] for line in done.warnings()] == [
        "vastai b00001"
    ]  # the session id the label names


def test_a_broken_record_is_warned_about_and_its_instance_left(store):
    provider = FakeProvider()
    held = provider.add(label("b00001"))
    with store.transaction() as state:
        state["sessions"]["b00001"] = "a string"
    done = sweep(enforcer(store, provider), POLICY, destroy=True)
    assert provider.live() == {held}
    assert done.exit_code == BLIND
    assert done.warnings() == ["session b00001 skipped: it is str, not a session object"]


@pytest.mark.parametrize("destroy", [False, True])
def test_a_session_whose_instance_is_gone_is_closed_only_with_destroy(store, destroy):
    provider = FakeProvider()
    put(store, record("a00001", "55"))  # the provider lists no such instance
    done = sweep(enforcer(store, provider), POLICY, destroy=destroy)
    assert done.rows == [] and done.exit_code == ALL_CLEAR
    status = store.sessions()["a00001"].status
    assert status == ("ended" if destroy else "running")


def test_without_a_state_file_every_label_counts_as_foreign(tmp_path):
    provider = FakeProvider()
    mine = provider.add(label("b00001"))
    bare = StateStore(tmp_path / "none" / "state.json")
    done = sweep(enforcer(bare, provider), POLICY, destroy=True)
    assert done.no_state and provider.live() == {mine}
    assert [r["reason"] for r in done.rows] == ["foreign"]


def test_no_configured_provider_is_an_error_not_all_clear(store):
    with pytest.raises(NoProviderConfigured):
        sweep(enforcer(store, names=()), POLICY, destroy=True)


def test_a_row_names_each_outcome_as_the_contract_does():
    action = Action(
        DESTROY_ORPHAN, "unknown_to_state", "vastai", instance_id="7", age_seconds=61.26
    )
    names = {
        result: orphan_json(Outcome(action, result))["action"]
        for result in ("destroyed", "left", "failed", "unrecorded")
    }
    assert names == {
        "destroyed": "destroyed",
        "left": "left",
        "failed": "destroy_failed",
        "unrecorded": "destroyed_unrecorded",
    }
    row = orphan_json(Outcome(action, "failed", error="HTTP 503"))
    assert row["age_seconds"] == 61.3 and row["detail"] == "HTTP 503"
