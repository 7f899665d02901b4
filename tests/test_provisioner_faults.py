"""The provisioner's cleanup paths against the in-process fake provider, on a fake clock:
signals mid-boot (and a second one mid-destroy), a closed pipe, a create that errs after
creating while the listing lags, a create answer naming someone else's instance, a full
disk, a broken record elsewhere in the state."""

from __future__ import annotations

import signal
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from gpushopper.core import interrupts
from gpushopper.core.provisioner import (
    BootFailed,
    Candidate,
    Provisioner,
    ProvisionFailed,
    ProvisionRequest,
)
from gpushopper.model.errors import Interrupted, StateWriteError
from gpushopper.model.models import Offer, OfferQuery
from gpushopper.state.store import StateStore
from tests.conftest import FakeTime
from tests.fakes.provider import FOREVER, FakeProvider, factory

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def fresh_guard():
    interrupts.reset()
    yield
    interrupts.reset()


class Rig:
    def __init__(self, tmp_path, provider: FakeProvider) -> None:
        self.time = FakeTime()
        self.provider = provider
        self.store = StateStore(tmp_path / "state.json")
        self.said: list[tuple[int, str]] = []  # (provider calls so far, message)
        self.log_hook: Any = None
        self.provisioner = Provisioner(
            store=self.store,
            keys_dir=tmp_path / "keys",
            ssh_config_path=tmp_path / "ssh_config",
            provider_factory=factory(provider),
            clock=lambda: T0 + timedelta(seconds=self.time.now - 1000),
            mono=self.time.mono,
            sleep=self.time.sleep,
            log=self.log,
        )

    def log(self, message: str) -> None:
        if self.log_hook is not None:
            self.log_hook(message)
        self.said.append((len(self.provider.calls), message))

    def run(self, **req: Any) -> dict[str, Any]:
        offer = Offer(
            id="vastai:1",
            provider="vastai",
            gpu_name="RTX 4090",
            num_gpus=1,
            price_per_hour=0.5,
            machine_id="m1",
        )
        request = ProvisionRequest(query=OfferQuery(disk_gb=32), verify=False, **req)
        return self.provisioner.provision(request, [Candidate(self.provider, offer, None)])

    def only_session(self) -> dict[str, Any]:
        (record,) = self.store.read()["sessions"].values()
        return record


def gets_then(provider: FakeProvider, n: int, action) -> None:
    """Run ``action`` on the n-th get_instance call (1-based)."""
    seen = {"count": 0}

    def on_get(instance_id: str) -> None:
        seen["count"] += 1
        if seen["count"] == n:
            action(instance_id)

    provider.on_get = on_get


# -- the create step -----------------------------------------------------------------------------
def test_a_create_that_errs_after_creating_is_adopted_once_the_list_catches_up(tmp_path):
    provider = FakeProvider(create_error_after_create=True, list_lag=2)
    rig = Rig(tmp_path, provider)
    session = rig.run()
    assert provider.count("create_instance") == 1  # never a second create
    assert session.status == "running" and session.instance_id in provider.live()
    assert provider.count("list_instances") == 3  # it waited for the list to show it


def test_a_create_answer_naming_someone_elses_instance_is_not_trusted(tmp_path):
    provider = FakeProvider()
    foreign = provider.add("someone-elses-job")
    provider.create_answers = foreign
    rig = Rig(tmp_path, provider)
    session = rig.run()
    assert session.instance_id != foreign
    assert provider.instances[session.instance_id].label == session.label
    assert ("attach_ssh_key", foreign) not in provider.calls
    assert any("using that one" in message for _, message in rig.said)


def test_a_create_answer_naming_nothing_waits_for_our_label(tmp_path):
    provider = FakeProvider(create_answers="424242", list_lag=2)
    rig = Rig(tmp_path, provider)
    session = rig.run()
    assert session.instance_id != "424242" and session.instance_id in provider.live()


def test_a_create_answer_never_matched_fails_and_leaves_nothing_it_knows_of(tmp_path):
    provider = FakeProvider(create_answers="424242", list_lag=FOREVER)
    rig = Rig(tmp_path, provider)
    with pytest.raises(ProvisionFailed, match="does not carry this session's label"):
        rig.run()
    assert rig.only_session()["status"] == "failed"
    # the record keeps the label, so the next sweep destroys the instance once it is listed
    assert rig.only_session()["label"].startswith("gpu-shopper:")


