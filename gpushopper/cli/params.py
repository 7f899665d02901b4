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
