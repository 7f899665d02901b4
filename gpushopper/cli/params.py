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
