"""Click parameter types shared by commands."""

from __future__ import annotations

from typing import Any

import click

from gpushopper.model.units import parse_duration


class DurationType(click.ParamType):
    """``90s``, ``45m``, ``2h``, ``1h30m`` -> seconds (float), always longer than zero.

    A bare number is refused (``--interval 30`` once meant 30 hours) unless the option is
    named after its unit: ``HOURS`` takes ``--hours 3`` as three hours.
    """

    name = "DURATION"

    def __init__(self, bare_unit: str | None = None) -> None:
        self.bare_unit = bare_unit

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value, bare_unit=self.bare_unit)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationType()
HOURS = DurationType(bare_unit="h")  # --hours 3 is three hours: the unit is the flag's name


class IdType(click.ParamType):
    """A session, job or offer id, or a unique prefix of one, turned into the whole id
    (the one resolver, gpushopper.model.ids, behind core's and the registry's lookups)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = f"{kind.upper()}_ID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from gpushopper.cli import App

        app = ctx.find_object(App) if ctx is not None else None
        if app is None:
            app = App()
        text = str(value)
        if self.kind == "session":
            from gpushopper.core.sessions import resolve_session_id

            return resolve_session_id(app.store, text)
        if self.kind == "job":
            from gpushopper.core.jobs import resolve_job_id

            return resolve_job_id(app.store, text)
        from gpushopper.cli.filters import offer_cache
        from gpushopper.providers.registry import resolve_offer_id

        return resolve_offer_id(text, offer_cache(app).known_ids)


SESSION_ID = IdType("session")
JOB_ID = IdType("job")
OFFER_ID = IdType("offer")
HARD_MAX = "{hard_max}"


def configured_hard_max() -> str:
    """``safety.hard_max_hours`` as this home has it (``12 h`` by default), for help texts."""
    try:
        from gpushopper.model.units import format_duration
        from gpushopper.state.config import Settings
        from gpushopper.state.paths import resolve_paths

        hours = Settings(paths=resolve_paths()).get("safety.hard_max_hours")
        return f"{format_duration(float(hours) * 3600)} hard maximum (safety.hard_max_hours)"
    except Exception:  # noqa: BLE001 - a help text never fails on a broken setting
        return "hard maximum (safety.hard_max_hours)"


class ConfiguredHelp(click.Command):
    """A command whose help names the configured hard maximum where it says {hard_max}."""

    def _filled(self) -> str | None:
        return self.help.replace(HARD_MAX, configured_hard_max()) if self.help else self.help

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        original, self.help = self.help, self._filled()
        try:
            super().format_help_text(ctx, formatter)
        finally:
            self.help = original

    def get_short_help_str(self, limit: int = 45) -> str:
        original, self.help = self.help, self._filled()
        try:
            return super().get_short_help_str(limit)
        finally:
            self.help = original


class DashCommand(click.Command):
    """A command whose words after the first ``--`` are not ours (``run``'s COMMAND,
    ``benchmark schedule add``'s RUN-ARGS): they are kept apart, never parsed as our options
    or arguments; :func:`after_dash` hands them over."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        cut = args.index("--") if "--" in args else len(args)
        ctx.meta["gs_after_dash"] = tuple(args[cut + 1 :])
        return super().parse_args(ctx, args[:cut])


def after_dash() -> tuple[str, ...]:
    """The words after the first ``--`` of the running DashCommand (empty without one)."""
    words: tuple[str, ...] = click.get_current_context().meta.get("gs_after_dash", ())
    return words