@pytest.mark.parametrize(
    "faults",
    [{"create_error_after_create": True}, {"create_answers": "424242"}],
    ids=["create-errs", "answer-names-nothing"],
)
def test_a_listing_that_keeps_failing_is_never_read_as_no_instance(tmp_path, faults):
    # the create went through, but every lookup by label fails: the session cannot be
    # closed "failed" (nothing would look for the instance again); it stays live for watch
    provider = FakeProvider(listing="malformed", **faults)
    rig = Rig(tmp_path, provider)
    with pytest.raises(ProvisionFailed, match="looking up the instance .* NOT confirmed"):
        rig.run()
    assert provider.count("create_instance") == 1
    assert len(provider.live()) == 1  # still running at the provider
    record = rig.only_session()
    assert record["status"] == "ending" and "listing failed" in record["error"]
    provider.listing = "ok"  # the provider recovers: the retry (watch, cleanup-orphans) ends it
    from gpushopper.core.runtime import Runtime
    from gpushopper.core.teardown import end_session

    runtime = Runtime(clock=lambda: T0, mono=rig.time.mono, sleep=rig.time.sleep)
    ended = end_session(rig.store, factory(provider), record["id"], "retry", runtime=runtime)
    assert ended.status == "ended" and provider.live() == set()


def test_a_session_another_process_ended_mid_boot_is_never_brought_back(tmp_path):
    # watch (its hard maximum, say) is ending the booting session while provision polls
    provider = FakeProvider(boot_polls=3)
    rig = Rig(tmp_path, provider)

    def watch_ends_it(instance_id: str) -> None:
        (sid,) = rig.store.read()["sessions"]
        rig.store.update_session(sid, status="ending", end_reason="hard_max")

    gets_then(provider, 2, watch_ends_it)
    with pytest.raises(ProvisionFailed, match="ended by another process"):
        rig.run()
    assert provider.live() == set()  # destroyed, not handed off as a running session
    assert rig.only_session()["status"] == "failed"
    assert "ended by another process" in rig.only_session()["end_reason"]


def test_a_session_watch_closed_failed_mid_boot_is_never_brought_back(tmp_path):
    # watch closed the booting session "failed" (its instance was not listed): provision
    # must not write it back to running, a session nothing would then enforce as booting
    provider = FakeProvider(boot_polls=3)
    rig = Rig(tmp_path, provider)

    def watch_fails_it(instance_id: str) -> None:
        (sid,) = rig.store.read()["sessions"]
        rig.store.update_session(sid, status="failed", end_reason="instance gone")

    gets_then(provider, 2, watch_fails_it)
    with pytest.raises(ProvisionFailed, match="ended by another process"):
        rig.run()
    assert provider.live() == set()
    assert rig.only_session()["status"] == "failed"


# -- billing ---------------------------------------------------------------------------------------
def test_billing_starts_when_the_provider_reports_running_not_when_the_checks_pass(tmp_path):
    provider = FakeProvider(boot_polls=2)
    rig = Rig(tmp_path, provider)
    provider.on_get = lambda iid: rig.time.sleep(10)  # every poll takes 10 s of clock
    session = rig.run()
    billing = session.billing_started_at
    ready = session.ready_at
    created = session.created_at
    assert created < billing < ready
    assert (ready - billing).total_seconds() >= 10


# -- signals and closed pipes ------------------------------------------------------------------
def raise_signal(signum: int):
    def act(instance_id: str) -> None:
        interrupts._on_signal(signum, None)

    return act


@pytest.mark.parametrize(
    "signum, code", [(signal.SIGINT, 130), (signal.SIGHUP, 129), (signal.SIGTERM, 143)]
)
def test_a_signal_mid_boot_destroys_confirms_records_then_says_so(tmp_path, signum, code):
    provider = FakeProvider(boot_polls=10, linger=2)
    rig = Rig(tmp_path, provider)
    gets_then(provider, 3, raise_signal(signum))
    with pytest.raises(Interrupted) as caught:
        rig.run()
    assert caught.value.exit_code == code
    name = signal.Signals(signum).name
    assert f"interrupted by {name}" in str(caught.value) and "destroyed" in str(caught.value)
    assert provider.live() == set()
    record = rig.only_session()
    assert record["status"] == "failed" and record["end_reason"] == f"interrupted by {name}"
    assert rig.store.read()["offer_health"] == {}  # an interrupt is not the offer's fault
    destroy_at = provider.calls.index(("destroy_instance", record["instance_id"]))
    told = [at for at, message in rig.said if "destroyed" in message]
    assert told and told[0] > destroy_at  # destroy first, then tell


