"""The ``watch`` daemon's loop and shutdown rule, on an injected clock.

Passes run on a fixed schedule (a pass's own work counts against the interval). A pass
never raises: provider and state errors are logged and retried on the next pass, and
the loop only ends when ``wait`` reports a stop (a signal, or a closed output pipe). On
a stop every guarded session is destroyed and confirmed gone, unless ``keep_on_exit``;
the exit code is then 128 + the signal (130 for Ctrl-C), or 1 when something could not
be destroyed. ``watch --once`` is one pass: 0 when it saw and enforced everything, 1
when it was blind anywhere (a provider not listed, a broken record, a failed action).

``mono`` and ``wait`` are what the loop runs on, so tests drive it on a fake clock
without sleeping: ``wait(seconds)`` returns True when the daemon should stop. In
production ``wait`` is :meth:`Stop.wait`, a self-pipe the stop signals write to.

The command (``cli/watch.py``) parses the flags, holds the pid lock, builds a
:class:`Watcher` and calls :meth:`Watcher.serve`; everything it decides is here.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

from gpushopper.core.interrupts import KEEP_IGNORED, signal_name
from gpushopper.model.errors import GpuShopperError, UsageError
from gpushopper.model.jsontypes import JSONObject
from gpushopper.model.session import STATUSES
from gpushopper.model.units import format_duration, iso

if TYPE_CHECKING:
    from gpushopper.core.enforcer import Enforcer, Outcome
    from gpushopper.core.lifecycle import Policy
    from gpushopper.core.runtime import Runtime
    from gpushopper.model.session import Session
    from gpushopper.state.store import StateStore


START_WATCH_HINT = (
    "start it: 'gpu-shopper watch' in another terminal, or install the systemd user unit "
    "or the cleanup-orphans cron line (README, 'Running the safety net')"
)


def watch_note(pid: int | None, data_dir: Path) -> str:
    """One line for the end of a rental: is anything here enforcing its deadlines?
    ``pid`` is the running watch's (0: one is starting), None when none runs."""
    if pid is not None:
        return f"watch is running for this home (pid {pid or 'starting'}): it enforces this session's deadlines"
    return (
        f"watch is not running for this home ({data_dir}); only the on-instance "
        f"deadline ends this rental if you forget it: {START_WATCH_HINT}"
    )


def metrics_path(metrics_file: str | None) -> Path | None:
    """``--metrics-file``: its folder must exist (it is not created for you)."""
    if not metrics_file:
        return None
    path = Path(metrics_file).expanduser()
    if not path.parent.is_dir():
        raise UsageError(
            f"--metrics-file {metrics_file}: no such folder "
            f"{path.parent} (it is not created for you)"
        )
    return Path(metrics_file)


STOP_SIGNALS = (int(signal.SIGTERM), int(signal.SIGINT), int(signal.SIGHUP))


class Stop:
    """The daemon's stop request: SIGTERM, SIGINT and SIGHUP (or :meth:`request`, for a
    closed log pipe) are noted and wake :meth:`wait`. A second signal during the shutdown
    destroys is only noted too, so it cannot cut them short. An inherited SIG_IGN on
    SIGINT or SIGHUP (nohup) is the user's choice and kept.

    A self-pipe, not a threading.Event: a signal handler that takes a lock the
    interrupted code holds deadlocks, and os.write never does. Used as a context
    manager: the pipe and the handlers exist inside it only."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._r = self._w = -1
        self._previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    @property
    def signum(self) -> int | None:
        """The first stop signal received, or None."""
        return self.received[0] if self.received else None

    def request(self, signum: int) -> None:
        self.received.append(signum)
        try:
            os.write(self._w, b"!")
        except OSError:
            pass  # the pipe is full (a wake-up is pending already), or not open yet

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) when a stop was requested."""
        if not self.received:
            select.select([self._r], [], [], max(0.0, seconds))
        return bool(self.received)

    def __enter__(self) -> Stop:
        self._r, self._w = os.pipe()
        try:
            os.set_blocking(self._w, False)
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is signal.SIG_IGN and sig in KEEP_IGNORED:
                    continue  # nohup: the user asked to outlive the terminal
                self._previous[sig] = signal.signal(sig, lambda signum, frame: self.request(signum))
        except BaseException:  # a handler refused (not the main thread): undo what was done
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        os.close(self._r)
        os.close(self._w)
        self._r = self._w = -1


def _sleep_then_go_on(seconds: float) -> bool:
    time.sleep(seconds)
    return False


