"""The signal guard: the first signal unwinds to the cleanup, later ones never cut it short."""

from __future__ import annotations

import os
import signal

import pytest

from gpushopper.core import interrupts


@pytest.fixture(autouse=True)
def fresh():
    interrupts.reset()
    yield
    interrupts.reset()


@pytest.fixture
def default_hup_and_int():
    """As in a terminal: the test runner may have inherited SIG_IGN for these."""
    saved = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGHUP, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_the_first_signal_raises_and_later_ones_are_only_noted(default_hup_and_int):
    with interrupts.destroy_on_signals():
        assert signal.getsignal(signal.SIGHUP) is interrupts._on_signal
        with pytest.raises(interrupts.SignalReceived) as caught:
            os.kill(os.getpid(), signal.SIGHUP)
        assert caught.value.signum == signal.SIGHUP
        os.kill(os.getpid(), signal.SIGTERM)  # during the cleanup: noted, not raised
        os.kill(os.getpid(), signal.SIGINT)
    assert interrupts.last_signal() == signal.SIGHUP


def test_a_signal_inside_deferred_waits_for_the_block_to_finish():
    done = []
    with (
        interrupts.destroy_on_signals(),
        pytest.raises(interrupts.SignalReceived) as caught,
        interrupts.deferred(),
    ):
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("the destroy finished")
    assert done == ["the destroy finished"]
    assert caught.value.signum == signal.SIGTERM


def test_a_deferred_block_that_fails_leaves_its_signal_pending_for_the_next_one():
    """A destroy block that raises passes its own error on; the signal that came meanwhile
    is not spent on it: the next block to finish (or the next signal) still interrupts."""
    with interrupts.destroy_on_signals():
        with pytest.raises(OSError, match="disk full"), interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            raise OSError("disk full")
        with pytest.raises(interrupts.SignalReceived) as caught, interrupts.deferred():
            pass
        assert caught.value.signum == signal.SIGTERM


def test_handlers_are_restored_and_an_inherited_ignore_is_kept():
    before = signal.getsignal(signal.SIGTERM)
    previous_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with interrupts.destroy_on_signals():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not before
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGHUP, previous_hup)


def test_a_closed_pipe_is_sigpipe_once(monkeypatch):
    monkeypatch.setattr(interrupts, "silence_std_streams", lambda: None)
    with pytest.raises(interrupts.SignalReceived) as caught:
        interrupts.output_lost(BrokenPipeError(32, "Broken pipe"))
    assert caught.value.signum == signal.SIGPIPE
    interrupts.output_lost(BrokenPipeError(32, "Broken pipe"))  # already handling: quiet


def test_other_write_errors_only_silence(monkeypatch):
    silenced = []
    monkeypatch.setattr(interrupts, "silence_std_streams", lambda: silenced.append(1))
    interrupts.output_lost(OSError(28, "No space left on device"))
    assert silenced == [1] and interrupts.last_signal() is None


def test_the_sigpipe_signal_itself_stays_ignored():
    """Sockets raise SIGPIPE too (a provider closing a connection): never a destroy."""
    with interrupts.destroy_on_signals():
        assert signal.getsignal(signal.SIGPIPE) is signal.SIG_IGN


def test_interrupted_exits_128_plus_the_signal():
    from gpushopper.model.errors import Interrupted

    assert Interrupted("x", signal.SIGHUP).exit_code == 129
    assert Interrupted("x").exit_code == 130
    assert Interrupted("x", signal.SIGPIPE).exit_code == 141