def test_a_second_signal_during_the_destroy_cannot_cut_it_short(tmp_path):
    provider = FakeProvider(boot_polls=10, linger=4)
    rig = Rig(tmp_path, provider)
    calls = {"n": 0}

    def on_get(instance_id: str) -> None:
        calls["n"] += 1
        if calls["n"] >= 3:  # Ctrl-C mid-boot, then again and again while it is destroyed
            interrupts._on_signal(signal.SIGINT, None)

    provider.on_get = on_get
    with pytest.raises(Interrupted) as caught:
        rig.run()
    assert caught.value.exit_code == 130
    assert provider.live() == set()
    assert rig.only_session()["status"] == "failed"


def test_a_signal_during_a_failed_boots_cleanup_waits_for_the_destroy(tmp_path):
    provider = FakeProvider(boot_polls=10, linger=3)
    rig = Rig(tmp_path, provider)
    calls = {"n": 0}

    def on_get(instance_id: str) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            provider.instances[instance_id].status = "exited"  # the boot fails...
            provider.instances[instance_id].polls_to_running = 0
        elif calls["n"] == 5:
            interrupts._on_signal(signal.SIGTERM, None)  # ...and SIGTERM lands mid-destroy

    provider.on_get = on_get
    with pytest.raises(interrupts.SignalReceived) as caught:
        rig.run(auto_retry=2)
    assert caught.value.signum == signal.SIGTERM
    assert provider.live() == set()
    assert rig.only_session()["status"] == "failed"
    assert provider.count("create_instance") == 1  # no next offer after the signal


def test_a_closed_pipe_mid_boot_is_an_interruption_not_a_failed_boot(tmp_path, monkeypatch):
    monkeypatch.setattr(interrupts, "silence_std_streams", lambda: None)
    provider = FakeProvider(boot_polls=10)
    rig = Rig(tmp_path, provider)
    messages = {"n": 0}

    def closed_after_two(message: str) -> None:
        messages["n"] += 1
        if messages["n"] > 2:
            raise BrokenPipeError(32, "Broken pipe")

    rig.log_hook = closed_after_two
    with pytest.raises(Interrupted) as caught:
        rig.run(auto_retry=2)
    assert caught.value.exit_code == 141
    assert provider.live() == set() and provider.count("create_instance") == 1
    assert rig.only_session()["end_reason"] == "interrupted by SIGPIPE"
    assert rig.store.read()["offer_health"] == {}


def test_a_destroy_that_cannot_be_confirmed_is_never_claimed(tmp_path):
    provider = FakeProvider(boot_polls=10, destroy_failures=FOREVER)
    rig = Rig(tmp_path, provider)
    gets_then(provider, 3, raise_signal(signal.SIGHUP))
    with pytest.raises(ProvisionFailed) as caught:
        rig.run()
    assert "NOT confirmed" in str(caught.value) and "cleanup-orphans" in str(caught.value)
    assert rig.only_session()["status"] == "ending"  # live: watch finishes the job
    assert not any("destroyed (the provider" in message for _, message in rig.said)


def test_an_interrupted_create_call_still_finds_and_destroys_the_instance(tmp_path):
    provider = FakeProvider(list_lag=2)
    rig = Rig(tmp_path, provider)
    real_create = provider.create_instance

    def create_then_signal(spec):
        real_create(spec)
        raise interrupts.SignalReceived(signal.SIGTERM)  # the answer never arrived

    provider.create_instance = create_then_signal  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        rig.run()
    assert provider.live() == set()