class Metrics:
    """Prometheus text format for node_exporter's textfile collector, written atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.actions: dict[str, int] = {}
        self.last_success: float | None = None
        self.listed_at: dict[str, float] = {}  # provider -> when its list last came back whole
        self.ticks_failed = 0

    def count(self, kind: str) -> None:
        self.actions[kind] = self.actions.get(kind, 0) + 1

    def write(self, store: StateStore, orphans: int) -> None:
        if self.path is None:
            return
        from gpushopper.state.atomic import atomic_write_text

        by_status: dict[str, int] = {}
        rate = 0.0
        try:
            sessions = store.sessions()
        except GpuShopperError:
            sessions = {}
        for session in sessions.values():
            status = session.status.value
            by_status[status] = by_status.get(status, 0) + 1
            if session.live and session.price_per_hour:
                rate += float(session.price_per_hour)
        lines = [
            "# HELP gpu_shopper_sessions Sessions in the state file by status.",
            "# TYPE gpu_shopper_sessions gauge",
        ]
        for status in STATUSES:
            lines.append(f'gpu_shopper_sessions{{status="{status}"}} {by_status.get(status, 0)}')
        lines += [
            "# HELP gpu_shopper_cost_rate_usd_per_hour Sum of the hourly prices of live sessions.",
            "# TYPE gpu_shopper_cost_rate_usd_per_hour gauge",
            f"gpu_shopper_cost_rate_usd_per_hour {rate:.6f}",
            "# HELP gpu_shopper_orphans Instances of ours with no live session, seen on the last tick.",
            "# TYPE gpu_shopper_orphans gauge",
            f"gpu_shopper_orphans {orphans}",
            "# HELP gpu_shopper_actions_total Actions carried out, by kind.",
            "# TYPE gpu_shopper_actions_total counter",
        ]
        for kind in sorted(self.actions):
            lines.append(f'gpu_shopper_actions_total{{action="{kind}"}} {self.actions[kind]}')
        lines += [
            "# HELP gpu_shopper_failed_ticks_total Ticks with a provider or state error.",
            "# TYPE gpu_shopper_failed_ticks_total counter",
            f"gpu_shopper_failed_ticks_total {self.ticks_failed}",
            "# HELP gpu_shopper_last_successful_tick_timestamp_seconds When a tick last completed cleanly.",
            "# TYPE gpu_shopper_last_successful_tick_timestamp_seconds gauge",
            f"gpu_shopper_last_successful_tick_timestamp_seconds {self.last_success or 0:.3f}",
            "# HELP gpu_shopper_provider_last_successful_list_timestamp_seconds When each "
            "provider's instance list last came back whole.",
            "# TYPE gpu_shopper_provider_last_successful_list_timestamp_seconds gauge",
        ]
        for provider in sorted(self.listed_at):
            lines.append(
                "gpu_shopper_provider_last_successful_list_timestamp_seconds"
                f'{{provider="{provider}"}} {self.listed_at[provider]:.3f}'
            )
        atomic_write_text(self.path, "\n".join(lines) + "\n", mode=0o644, make_parents=False)


class Watcher:
    """Runs the enforcer's passes until told to stop, then applies the shutdown rule."""

    def __init__(
        self,
        *,
        enforcer: Enforcer,
        policy: Policy,
        interval_s: float,
        runtime: Runtime,
        wait: Callable[[float], bool] | None = None,
        wall: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        keep_on_exit: bool = False,
        alert: Callable[[str, JSONObject], None] | None = None,
    ) -> None:
        self.enforcer = enforcer
        self.policy = policy
        self.interval_s = interval_s
        self.runtime = runtime  # its log is the watch log; wait is its sleep
        self.wait = wait or _sleep_then_go_on
        self.wall = wall
        self.metrics = metrics or Metrics(None)
        self.keep_on_exit = keep_on_exit
        # Where each outcome goes (the log line and its event); the Alerter's send.
        self.alert = alert or (lambda line, event: self.runtime.log(line))
        self.passes = 0

    def record(self, outcome: Outcome) -> None:
        """The enforcer's ``on_outcome``: count it, log it and alert with it."""
        self.metrics.count(outcome.action.kind if outcome.result != "failed" else "failed")
        now = self.runtime.clock()
        self.alert(outcome_line(now, outcome), alert_event(now, outcome))

    def _say(self, message: str) -> None:
        self.runtime.log(f"{iso(self.runtime.clock())} {message}")

    def guarded(self) -> dict[str, Session]:
        """The live sessions a stop would destroy (or leave, with keep_on_exit)."""
        return {sid: s for sid, s in self.enforcer.store.sessions().items() if s.live}

    def announce(self, pid: int, once: bool) -> None:
        """Say at start what stopping will do, before anyone has to find out."""
        self._say(
            f"watch started pid={pid} interval={format_duration(self.interval_s)}"
            + (" once" if once else "")
        )
        if once:
            return
        try:
            count: int | str = len(self.guarded())
        except GpuShopperError:
            count = "?"  # the state cannot be read now; every pass will say why
        plural = "" if count == 1 else "s"
        if self.keep_on_exit:
            self._say(
                f"stopping leaves the {count} guarded session{plural} (and any started "
                "later) running (--keep-on-exit); their deadlines are printed on exit"
            )
        else:
            self._say(
                f"stopping destroys the {count} guarded session{plural} (and any started "
                "later); --keep-on-exit leaves them. Ctrl-C, SIGTERM and SIGHUP stop it"
            )

    def one_pass(self) -> bool:
        """One reconciliation; never raises. True when it saw and enforced everything."""
        self.passes += 1
        try:
            report = self.enforcer.tick(self.policy)
            for name, message in sorted(report.provider_errors.items()):
                self._say(f"error provider={name}: {message} (retrying next pass)")
            self.metrics.listed_at.update(report.listed_at)
            if report.ok:
                self.metrics.last_success = self.wall()
            else:
                self.metrics.ticks_failed += 1
            orphans = sum(1 for o in report.outcomes if o.action.kind == "destroy_orphan")
            try:
                self.metrics.write(self.enforcer.store, orphans)
            except OSError as exc:
                self._say(f"error: cannot write metrics: {exc.strerror or exc}")
            return bool(report.ok)
        except GpuShopperError as exc:
            self.metrics.ticks_failed += 1
            self._say(f"error: {exc} (retrying next pass)")
        except Exception as exc:  # the daemon must outlive surprises
            self.metrics.ticks_failed += 1
            self._say(f"error: {type(exc).__name__}: {exc} (retrying next pass)")
        return False

    def run(self, once: bool = False) -> bool:
        """Passes until ``wait`` says stop (or one pass with ``once``); the last pass's ok."""
        while True:
            started = self.runtime.mono()
            ok = self.one_pass()
            if once:
                return ok
            # A fixed schedule: the pass's own work counts against the interval.
            if self.wait(max(0.0, self.interval_s - (self.runtime.mono() - started))):
                return ok

    def serve(self, pid: int, once: bool, stopped: Callable[[], int | None]) -> int:
        """The daemon proper: announce, run, then the exit code. ``stopped`` gives the
        stop signal received, if any (:attr:`Stop.signum`)."""
        self.announce(pid, once)
        ok = self.run(once=once)
        signum = stopped()
        if signum is not None and once:
            return 128 + signum  # --once never destroys on exit; the pass finished first
        if signum is not None:
            return self.shutdown(signum)
        return 0 if ok else 1

    def shutdown(self, signum: int) -> int:
        """The shutdown rule; returns the exit code."""
        name = signal_name(signum)
        if self.keep_on_exit:
            self._say(f"{name}: leaving sessions running (--keep-on-exit)")
            for session_id, session in sorted(self.guarded().items()):
                self.runtime.log(
                    f"  session={session_id} "
                    f"reservation_ends_at={session.recorded('reservation_ends_at')} "
                    f"hard_max_at={session.recorded('hard_max_at')}"
                )
            return 128 + signum
        self._say(f"{name}: destroying every guarded session before exit")
        outcomes = self.enforcer.end_all(f"watch stopped by {name}")
        left = [o for o in outcomes if o.result == "failed"]
        if left:
            self._say(f"{len(left)} sessions could not be destroyed: run cleanup-orphans")
            return 1
        self._say(f"{name}: {len(outcomes)} sessions destroyed and confirmed gone")
        return 128 + signum


def outcome_line(now: datetime, outcome: Outcome) -> str:
    """One log line for an enforcer outcome (pure: the caller passes the time)."""
    action = outcome.action
    parts = [
        iso(now) or "",
        action.kind if outcome.result != "failed" else f"{action.kind}_failed",
        f"session={action.session_id or '-'}",
        f"provider={action.provider}",
        f"instance={action.instance_id or '-'}",
        f"reason={action.reason}",
        f"result={outcome.result}",
    ]
    detail = outcome.error or action.detail
    return " ".join(parts) + (f": {detail}" if detail else "")


def alert_event(now: datetime, outcome: Outcome) -> JSONObject:
    """The webhook's JSON for an enforcer outcome (pure: the caller passes the time)."""
    action = outcome.action
    return {
        "time": iso(now),
        "event": action.kind,
        "result": outcome.result,
        "reason": action.reason,
        "session": action.session_id,
        "provider": action.provider,
        "instance": action.instance_id,
        "detail": outcome.error or action.detail,
    }
