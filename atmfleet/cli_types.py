"""Command-line values every part parses the same way, with the project's own messages.

A click parameter type that raises :class:`~atmfleet.errors.UsageError` (not click's
``BadParameter``) makes a bad value read like every other refusal of the ``atmfleet``
command: ``atmfleet: error: --date '2026-13-45': ...`` and exit code 2.
"""

from __future__ import annotations

import re
from datetime import date
from typing import TYPE_CHECKING, Any

import click

from atmfleet.errors import UsageError

if TYPE_CHECKING:  # newer click declares ParamType generic over the converted value
    _DayType = click.ParamType[date]
else:
    _DayType = click.ParamType

_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def parse_day(text: str, option: str = "--date") -> date:
    """A local calendar day ``YYYY-MM-DD``; the message names the option and what is wrong."""
    refusal = f"{option} {text!r}: not a date; give a local calendar day as YYYY-MM-DD"
    m = _DAY.fullmatch(text.strip())
    if m is None:
        raise UsageError(refusal)
    year, month, day = (int(g) for g in m.groups())
    if not 1 <= month <= 12:
        raise UsageError(f"{refusal} (there is no month {month})")
    try:
        return date(year, month, day)
    except ValueError:
        raise UsageError(f"{refusal} ({year}-{month:02d} has no day {day})") from None


class Day(_DayType):
    """``type=Day()`` on an option: the value as a :class:`datetime.date`."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        option = param.opts[0] if param is not None and param.opts else "--date"
        return parse_day(str(value), option)