# -- the disk and the state file -----------------------------------------------------------------
def test_a_full_disk_mid_boot_never_stands_between_the_failure_and_the_destroy(
    tmp_path, monkeypatch
):
    provider = FakeProvider(boot_polls=10)
    rig = Rig(tmp_path, provider)
    real = rig.store.transaction
    writes = {"n": 0}

    def transaction():
        writes["n"] += 1
        if writes["n"] > 2:  # intent and "provisioning" were saved; then the disk filled up
            raise StateWriteError("cannot write state file: No space left on device")
        return real()

    monkeypatch.setattr(rig.store, "transaction", transaction)
    gets_then(provider, 3, lambda iid: setattr(provider.instances[iid], "status", "exited"))
    provider.boot_polls = 0
    with pytest.raises(ProvisionFailed):
        rig.run()
    assert provider.live() == set()
    assert any("Could not record it" in message for _, message in rig.said)


def test_a_broken_record_elsewhere_does_not_make_a_provision_crash(tmp_path):
    provider = FakeProvider()
    rig = Rig(tmp_path, provider)
    with rig.store.transaction() as state:
        state["sessions"]["badbad"] = "a string"
        state["sessions"]["nulled"] = None
    session = rig.run()
    assert session.status == "running" and provider.live() == {session.instance_id}
    assert f"Host gpu-{session.id}" in (tmp_path / "ssh_config").read_text()


def test_the_owner_is_recorded_before_the_create(tmp_path):
    import os

    provider = FakeProvider()
    rig = Rig(tmp_path, provider)
    seen: dict[str, Any] = {}
    real_create = provider.create_instance

    def create(spec):
        seen.update(rig.only_session())
        return real_create(spec)

    provider.create_instance = create  # type: ignore[method-assign]
    rig.run()
    assert seen["status"] == "creating" and seen["owner"]["pid"] == os.getpid()
    assert seen["owner"]["started"]


def test_boot_failed_keeps_its_message(tmp_path):
    assert str(BootFailed("x", cleaned_up=True)) == "x"


# -- the stages one by one (what a job or benchmark runner reusing them relies on) ----------------
def _boot(rig: Rig):
    offer = Offer(
        id="vastai:1", provider="vastai", gpu_name="RTX 4090", num_gpus=1, machine_id="m1"
    )
    request = ProvisionRequest(query=OfferQuery(disk_gb=32), verify=False)
    return rig.provisioner.intent(request, Candidate(rig.provider, offer, None))


def test_each_stage_records_what_its_contract_says(tmp_path):
    provider = FakeProvider(boot_polls=1)
    rig = Rig(tmp_path, provider)
    stages = rig.provisioner
    boot = _boot(rig)
    assert rig.store.read()["sessions"] == {} and provider.calls == []  # intent: nothing yet
    stages.create(boot)
    assert rig.only_session()["status"] == "creating" and provider.count("create_instance") == 1
    assert boot.instance_id in provider.live()
    stages.wait(boot)
    record = rig.only_session()
    assert record["status"] == "verifying" and record["instance_id"] == boot.instance_id
    assert record["billing_started_at"] and record["ssh"]["host"]
    stages.verify(boot)
    assert rig.only_session()["status"] == "verifying"  # verify writes nothing itself
    final = stages.hand_off(boot)
    assert final.status == "running" == rig.only_session()["status"] and final.ready_at


def test_a_stage_failing_outside_attempt_is_destroyed_by_clean_up(tmp_path):
    provider = FakeProvider(boot_polls=FOREVER)
    rig = Rig(tmp_path, provider)
    boot = _boot(rig)
    rig.provisioner.create(boot)
    with pytest.raises(BootFailed) as raised:
        rig.provisioner.wait(boot)
    failure = rig.provisioner.clean_up(boot, raised.value)
    assert isinstance(failure, BootFailed) and failure.cleaned_up
    assert provider.live() == set()
    assert rig.only_session()["status"] == "failed"


def test_undoing_a_hand_off_that_crashed_destroys_it_and_says_why(tmp_path):
    provider = FakeProvider()
    rig = Rig(tmp_path, provider)
    session = rig.run()
    error = rig.provisioner.undo(session, ValueError("bad value in the view"))
    assert isinstance(error, ProvisionFailed) and not isinstance(error, Interrupted)
    assert "the hand-off failed (ValueError: bad value in the view)" in str(error)
    assert provider.live() == set()
    record = rig.only_session()
    assert record["status"] == "ended" and "hand-off failed" in record["end_reason"]
