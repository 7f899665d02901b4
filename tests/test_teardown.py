"""The one destroy path (core/teardown.py) against the in-process fake provider, on a fake
clock: instances that linger, destroys that keep failing, listings that lag, ids that are
not ours, a state file that cannot be written."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gpushopper.core import teardown
from gpushopper.core.runtime import Runtime
from gpushopper.model.errors import NotOurs, ProviderError, StateWriteError, Unavailable
from gpushopper.model.units import iso
from gpushopper.state.store import StateStore
from tests.conftest import FakeTime
from tests.fakes.provider import FOREVER, FakeProvider, factory

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
LABEL = "gpu-shopper:aaaa1111:a00001"


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


def destroy(provider, iid, clock, **kw):
    return teardown.destroy_and_confirm(provider, iid, runtime=clock_runtime(clock), **kw)


def clock_runtime(clock, sleep=None, log=lambda message: None):
    return Runtime(sleep=sleep or clock.sleep, mono=clock.mono, log=log)


# -- destroy_and_confirm ----------------------------------------------------------------------
def test_returns_only_once_the_provider_says_gone(clock):
    provider = FakeProvider(linger=3)
    iid = provider.add(LABEL)
    assert destroy(provider, iid, clock) is True
    assert provider.get_instance(iid) is None  # not merely asked to go: gone
    assert provider.count("get_instance") >= 4 + 1  # it polled through the lingering
    assert clock.slept > 0


def test_an_instance_that_never_goes_is_an_error_not_a_success(clock):
    provider = FakeProvider(linger=FOREVER)
    iid = provider.add(LABEL)
    with pytest.raises(ProviderError, match="still exists after destroy"):
        destroy(provider, iid, clock)
    assert provider.count("destroy_instance") == 2  # asked again half-way
    assert teardown.DESTROY_CONFIRM_S <= clock.slept < teardown.DESTROY_CONFIRM_S + 15


def test_a_destroy_failing_twice_is_retried(clock):
    provider = FakeProvider(destroy_failures=2)
    iid = provider.add(LABEL)
    assert destroy(provider, iid, clock) is True
    assert provider.live() == set() and provider.count("destroy_instance") == 3


def test_a_destroy_that_keeps_failing_is_raised(clock):
    provider = FakeProvider(destroy_failures=FOREVER)
    iid = provider.add(LABEL)
    with pytest.raises(Unavailable):
        destroy(provider, iid, clock)
    assert provider.live() == {iid}


def test_an_instance_with_another_label_is_never_destroyed(clock):
    provider = FakeProvider()
    iid = provider.add("someone-elses-job")
    with pytest.raises(NotOurs, match="not ours"):
        destroy(provider, iid, clock, label=LABEL)
    with pytest.raises(NotOurs):
        destroy(provider, iid, clock, label=LABEL, allow_unlabelled=True)
    assert provider.count("destroy_instance") == 0


def test_an_unlabelled_instance_is_ours_only_when_we_created_it(clock):
    provider = FakeProvider()
    iid = provider.add(None)
    with pytest.raises(NotOurs):  # known only from a listing: the label is the only proof
        destroy(provider, iid, clock, label=LABEL)
    assert destroy(provider, iid, clock, label=LABEL, allow_unlabelled=True) is True


def test_gone_already_destroys_nothing(clock):
    provider = FakeProvider()
    assert destroy(provider, "999", clock, label=LABEL) is False
    assert provider.count("destroy_instance") == 0


# -- the label lookup -------------------------------------------------------------------------
def test_the_label_lookup_waits_for_a_lagging_list(clock):
    provider = FakeProvider(list_lag=3)
    iid = provider.add(LABEL)
    provider.instances[iid].unlisted_for = 3
    found = teardown.wait_for_label(provider, LABEL, runtime=clock_runtime(clock))
    assert found is not None and found.instance_id == iid
    assert provider.count("list_instances") == 4


def test_the_label_lookup_gives_up_after_its_timeout(clock):
    provider = FakeProvider()
    found = teardown.wait_for_label(provider, LABEL, runtime=clock_runtime(clock), timeout_s=10)
    assert found is None and 10 <= clock.slept < 11


def test_the_label_lookup_rides_out_listing_errors(clock):
    provider = FakeProvider(listing="malformed")
    iid = provider.add(LABEL)
    logged: list[str] = []

    def heal(seconds: float) -> None:
        clock.sleep(seconds)
        provider.listing = "ok"

    found = teardown.wait_for_label(
        provider, LABEL, runtime=clock_runtime(clock, sleep=heal, log=logged.append)
    )
    assert found is not None and found.instance_id == iid
    assert "Looking the instance up by label failed" in logged[0]


def test_find_by_label_takes_the_lowest_id_of_duplicates():
    provider = FakeProvider()
    provider.add(LABEL, iid="120")
    provider.add(LABEL, iid="110")
    found = teardown.find_by_label(provider, LABEL)
    assert found is not None and found.instance_id == "110"


# -- end_session --------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    return StateStore(tmp_path / "state.json")


def put_session(store, instance_id, status="running", label=LABEL):
    with store.transaction() as state:
        state["sessions"]["a00001"] = {
            "id": "a00001",
            "status": status,
            "provider": "vastai",
            "instance_id": instance_id,
            "label": label,
            "created_at": iso(T0),
            "billing_started_at": iso(T0),
            "reservation_ends_at": iso(T0 + timedelta(hours=2)),
            "hard_max_at": iso(T0 + timedelta(hours=12)),
            "price_per_hour": 1.0,
        }


def end(store, provider, clock, log=lambda message: None, **kw):
    return teardown.end_session(
        store,
        factory(provider),
        "a00001",
        "done",
        runtime=Runtime(
            clock=lambda: T0 + timedelta(hours=1), sleep=clock.sleep, mono=clock.mono, log=log
        ),
        **kw,
    )


def test_end_session_marks_ended_only_after_the_destroy_is_confirmed(store, clock):
    provider = FakeProvider(linger=2)
    iid = provider.add(LABEL)
    put_session(store, iid)
    logged: list[str] = []
    record = end(store, provider, clock, log=logged.append)
    assert provider.live() == set()
    assert record.status == "ended" and record.cost_usd == pytest.approx(1.0)
    # The runtime's log says so, after the fact ('sessions done' prints it).
    assert logged == [
        f"Session a00001: vastai instance {iid} destroyed (the provider confirms it is gone)"
    ]


def test_end_session_never_swallows_a_failed_destroy(store, clock):
    provider = FakeProvider(destroy_failures=FOREVER)
    iid = provider.add(LABEL)
    put_session(store, iid)
    with pytest.raises(Unavailable):
        end(store, provider, clock)
    record = store.get_session("a00001")
    assert record.status == "ending"  # watch and cleanup-orphans retry it
    assert "destroy failed" in record.rest["error"]
    assert provider.live() == {iid}


def test_end_session_never_marks_a_lingering_instance_ended(store, clock):
    provider = FakeProvider(linger=FOREVER)
    iid = provider.add(LABEL)
    put_session(store, iid)
    with pytest.raises(ProviderError):
        end(store, provider, clock)
    assert store.get_session("a00001").status == "ending"


def test_end_session_leaves_a_foreign_id_on_record_alone_and_destroys_ours(store, clock):
    provider = FakeProvider()
    foreign = provider.add("someone-elses-job")
    ours = provider.add(LABEL)
    put_session(store, foreign)
    record = end(store, provider, clock, log=lambda message: None)
    assert provider.live() == {foreign}
    assert ours not in provider.live()
    assert record.status == "ended"


def test_end_session_destroys_the_unlabelled_instance_its_own_create_recorded(store, clock):
    provider = FakeProvider()
    iid = provider.add(None)  # a provider that dropped the label: the id came from our create
    put_session(store, iid)
    assert end(store, provider, clock).status == "ended"
    assert provider.live() == set()


def test_end_session_past_a_foreign_id_destroys_only_what_carries_the_label(store, clock):
    from gpushopper.model.models import Instance

    provider = FakeProvider()
    foreign = provider.add("someone-elses-job")
    unlabelled = provider.add(None)
    # the listing claims the unlabelled one carries our label; fetched, it carries none
    provider.duplicates = [Instance("vastai", unlabelled, LABEL, "running")]
    provider.instances[unlabelled].unlisted_for = 5
    put_session(store, foreign)
    with pytest.raises(NotOurs):
        end(store, provider, clock, log=lambda message: None)
    assert provider.live() == {foreign, unlabelled}
    assert store.get_session("a00001").status == "ending"


def test_end_session_finds_the_instance_by_label_when_none_was_recorded(store, clock):
    provider = FakeProvider()
    iid = provider.add(LABEL)
    put_session(store, None, status="creating")
    record = end(store, provider, clock)
    assert provider.live() == set() and record.instance_id == iid


def test_a_state_file_that_cannot_be_written_never_stops_the_destroy(store, clock, monkeypatch):
    provider = FakeProvider()
    iid = provider.add(LABEL)
    put_session(store, iid)
    notes: list[tuple[str, dict]] = []
    provider.note = lambda op, **fields: notes.append((op, fields))  # type: ignore[attr-defined]

    def full(*args, **kwargs):
        raise StateWriteError("cannot write state file: No space left on device")

    monkeypatch.setattr(store, "update_session", full)
    monkeypatch.setattr(store, "transaction", full)
    logged: list[str] = []
    with pytest.raises(StateWriteError, match="destroyed .*confirms it is gone.* No space"):
        end(store, provider, clock, log=logged.append)
    assert provider.live() == set()
    assert notes and notes[0][0] == "state_write_failed" and notes[0][1]["instance_id"] == iid


def test_end_session_ends_a_record_without_an_id_of_its_own_under_its_key(store, clock):
    """A record whose own ``id`` is missing is still the session its key names: its
    instance is destroyed and the record ended there (a failed step would leave it running
    and every watch pass failing on it)."""
    provider = FakeProvider()
    iid = provider.add(LABEL)
    put_session(store, iid)
    with store.transaction() as state:
        del state["sessions"]["a00001"]["id"]
    ended = end(store, provider, clock)
    assert provider.live() == set()
    assert ended.id == "a00001" and ended.status == "ended"
    on_disk = store.read()["sessions"]
    assert set(on_disk) == {"a00001"} and on_disk["a00001"]["status"] == "ended"
    assert "id" not in on_disk["a00001"]


def test_a_destroy_retried_to_success_clears_the_error_the_failed_one_recorded(store, clock):
    """A session left ``ending`` with "destroy failed" (watch retries it) is ended without
    that error once the destroy is confirmed: a failed or ended session that still carries
    one reads as a destroy not confirmed (benchmark runs exit 3 on it)."""
    provider = FakeProvider(destroy_failures=FOREVER)
    iid = provider.add(LABEL)
    put_session(store, iid)
    with pytest.raises(Unavailable):
        end(store, provider, clock)
    assert "destroy failed" in store.get_session("a00001").rest["error"]
    provider.destroy_failures = 0
    ended = end(store, provider, clock)
    assert ended.status == "ended" and "error" not in ended.rest
    assert "error" not in store.read()["sessions"]["a00001"]
    assert provider.live() == set()


def test_a_failed_session_ended_later_keeps_the_reason_and_time_it_failed(store, clock):
    """A boot that failed with its destroy not confirmed (``failed``, with an error) is
    finished by a later destroy: it stays failed, with the reason and end time it failed."""
    provider = FakeProvider()
    iid = provider.add(LABEL)
    put_session(store, iid, status="failed")
    failed_at = T0 + timedelta(minutes=5)
    store.update_session(
        "a00001", end_reason="boot failed: exited", ended_at=failed_at, error="destroy failed"
    )
    closed = end(store, provider, clock)
    assert provider.live() == set()
    assert closed.status == "failed" and closed.end_reason == "boot failed: exited"
    assert closed.ended_at == failed_at and "error" not in closed.rest


def test_a_record_damaged_during_the_destroy_is_left_as_it_is_and_the_destroy_said(store, clock):
    """Hand-edited while its instance was being destroyed: the destroy stands, the damaged
    record is never rewritten (nor typed, which would crash after the destroy), and the
    error and the journal say what was destroyed and what is wrong with the record."""
    provider = FakeProvider()
    iid = provider.add(LABEL)
    put_session(store, iid)
    notes: list[tuple[str, dict]] = []
    provider.note = lambda op, **fields: notes.append((op, fields))  # type: ignore[attr-defined]
    real_destroy = provider.destroy_instance

    def destroy_while_edited(instance_id: str) -> None:
        real_destroy(instance_id)
        with store.transaction() as state:
            state["sessions"]["a00001"]["status"] = "zombie"

    provider.destroy_instance = destroy_while_edited  # type: ignore[method-assign]
    with pytest.raises(StateWriteError, match="destroyed .* has an unknown status 'zombie'"):
        end(store, provider, clock)
    assert provider.live() == set()
    record = store.read()["sessions"]["a00001"]
    assert record["status"] == "zombie" and "ended_at" not in record  # left as it was
    assert notes and notes[0][0] == "state_write_failed" and notes[0][1]["instance_id"] == iid


def test_get_session_or_fail_names_a_broken_record(store):
    from gpushopper.model.errors import StateError

    with store.transaction() as state:
        state["sessions"]["a00001"] = "a string"
    with pytest.raises(StateError, match="a00001 .*not a session object"):
        teardown.get_session_or_fail(store, "a00001")


# -- end_session's steps, in their order, on the runtime's clocks -----------------------------
def test_end_session_writes_its_steps_in_order_and_times_the_destroy_on_the_runtime(
    store, clock, monkeypatch
):
    """ending first (before any destroy call), then the instance found by label, then ended
    with its cost and the destroy-to-gone time measured on the runtime's monotonic clock."""
    provider = FakeProvider(linger=2)
    iid = provider.add(LABEL)
    put_session(store, None, status="creating")
    steps: list[tuple[str, object]] = []
    real_update = store.update_session

    def update(session_id, **changes):
        steps.append(("update", changes, list(provider.calls)))
        return real_update(session_id, **changes)

    monkeypatch.setattr(store, "update_session", update)
    started = clock.mono()
    logged: list[str] = []
    ended = end(store, provider, clock, log=logged.append)
    assert [s[1] for s in steps] == [
        {"status": "ending", "end_reason": "done"},
        {"instance_id": iid},
    ]
    assert not any(c[0] == "destroy_instance" for c in steps[0][2])  # ending before the destroy
    assert ended.status == "ended" and ended.end_reason == "done"
    assert ended.ended_at == T0 + timedelta(hours=1)  # the runtime's wall clock
    assert ended.timings["destroy_to_gone_s"] == pytest.approx(clock.mono() - started)
    assert ended.timings["destroy_to_gone_s"] > 0  # lingering: it polled on the fake clock
    assert logged == [
        f"Session a00001: vastai instance {iid} destroyed (the provider confirms it is gone)"
    ]
    assert store.get_session("a00001") == ended


def test_end_session_returns_an_ended_session_untouched(store, clock):
    provider = FakeProvider()
    put_session(store, None, status="ended")
    before = store.path.read_bytes()
    ended = end(store, provider, clock)
    assert ended.status == "ended" and provider.calls == []
    assert store.path.read_bytes() == before
