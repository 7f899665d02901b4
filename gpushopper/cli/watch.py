"""``gpu-shopper watch``: the foreground daemon that enforces timers and cleans up."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.params import DURATION
from gpushopper.core.errors import GpuShopperError, StateError
from gpushopper.core.sessions import LIVE
from gpushopper.core.units import iso


class PidLock:
    """One watch per home folder: an exclusive lock on the pidfile for our lifetime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        from gpushopper.state.fs import LinkRefused, open_nofollow, private_dir

        private_dir(self.path.parent)
        try:
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except LinkRefused:
            raise StateError(
                f"pidfile {self.path} is a symbolic link; gpu-shopper does not follow links "
                "in its own folders (another user may have planted it): move it away"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateError(
                f"another 'gpu-shopper watch' is running for this home (pid {holder}, pidfile {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            finally:
                os.close(self.fd)
                self.fd = None


class Metrics:
    """Prometheus text format for node_exporter's textfile collector, written atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.actions: dict[str, int] = {}
        self.last_success: float | None = None
        self.ticks_failed = 0

    def count(self, kind: str) -> None:
        self.actions[kind] = self.actions.get(kind, 0) + 1

    def write(self, app: App, orphans: int) -> None:
        if self.path is None:
            return
        from gpushopper.state.atomic import atomic_write_text

        by_status: dict[str, int] = {}
        rate = 0.0
        try:
            sessions = app.store.sessions()
        except GpuShopperError:
            sessions = {}
        for record in sessions.values():
            status = record.get("status") or "unknown"
            by_status[status] = by_status.get(status, 0) + 1
            if status in LIVE and record.get("price_per_hour"):
                rate += float(record["price_per_hour"])
        lines = [
            "# HELP gpu_shopper_sessions Sessions in the state file by status.",
            "# TYPE gpu_shopper_sessions gauge",
        ]
        for status in (
            "creating",
            "provisioning",
            "verifying",
            "running",
            "ending",
            "ended",
            "failed",
        ):
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
        ]
        atomic_write_text(self.path, "\n".join(lines) + "\n", mode=0o644, make_parents=False)


def _line(app: App, outcome: Any) -> str:
    action = outcome.action
    parts = [
        iso(app.clock()) or "",
        action.kind if outcome.result != "failed" else f"{action.kind}_failed",
        f"session={action.session_id or '-'}",
        f"provider={action.provider}",
        f"instance={action.instance_id or '-'}",
        f"reason={action.reason}",
        f"result={outcome.result}",
    ]
    detail = outcome.error or action.detail
    return " ".join(parts) + (f": {detail}" if detail else "")


@click.command(
    epilog="""Examples:

\b
  gpu-shopper watch                      # foreground; Ctrl-C destroys guarded sessions
  gpu-shopper watch --keep-on-exit --metrics-file /var/lib/node_exporter/gpu_shopper.prom
  gpu-shopper watch --once               # one pass, for cron
""",
)
@click.option(
    "--interval",
    type=DURATION,
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="Time between passes.",
)
@click.option("--once", is_flag=True, help="Run one pass and exit (no destroy-on-exit).")
@click.option(
    "--keep-on-exit",
    is_flag=True,
    help="On SIGTERM/SIGINT leave sessions running and print their deadlines.",
)
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="Write Prometheus text metrics here after each pass.",
)
@click.option(
    "--include-foreign", is_flag=True, help="Also destroy instances labelled by another install id."
)
@pass_app
def watch(
    app: App,
    interval: float,
    once: bool,
    keep_on_exit: bool,
    metrics_file: str | None,
    include_foreign: bool,
) -> int:
    """Enforce reservations and the hard maximum, destroy orphans, and on SIGTERM/SIGINT
    destroy every guarded session (unless --keep-on-exit).

    Logs one line per action to stderr. Provider and network errors are logged and
    retried on the next pass, never fatal. Only one watch runs per home folder.
    """
    from gpushopper.core.alerts import Alerter
    from gpushopper.core.enforcer import Enforcer, policy_from_settings

    if metrics_file and not Path(metrics_file).expanduser().parent.is_dir():
        from gpushopper.core.errors import UsageError

        raise UsageError(
            f"--metrics-file {metrics_file}: no such folder "
            f"{Path(metrics_file).expanduser().parent} (it is not created for you)"
        )

    def emit(message: str) -> None:
        from gpushopper.core.redact import redact

        click.echo(redact(message), err=True)  # the watch log is kept: never a secret in it

    lock = PidLock(app.paths.pid_file)
    lock.acquire()
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    alerter = Alerter(app.settings.get("alerts.webhook_url"), emit)
    metrics = Metrics(Path(metrics_file) if metrics_file else None)

    def on_outcome(outcome: Any) -> None:
        metrics.count(outcome.action.kind if outcome.result != "failed" else "failed")
        line = _line(app, outcome)
        action = outcome.action
        alerter.send(
            line,
            {
                "time": iso(app.clock()),
                "event": action.kind,
                "result": outcome.result,
                "reason": action.reason,
                "session": action.session_id,
                "provider": action.provider,
                "instance": action.instance_id,
                "detail": outcome.error or action.detail,
            },
        )

    enforcer = Enforcer(
        store=app.store,
        provider_factory=app.provider,
        providers=list(app.settings.get("defaults.providers")),
        clock=app.clock,
        sleep=app.sleep,
        mono=app.mono,
        ssh_config_path=app.paths.ssh_config_file,
        on_outcome=on_outcome,
    )
    emit(f"{iso(app.clock())} watch started pid={os.getpid()} interval={interval:g}s")
    if not enforcer.configured():
        emit(f"{iso(app.clock())} warning: no provider has credentials; nothing can be watched")
    policy = policy_from_settings(app.settings, include_foreign)
    try:
        while True:
            tick_started = time.monotonic()
            try:
                report = enforcer.tick(policy)
                for name, message in report.provider_errors.items():
                    emit(
                        f"{iso(app.clock())} error provider={name}: {message} (retrying next pass)"
                    )
                orphans = sum(1 for o in report.outcomes if o.action.kind == "destroy_orphan")
                if report.ok:
                    metrics.last_success = time.time()
                else:
                    metrics.ticks_failed += 1
                metrics.write(app, orphans)
            except GpuShopperError as exc:
                metrics.ticks_failed += 1
                emit(f"{iso(app.clock())} error: {exc} (retrying next pass)")
            except Exception as exc:  # the daemon must outlive surprises
                metrics.ticks_failed += 1
                emit(f"{iso(app.clock())} error: {type(exc).__name__}: {exc} (retrying next pass)")
            # A fixed schedule: the pass's own work counts against the interval.
            if once or stop.wait(max(0.0, interval - (time.monotonic() - tick_started))):
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            if received:
                name = signal.Signals(received[0]).name
                if keep_on_exit:
                    emit(f"{iso(app.clock())} {name}: leaving sessions running (--keep-on-exit)")
                    for session_id, record in sorted(app.store.sessions().items()):
                        if record.get("status") in LIVE:
                            emit(
                                f"  session={session_id} reservation_ends_at={record.get('reservation_ends_at')} "
                                f"hard_max_at={record.get('hard_max_at')}"
                            )
                else:
                    emit(f"{iso(app.clock())} {name}: destroying every guarded session before exit")
                    outcomes = enforcer.end_all(f"watch stopped by {name}")
                    left = [o for o in outcomes if o.result == "failed"]
                    if left:
                        emit(
                            f"{iso(app.clock())} {len(left)} sessions could not be destroyed: run cleanup-orphans"
                        )
                        return 1
        finally:
            lock.release()
    return 0
