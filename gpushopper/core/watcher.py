"""The ``watch`` daemon's loop and shutdown rule, on an injected clock.

Passes run on a fixed schedule (a pass's own work counts against the interval). A pass
never raises: provider and state errors are logged and retried on the next pass, and
the loop only ends when ``wait`` reports a stop (a signal, or a closed output pipe). On
a stop every guarded session is destroyed and confirmed gone, unless ``keep_on_exit``;
the exit code is then 128 + the signal (130 for Ctrl-C), or 1 when something could not
be destroyed. ``watch --once`` is one pass: 0 when it saw and enforced everything, 1
when it was blind anywhere (a provider not listed, a broken record, a failed action).

``mono`` and ``wait`` are what the loop runs on, so tests drive it on a fake clock
without sleeping: ``wait(seconds)`` returns True when the daemon should stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gpushopper.core.interrupts import signal_name
from gpushopper.model.errors import GpuShopperError
from gpushopper.model.session import STATUSES
from gpushopper.model.units import format_duration, iso

if TYPE_CHECKING:
    from gpushopper.core.enforcer import Enforcer, Outcome
    from gpushopper.core.lifecycle import Policy
    from gpushopper.core.runtime import Runtime
    from gpushopper.model.session import Session
    from gpushopper.state.store import StateStore


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
    ) -> None:
        self.enforcer = enforcer
        self.policy = policy
        self.interval_s = interval_s
        self.runtime = runtime  # its log is the watch log; wait is its sleep
        self.wait = wait or _sleep_then_go_on
        self.wall = wall
        self.metrics = metrics or Metrics(None)
        self.keep_on_exit = keep_on_exit
        self.passes = 0

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
