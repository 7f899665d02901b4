"""Click parameter types shared by commands."""

from __future__ import annotations

from typing import Any

import click

from gpushopper.core.units import parse_duration


class DurationType(click.ParamType):
    """``90s``, ``45m``, ``2h``, ``1h30m`` -> seconds (float)."""

    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} must be longer than zero", param, ctx)
        return seconds


DURATION = DurationType()
