"""``gpu-shopper watch``: the foreground daemon that enforces timers and cleans up."""

from __future__ import annotations

import os
import signal

import click

from gpushopper.cli import App, pass_app
from gpushopper.cli.params import DURATION


def watch_holder(app: App) -> int | None:
    """The pid of the ``watch`` running for this home now (0: one is starting), or None."""
    from gpushopper.state.pidlock import holder

    return holder(app.paths.pid_file)


def watch_note(app: App) -> str:
    """One line for the end of a rental: is anything here enforcing its deadlines?"""
    from gpushopper.core.watcher import watch_note as note

    return note(watch_holder(app), app.paths.data_dir)


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

    import time

    from gpushopper.core.alerts import Alerter
    from gpushopper.core.enforcer import Enforcer, policy_from_settings
    from gpushopper.core.interrupts import silence_std_streams
    from gpushopper.core.runtime import Runtime
    from gpushopper.core.watcher import Metrics, Stop, Watcher, metrics_path
    from gpushopper.model.errors import NoProviderConfigured
    from gpushopper.model.redact import redact
    from gpushopper.state.pidlock import PidLock

    metrics = Metrics(metrics_path(metrics_file))
    stop = Stop()

    def emit(message: str) -> None:
        try:
            click.echo(redact(message), err=True)  # the watch log is kept: never a secret in it
        except OSError:  # the log reader went away (| head): a stop, like SIGPIPE
            silence_std_streams()
            stop.request(signal.SIGPIPE)

    enforcer = Enforcer(
        store=app.store,
        provider_factory=app.provider,
        providers=list(app.settings.get("defaults.providers")),
        runtime=Runtime.of(app, log=emit),
        ssh_config_path=app.paths.ssh_config_file,
    )
    if not enforcer.configured():
        raise NoProviderConfigured()  # guarding nothing is not guarding: exit 2
    lock = PidLock(app.paths.pid_file)
    lock.acquire()
    try:
        with stop:
            watcher = Watcher(
                enforcer=enforcer,
                policy=policy_from_settings(app.settings, include_foreign),
                interval_s=interval,
                # The loop waits in real time (on the stop pipe), so it measures real time too.
                runtime=Runtime(clock=app.clock, mono=time.monotonic, log=emit),
                wait=stop.wait,
                metrics=metrics,
                keep_on_exit=keep_on_exit,
                alert=Alerter(app.settings.get("alerts.webhook_url"), emit).send,
            )
            enforcer.on_outcome = watcher.record
            return watcher.serve(os.getpid(), once, lambda: stop.signum)
    finally:
        lock.release()
