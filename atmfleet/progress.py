"""Progress of a long step: a bar on a terminal (tqdm), a log line every few seconds
otherwise (a log file, CI, a pipe), so a long wait never looks like a hang.

tqdm draws and rate-limits the bar; off a terminal its carriage returns would pile up in a
log, so there the reporter writes whole lines itself, at most one per ``every_s``, and
always a last one when the step ends.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Never, TextIO

from tqdm import tqdm

#: Seconds between two log lines when the output is not a terminal.
LOG_EVERY_S = 5.0


class StepProgress:
    """``update(done, note)`` as often as convenient; ``close()`` at the end.

    ``label`` starts each log line (``"history  "``); ``unit`` names what ``total`` counts;
    ``describe(done, total)`` turns the figures into words for the log line (default:
    ``"1,234 of 5,678 unit"``).
    """

    def __init__(
        self,
        label: str,
        total: float,
        unit: str,
        *,
        echo: Callable[[str], None],
        stream: TextIO | None = None,
        tty: bool | None = None,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        describe: Callable[[float, float], str] | None = None,
    ) -> None:
        self.label = label
        self.total = max(total, 0.0)
        self.unit = unit
        self._echo = echo
        self._clock = clock
        self._every = every_s
        self._describe = describe or (lambda d, t: f"{d:,.0f} of {t:,.0f} {unit}")
        self._done = 0.0
        self._note = ""
        self._closed = False
        stream = stream if stream is not None else sys.stderr
        self._bar: tqdm[Never] | None = None
        if tty if tty is not None else _isatty(stream):
            self._bar = tqdm(
                total=self.total, desc=label.strip(), unit=unit, file=stream,
                dynamic_ncols=True, leave=True, mininterval=0.5, unit_scale=False,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {n:,.0f}/{total:,.0f} {unit} "
                "[{elapsed}<{remaining}]{postfix}",
            )  # fmt: skip
        self._next_line = clock() + every_s

    def update(self, done: float, note: str = "") -> None:
        """``done`` so far (absolute, not an increment), ``note``: extra words (``"N stored"``)."""
        done = min(max(done, 0.0), self.total) if self.total else max(done, 0.0)
        self._note = note
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(done - self._done)
            self._done = done
            return
        self._done = done
        now = self._clock()
        if now >= self._next_line:
            self._line()
            self._next_line = now + self._every

    def close(self) -> None:
        """The last state: the bar is completed to where it got, or one last log line."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            self._line()

    def _line(self) -> str:
        share = f"{self._done / self.total:4.0%}" if self.total else "   –"
        text = f"{self.label} {share}  {self._describe(self._done, self.total)}"
        if self._note:
            text += f", {self._note}"
        self._echo(text)
        return text


def _isatty(stream: TextIO) -> bool:
    """A terminal that says how wide it is (a bar needs the columns; without them, lines)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns >= 40
    except (AttributeError, ValueError, OSError):
        return False
