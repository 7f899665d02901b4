"""The root Click group, global options and the App object handed to commands."""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import click

from gpushopper import __version__

if TYPE_CHECKING:
    from gpushopper.model.session import Session
    from gpushopper.providers.base import Provider
    from gpushopper.state.config import Settings
    from gpushopper.state.paths import Paths
    from gpushopper.state.store import StateStore

# name -> (module, attribute, one-line help). Modules load only when their command runs,
# so `gpu-shopper --help` stays fast.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "benchmark": ("gpushopper.cli.benchmark", "benchmark", "Measure GPUs; rank by cost per work."),
    "cleanup-orphans": ("gpushopper.cli.cleanup", "cleanup_orphans", "Find and destroy strays."),
    "config": ("gpushopper.cli.config", "config", "Show and change settings."),
    "costs": ("gpushopper.cli.costs", "costs", "What rentals cost, per session and month."),
    "doctor": ("gpushopper.cli.doctor", "doctor", "Check config, keys, state, providers, SSH."),
    "inventory": ("gpushopper.cli.inventory", "inventory", "Offers, cheapest reliable first."),
    "offer-health": ("gpushopper.cli.templates", "offer_health", "Boot failures per offer."),
    "jobs": ("gpushopper.cli.run", "jobs", "List, show, follow, attach, cancel jobs."),
    "provision": ("gpushopper.cli.provision", "provision", "Rent, verify, hand off SSH."),
    "run": ("gpushopper.cli.run", "run", "Run one job: rent, upload, run, collect, destroy."),
    "sandbox": ("gpushopper.cli.sandbox", "sandbox", "A practice market: no account, no money."),
    "sessions": ("gpushopper.cli.sessions", "sessions", "List, inspect, extend, end rentals."),
    "shutdown": ("gpushopper.cli.sessions", "shutdown", "Destroy a session's instance now."),
    "templates": ("gpushopper.cli.templates", "templates", "Launch templates and OS images."),
    "transfer": ("gpushopper.cli.transfer", "transfer", "Copy files to and from a session."),
    "watch": ("gpushopper.cli.watch", "watch", "Daemon: enforce timers, clean up."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(entry[0])
        return getattr(module, entry[1])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class App:
    """What every command needs, built lazily: paths, settings, state, providers, clock.

    ``mono`` and ``sleep`` are what every wait (boot polling, SSH retries, destroy
    confirmation) uses, so tests can run timeouts on a fake clock.
    """

    mono: Callable[[], float] = staticmethod(time.monotonic)
    sleep: Callable[[float], None] = staticmethod(time.sleep)

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        self.environ = dict(os.environ) if environ is None else environ
        self._paths: Paths | None = None
        self._settings: Settings | None = None
        self._store: StateStore | None = None
        self.clock: Callable[[], datetime] = _clock_from_env(self.environ)

    @property
    def paths(self) -> Paths:
        if self._paths is None:
            from gpushopper.state.paths import resolve_paths

            self._paths = resolve_paths(self.environ)
        return self._paths

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from gpushopper.state.config import Settings

            self._settings = Settings(paths=self.paths, environ=self.environ)
            self._settings.register_secrets()
        return self._settings

    @property
    def store(self) -> StateStore:
        if self._store is None:
            from gpushopper.state.store import StateStore

            self._store = StateStore(self.paths.state_file)
        return self._store

    def sessions(self) -> dict[str, Session]:
        """The sessions that can be trusted; each broken record is named on stderr and
        skipped (one bad record must not stop a command)."""
        from gpushopper.cli.output import warn

        records = self.store.session_records()
        for session_id, why in sorted(records.problems.items()):
            warn(f"session {session_id} in {self.paths.state_file} skipped: it {why}")
        return records.valid

    def provider(self, name: str) -> Provider:
        """A configured provider client; raises MissingCredentials when it has none."""
        from gpushopper.core.journal import JournaledProvider
        from gpushopper.model.errors import StateError
        from gpushopper.providers.registry import provider_class
        from gpushopper.state.fs import LinkRefused, refuse_link

        try:
            # Before anything is rented: a planted journal link would get our lines.
            refuse_link(self.paths.journal_file, "journal")
        except LinkRefused as exc:
            raise StateError(str(exc.strerror)) from None
        return JournaledProvider.wrap(
            provider_class(name).from_settings(self.settings), self.paths.journal_file
        )


def _clock_from_env(environ: dict[str, str]) -> Callable[[], datetime]:
    """The wall clock, optionally shifted for tests of long timers.

    ``GPU_SHOPPER_CLOCK_OFFSET`` (a duration such as ``13h``) moves "now" forward, so a
    12-hour limit can be tested without waiting 12 hours.
    """
    from gpushopper.model.units import add_seconds, parse_duration, utcnow

    offset_text = environ.get("GPU_SHOPPER_CLOCK_OFFSET")
    if not offset_text:
        return utcnow
    offset = parse_duration(offset_text, allow_zero=True)
    return lambda: add_seconds(utcnow(), offset)


pass_app = click.make_pass_decorator(App, ensure=True)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example: gpu-shopper inventory --profile flux-lora --limit 5",
)
@click.version_option(__version__, "--version", prog_name="gpu-shopper")
@click.option("-v", "--verbose", is_flag=True, help="Log provider calls; show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Shop Vast.ai and TensorDock for the best reliable GPU, rent it, hand off SSH,
    track the cost, and leave nothing running."""
    from gpushopper.cli.output import sandbox_banner, set_verbose, setup_logging

    if verbose:
        set_verbose(True)
    setup_logging()
    sandbox_banner()
    ctx.obj = App()


def main(argv: list[str] | None = None) -> None:
    from gpushopper.cli.output import run

    code = run(cli, argv)
    try:  # flush now: a closed pipe must not print a traceback on the way out
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        from gpushopper.core.interrupts import silence_std_streams

        silence_std_streams()
    sys.exit(code)
