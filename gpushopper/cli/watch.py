"""``gpu-shopper watch``: the foreground daemon that enforces timers and cleans up."""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.params import DURATION
from gpushopper.model.units import iso


def watch_holder(app: App) -> int | None:
    """The pid of the ``watch`` running for this home now (0: one is starting), or None."""
    from gpushopper.state.pidlock import holder

    return holder(app.paths.pid_file)


START_WATCH_HINT = (
    "start it: 'gpu-shopper watch' in another terminal, or install the systemd user unit "
    "or the cleanup-orphans cron line (README, 'Running the safety net')"
)


def watch_note(app: App) -> str:
    """One line for the end of a rental: is anything here enforcing its deadlines?"""
    pid = watch_holder(app)
    if pid is not None:
        return f"watch is running for this home (pid {pid or 'starting'}): it enforces this session's deadlines"
    return (
        f"watch is not running for this home ({app.paths.data_dir}); only the on-instance "
        f"deadline ends this rental if you forget it: {START_WATCH_HINT}"
    )


def _line(app: App, outcome: Any) -> str:
    from gpushopper.core.watcher import outcome_line

    return outcome_line(app.clock(), outcome)


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
@click.option(
    "--once",
    is_flag=True,
    help="Run one pass and exit (no destroy-on-exit); exit 1 if anything was not seen.",
)
@click.option(
    "--keep-on-exit",
    is_flag=True,
    help="On Ctrl-C/SIGTERM/SIGHUP leave sessions running and print their deadlines.",
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
    """Enforce reservations and the hard maximum, destroy orphans, and on Ctrl-C, SIGTERM
    or SIGHUP destroy every guarded session (unless --keep-on-exit); it says so at start.

    Logs one line per action to stderr. Provider and network errors are logged and
    retried on the next pass, never fatal. Only one watch runs per home folder. Refuses to
    start with no provider credentials (exit 2). --once exits 1 when any provider could not
    be listed or any session could not be enforced; a stop exits 128 + the signal.
    """

    from gpushopper.core.enforcer import Enforcer
    from gpushopper.core.interrupts import KEEP_IGNORED, silence_std_streams
    from gpushopper.core.runtime import Runtime
    from gpushopper.model.errors import NoProviderConfigured

    if metrics_file and not Path(metrics_file).expanduser().parent.is_dir():
        from gpushopper.model.errors import UsageError

        raise UsageError(
            f"--metrics-file {metrics_file}: no such folder "
            f"{Path(metrics_file).expanduser().parent} (it is not created for you)"
        )

    # A self-pipe, not a threading.Event: a signal handler that takes a lock the interrupted
    # code holds deadlocks, and os.write never does. Opened once the pidfile is ours.
    wake_r = wake_w = -1
    received: list[int] = []

    def request_stop(signum: int) -> None:
        received.append(signum)
        try:
            os.write(wake_w, b"!")
        except OSError:
            pass  # the pipe is full: a wake-up is pending already

    def wait(seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) when a stop was requested."""
        if not received:
            select.select([wake_r], [], [], max(0.0, seconds))
        return bool(received)

    def emit(message: str) -> None:
        from gpushopper.model.redact import redact

        try:
            click.echo(redact(message), err=True)  # the watch log is kept: never a secret in it
        except OSError:  # the log reader went away (| head): a stop, like SIGPIPE
            silence_std_streams()
            request_stop(signal.SIGPIPE)

    enforcer = Enforcer(
        store=app.store,
        provider_factory=app.provider,
        providers=list(app.settings.get("defaults.providers")),
        runtime=Runtime.of(app, log=emit),
        ssh_config_path=app.paths.ssh_config_file,
    )
    if not enforcer.configured():
        raise NoProviderConfigured()  # guarding nothing is not guarding: exit 2
    from gpushopper.state.pidlock import PidLock

    lock = PidLock(app.paths.pid_file)
    lock.acquire()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    previous: dict[int, Any] = {}
    try:
        for sig in (int(signal.SIGTERM), int(signal.SIGINT), int(signal.SIGHUP)):
            if signal.getsignal(sig) is signal.SIG_IGN and sig in KEEP_IGNORED:
                continue  # nohup: the user asked to outlive the terminal
            # Only noted: a second Ctrl-C during the shutdown destroys cannot cut them short.
            previous[sig] = signal.signal(sig, lambda signum, frame: request_stop(signum))
        return _run(
            app,
            enforcer,
            emit=emit,
            wait=wait,
            received=received,
            interval=interval,
            once=once,
            keep_on_exit=keep_on_exit,
            metrics_file=metrics_file,
            include_foreign=include_foreign,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.release()
        os.close(wake_r)
        os.close(wake_w)


def _run(
    app: App,
    enforcer: Any,
    *,
    emit: Callable[[str], None],
    wait: Callable[[float], bool],
    received: list[int],
    interval: float,
    once: bool,
    keep_on_exit: bool,
    metrics_file: str | None,
    include_foreign: bool,
) -> int:
    """The daemon proper, with the pidfile held and the signals routed to ``wait``."""
    import time

    from gpushopper.core.alerts import Alerter
    from gpushopper.core.enforcer import policy_from_settings
    from gpushopper.core.runtime import Runtime
    from gpushopper.core.watcher import Metrics, Watcher

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

    enforcer.on_outcome = on_outcome
    watcher = Watcher(
        enforcer=enforcer,
        policy=policy_from_settings(app.settings, include_foreign),
        interval_s=interval,
        # The loop waits in real time (on the wake pipe), so it measures real time too.
        runtime=Runtime(clock=app.clock, mono=time.monotonic, log=emit),
        wait=wait,
        metrics=metrics,
        keep_on_exit=keep_on_exit,
    )
    watcher.announce(os.getpid(), once)
    ok = watcher.run(once=once)
    if received and once:
        return 128 + received[0]  # --once never destroys on exit; the pass finished first
    if received:
        return watcher.shutdown(received[0])
    return 0 if ok else 1
