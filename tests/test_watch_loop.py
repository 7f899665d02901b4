"""watch's loop on an injected clock: the schedule, failing passes, the shutdown rule.
No wall-clock sleeps: ``wait`` advances a fake clock and says when to stop."""

from __future__ import annotations

import signal
from datetime import datetime, timedelta

import pytest

from gpushopper.core.enforcer import Enforcer
from gpushopper.core.lifecycle import Policy
from gpushopper.core.runtime import Runtime
from gpushopper.core.watcher import Metrics, Watcher
from gpushopper.model.errors import MissingCredentials
from tests.fakes.provider import FakeProvider
from tests.fakes.records import ME, T0, label, new_store, put
from tests.fakes.records import running as session


class Clock:
    """Wall time, monotonic time and the daemon's wait, all on one fake timeline."""

    def __init__(self) -> None:
        self.t = 0.0
        self.stop_after: float | None = None
        self.waits: list[float] = []

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.t)

    def mono(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    def wait(self, seconds: float) -> bool:
        """Sleep, unless a stop comes first: then return True at the stop time."""
        self.waits.append(seconds)
        if self.stop_after is not None and self.t + seconds >= self.stop_after:
            self.t = max(self.t, self.stop_after)
            return True
        self.t += seconds
        return False


@pytest.fixture
def store(tmp_path):
    return new_store(tmp_path)


def rig(store, clock, *providers, keep_on_exit=False, interval=30.0, metrics=None):
    lines: list[str] = []
    by_name = {p.NAME: p for p in providers}

    def provider_factory(name):
        if name not in by_name:
            raise MissingCredentials(name, "not in this test")
        return by_name[name]

    enforcer = Enforcer(
        store=store,
        provider_factory=provider_factory,
        providers=["vastai", "tensordock"],
        runtime=Runtime(clock=clock.now, sleep=clock.sleep, mono=clock.mono),
        on_outcome=lambda o: lines.append(
            f"{clock.t:g} {o.action.kind} {o.action.reason} {o.result}"
        ),
    )
    watcher = Watcher(
        enforcer=enforcer,
        policy=Policy(install_id=None, warn_before_s=600, provision_timeout_s=900),
        interval_s=interval,
        runtime=Runtime(clock=clock.now, mono=clock.mono, log=lines.append),
        wait=clock.wait,
        wall=lambda: 1e9 + clock.t,
        metrics=metrics,
        keep_on_exit=keep_on_exit,
    )
    return watcher, lines


def test_passes_run_on_a_fixed_schedule_and_a_deadline_is_met_within_one_interval(store):
    clock = Clock()
    provider = FakeProvider()
    provider.on_get = lambda iid: clock.sleep(0.5)  # every provider call costs time
    iid = provider.add(label("a00001"))
    put(store, session("a00001", iid, ends_s=95))
    clock.stop_after = 200
    watcher, lines = rig(store, clock, provider)
    assert watcher.run() is True
    assert watcher.passes == 7  # t = 0, 30, ..., 180
    destroyed = [line for line in lines if "destroy_session reservation_ended destroyed" in line]
    assert len(destroyed) == 1
    at = float(destroyed[0].split()[0])
    assert 95 <= at <= 95 + 30 + 2  # the first pass after the deadline
    ended = store.get_session("a00001").ended_at
    assert ended is not None and (ended - T0).total_seconds() <= 95 + 30 + 2
    # the pass's own work counts against the interval: waits shrink by what a pass took
    assert any(w < 30 for w in clock.waits) and all(w <= 30 for w in clock.waits)


def test_a_provider_failing_to_list_never_stops_the_others_expiries(store):
    clock = Clock()
    broken = FakeProvider("vastai", listing="malformed")
    healthy = FakeProvider("tensordock")
    v, t = broken.add(label("a00001")), healthy.add(label("a00002"))
    put(store, session("a00001", v, ends_s=4000), session("a00002", t, "tensordock", ends_s=45))
    clock.stop_after = 100
    metrics = Metrics(None)
    watcher, lines = rig(store, clock, broken, healthy, metrics=metrics)
    assert watcher.run() is False  # blind on vastai: the last pass was not clean
    assert healthy.live() == set()
    assert store.get_session("a00002").status == "ended"
    assert store.get_session("a00001").status == "running"
    assert any("error provider=vastai" in line for line in lines)
    assert metrics.ticks_failed == watcher.passes
    assert set(metrics.listed_at) == {"tensordock"} and metrics.last_success is None


def test_a_pass_that_raises_is_logged_and_the_loop_goes_on(store, monkeypatch):
    clock = Clock()
    provider = FakeProvider()
    clock.stop_after = 100  # passes at t = 0, 30, 60, 90
    watcher, lines = rig(store, clock, provider)
    calls = {"n": 0}
    real = watcher.enforcer.tick

    def flaky(policy):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("surprise")
        return real(policy)

    monkeypatch.setattr(watcher.enforcer, "tick", flaky)
    watcher.run()
    assert calls["n"] == 4
    assert any("error: RuntimeError: surprise (retrying next pass)" in line for line in lines)


def test_foreign_and_malformed_labels_are_never_reaped_however_long_it_runs(store):
    clock = Clock()
    provider = FakeProvider()
    foreign = provider.add(label("c00001", install="bbbb2222"))
    odd = provider.add(f"gpu-shopper:{ME}:$(touch x)")
    orphan = provider.add(label("c00002"))
    clock.stop_after = 300
    watcher, _ = rig(store, clock, provider)
    watcher.run()
    assert provider.live() == {foreign, odd}
    assert orphan not in provider.live()


def test_a_partial_listing_never_closes_a_running_session(store):
    clock = Clock()
    provider = FakeProvider(listing="partial", partial_drops={label("a00001")})
    iid = provider.add(label("a00001"))
    put(store, session("a00001", iid))
    clock.stop_after = 120
    watcher, _ = rig(store, clock, provider)
    assert watcher.run() is False
    assert store.get_session("a00001").status == "running"
    assert provider.live() == {iid}


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stopping_destroys_every_guarded_session_and_exits_128_plus_n(store, signum, code):
    clock = Clock()
    provider = FakeProvider(linger=2)
    ids = [provider.add(label(f"a0000{i}")) for i in range(3)]
    put(store, *(session(f"a0000{i}", iid) for i, iid in enumerate(ids)))
    watcher, lines = rig(store, clock, provider)
    watcher.announce(pid=1, once=False)
    assert any("stopping destroys the 3 guarded sessions" in line for line in lines)
    clock.stop_after = 45
    watcher.run()
    assert provider.live() == set(ids)  # nothing was due
    assert watcher.shutdown(signum) == code
    assert provider.live() == set()
    assert {r.status for r in store.sessions().values()} == {"ended"}


def test_keep_on_exit_leaves_them_and_says_so_at_start(store):
    clock = Clock()
    provider = FakeProvider()
    iid = provider.add(label("a00001"))
    put(store, session("a00001", iid))
    watcher, lines = rig(store, clock, provider, keep_on_exit=True)
    watcher.announce(pid=1, once=False)
    assert any("stopping leaves the 1 guarded session" in line for line in lines)
    assert watcher.shutdown(signal.SIGINT) == 130
    assert provider.live() == {iid}
    assert any("session=a00001 reservation_ends_at=" in line for line in lines)


def test_a_shutdown_that_cannot_destroy_exits_1(store):
    from tests.fakes.provider import FOREVER

    clock = Clock()
    provider = FakeProvider(destroy_failures=FOREVER)
    iid = provider.add(label("a00001"))
    put(store, session("a00001", iid))
    watcher, lines = rig(store, clock, provider)
    assert watcher.shutdown(signal.SIGTERM) == 1
    assert provider.live() == {iid}
    assert any("could not be destroyed" in line for line in lines)


def test_once_is_one_pass(store):
    clock = Clock()
    provider = FakeProvider()
    watcher, _ = rig(store, clock, provider)
    assert watcher.run(once=True) is True
    assert watcher.passes == 1 and clock.waits == []


def test_metrics_carry_the_last_successful_list_per_provider(store, tmp_path):
    clock = Clock()
    vast, td = FakeProvider("vastai"), FakeProvider("tensordock")
    metrics = Metrics(tmp_path / "m.prom")
    clock.stop_after = 60
    watcher, _ = rig(store, clock, vast, td, metrics=metrics)
    watcher.run()
    td.listing = "malformed"
    clock.stop_after = 120
    watcher.run()
    text = (tmp_path / "m.prom").read_text()
    # the last pass (t=90) listed vastai; tensordock was last listed whole at t=30
    assert f'{{provider="vastai"}} {T0.timestamp() + 90:.3f}' in text
    assert f'{{provider="tensordock"}} {T0.timestamp() + 30:.3f}' in text
    assert "gpu_shopper_failed_ticks_total 2" in text


def test_metrics_count_sessions_by_status_and_add_only_the_live_ones_prices(store, tmp_path):
    """The cost rate is what is billing now: an ended session's price is not in it, and a
    damaged record is neither counted nor priced."""
    ended = {**session("a00003", "9003"), "status": "ended", "price_per_hour": 2.0}
    put(
        store,
        {**session("a00001", "9001"), "price_per_hour": 0.5},
        {**session("a00002", "9002"), "status": "ending", "price_per_hour": 0.25},
        ended,
        {"id": "a00004", "status": "running", "price_per_hour": 9.0, "created_at": "soon"},
    )
    metrics = Metrics(tmp_path / "m.prom")
    metrics.write(store, orphans=2)
    text = (tmp_path / "m.prom").read_text()
    assert 'gpu_shopper_sessions{status="running"} 1' in text
    assert 'gpu_shopper_sessions{status="ending"} 1' in text
    assert 'gpu_shopper_sessions{status="ended"} 1' in text
    assert "gpu_shopper_cost_rate_usd_per_hour 0.750000" in text
    assert "gpu_shopper_orphans 2" in text


# -- serve: the exit code rule, the outcome record, the stop pipe (moved out of cli/watch) ----------


def test_serve_once_exits_0_when_it_saw_everything_and_1_when_blind(store):
    clock = Clock()
    watcher, _ = rig(store, clock, FakeProvider("vastai"), FakeProvider("tensordock"))
    assert watcher.serve(pid=1, once=True, stopped=lambda: None) == 0
    blind, _ = rig(store, clock, FakeProvider("vastai", listing="malformed"))
    assert blind.serve(pid=1, once=True, stopped=lambda: None) == 1
    assert blind.passes == 1 and clock.waits == []


def test_serve_once_stopped_by_a_signal_exits_128_plus_n_and_destroys_nothing(store):
    clock = Clock()
    provider = FakeProvider()
    iid = provider.add(label("a00001"))
    put(store, session("a00001", iid))
    watcher, lines = rig(store, clock, provider)
    assert watcher.serve(pid=1, once=True, stopped=lambda: signal.SIGTERM) == 143
    assert provider.live() == {iid}
    assert store.get_session("a00001").status == "running"
    assert not any("destroying every guarded session" in line for line in lines)


def test_serve_stopped_applies_the_shutdown_rule(store):
    clock = Clock()
    provider = FakeProvider()
    iid = provider.add(label("a00001"))
    put(store, session("a00001", iid))
    clock.stop_after = 45
    watcher, lines = rig(store, clock, provider)
    assert watcher.serve(pid=7, once=False, stopped=lambda: signal.SIGINT) == 130
    assert provider.live() == set()
    assert any("watch started pid=7 interval=30s" in line for line in lines)
    assert any("SIGINT: 1 sessions destroyed and confirmed gone" in line for line in lines)


def test_serve_keeps_the_last_pass_verdict_when_the_loop_ends_without_a_signal(store):
    clock = Clock()
    clock.stop_after = 45
    watcher, _ = rig(store, clock, FakeProvider("vastai", listing="malformed"))
    assert watcher.serve(pid=1, once=False, stopped=lambda: None) == 1


def test_record_counts_failures_apart_and_alerts_with_the_line_and_its_event(store):
    from gpushopper.core.enforcer import Outcome
    from gpushopper.core.lifecycle import Action

    clock = Clock()
    clock.t = 90
    alerts: list[tuple[str, dict]] = []
    metrics = Metrics(None)
    watcher, _ = rig(store, clock, FakeProvider(), metrics=metrics)
    watcher.alert = lambda line, event: alerts.append((line, event))
    action = Action("destroy_session", "reservation_ended", "vastai", "a00001", "42", detail="d")
    watcher.record(Outcome(action, "destroyed"))
    watcher.record(Outcome(action, "failed", error="HTTP 500"))
    assert metrics.actions == {"destroy_session": 1, "failed": 1}
    (line, event), (failed_line, failed_event) = alerts
    assert line == (
        "2026-11-23T12:01:30Z destroy_session session=a00001 provider=vastai instance=42 "
        "reason=reservation_ended result=destroyed: d"
    )
    assert failed_line.split()[1] == "destroy_session_failed" and failed_line.endswith(": HTTP 500")
    assert event == {
        "time": "2026-11-23T12:01:30Z",
        "event": "destroy_session",
        "result": "destroyed",
        "reason": "reservation_ended",
        "session": "a00001",
        "provider": "vastai",
        "instance": "42",
        "detail": "d",
    }
    assert failed_event["detail"] == "HTTP 500" and failed_event["result"] == "failed"


def test_without_an_alert_each_outcome_line_goes_to_the_log(store):
    from gpushopper.core.enforcer import Outcome
    from gpushopper.core.lifecycle import Action

    clock = Clock()
    watcher, lines = rig(store, clock, FakeProvider())
    watcher.record(Outcome(Action("destroy_orphan", "orphan", "vastai", None, "9"), "destroyed"))
    assert lines[-1].endswith(
        "destroy_orphan session=- provider=vastai instance=9 reason=orphan result=destroyed"
    )


def test_metrics_path_refuses_a_missing_folder_and_never_creates_it(tmp_path):
    from gpushopper.core.watcher import metrics_path
    from gpushopper.model.errors import UsageError

    assert metrics_path(None) is None
    assert metrics_path(str(tmp_path / "m.prom")) == tmp_path / "m.prom"
    with pytest.raises(UsageError, match="no such folder .*not created for you"):
        metrics_path(str(tmp_path / "nope" / "m.prom"))
    assert not (tmp_path / "nope").exists()


def test_the_stop_pipe_wakes_the_wait_on_a_signal_and_restores_the_handlers():
    import os

    from gpushopper.core.watcher import Stop

    before = signal.getsignal(signal.SIGTERM)
    with Stop() as stop:
        assert stop.wait(0) is False and stop.signum is None
        os.kill(os.getpid(), signal.SIGTERM)  # noted, never raised
        assert stop.wait(30) is True  # at once: the pipe is readable
        os.kill(os.getpid(), signal.SIGINT)  # a second signal is only noted
        assert stop.signum == signal.SIGTERM and stop.received[-1] == signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_stop_pipe_keeps_an_inherited_ignored_sighup():
    from gpushopper.core.watcher import Stop

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with Stop():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # nohup's choice
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_stop_requested_by_a_closed_log_pipe_counts_as_a_signal():
    from gpushopper.core.watcher import Stop

    with Stop() as stop:
        stop.request(signal.SIGPIPE)
        assert stop.wait(30) is True and stop.signum == signal.SIGPIPE


def test_the_watch_note_names_the_running_watch_or_how_to_start_one(tmp_path):
    from gpushopper.core.watcher import START_WATCH_HINT, watch_note

    assert "(pid 41)" in watch_note(41, tmp_path)
    assert "(pid starting)" in watch_note(0, tmp_path)
    assert watch_note(None, tmp_path).endswith(START_WATCH_HINT)
    assert str(tmp_path) in watch_note(None, tmp_path)


def test_a_stop_that_cannot_install_every_handler_undoes_the_others_and_the_pipe(monkeypatch):
    """As the daemon did before its move here: a refused handler (off the main thread)
    leaves no handler of ours behind and no pipe open."""
    import os

    from gpushopper.core.watcher import Stop

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    real = signal.signal

    def refuse_sighup(sig, handler):
        if sig == signal.SIGHUP:
            raise ValueError("signal only works in main thread of the main interpreter")
        return real(sig, handler)

    monkeypatch.setattr(signal, "signal", refuse_sighup)
    monkeypatch.setattr(signal, "getsignal", lambda sig: signal.SIG_DFL)  # no nohup here
    stop = Stop()
    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="main thread"):
        stop.__enter__()
    monkeypatch.undo()
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert set(os.listdir("/proc/self/fd")) <= fds_before
