"""Progress of a long step: a bar on a terminal, whole log lines every few seconds
elsewhere, and always a last line (so a log shows where the step ended)."""

from __future__ import annotations

import io

from atmfleet.progress import StepProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TestOffATerminal:
    def test_one_line_every_few_seconds_and_a_last_one(self) -> None:
        lines: list[str] = []
        clock = Clock()
        p = StepProgress("history  ", 36.0, "h", echo=lines.append, tty=False, every_s=5.0,
                         clock=clock, describe=lambda d, t: f"{d:.1f} of {t:.1f} hours")  # fmt: skip
        for second in range(12):  # an update every half second for 6 s
            clock.now = second / 2
            p.update(second, f"{second * 100:,} sent")
        assert lines == ["history    28%  10.0 of 36.0 hours, 1,000 sent"]
        clock.now = 9.0
        p.update(36.0, "3,600 sent")
        p.close()
        p.close()  # closing twice writes nothing more
        assert lines[1:] == ["history   100%  36.0 of 36.0 hours, 3,600 sent"]

    def test_values_past_the_total_are_held_at_it(self) -> None:
        lines: list[str] = []
        p = StepProgress("storing  ", 200, "messages", echo=lines.append, tty=False)
        p.update(250)
        p.close()
        assert lines == ["storing   100%  200 of 200 messages"]

    def test_nothing_to_do_says_so_without_a_division_by_zero(self) -> None:
        lines: list[str] = []
        p = StepProgress("storing  ", 0, "messages", echo=lines.append, tty=False)
        p.update(0)
        p.close()
        assert lines == ["storing      –  0 of 0 messages"]

    def test_a_stream_that_is_not_a_terminal_is_detected(self) -> None:
        lines: list[str] = []
        stream = io.StringIO()
        p = StepProgress("storing  ", 10, "messages", echo=lines.append, stream=stream)
        p.update(10)
        p.close()
        assert stream.getvalue() == "" and len(lines) == 1


class TestOnATerminal:
    def test_a_bar_is_drawn_on_the_stream_and_nothing_is_logged(self) -> None:
        lines: list[str] = []
        stream = io.StringIO()
        p = StepProgress("storing  ", 2000, "messages", echo=lines.append, stream=stream, tty=True)
        p.update(500, "x")
        p.update(2000, "2,000 stored")
        p.close()
        out = stream.getvalue()
        assert lines == []
        assert "storing 100%|" in out and "2,000/2,000 messages" in out
        assert "2,000 stored" in out and "\r" in out


def on_a_pty(columns: int) -> str:
    """What a StepProgress prints on a pseudo-terminal ``columns`` wide."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    code = (
        "from atmfleet.progress import StepProgress\n"
        "p = StepProgress('history  ', 48, 'h', echo=print)\n"
        "for i in range(0, 49, 12):\n"
        "    p.update(i, f'{i * 100:,} sent')\n"
        "p.close()\n"
    )
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=follower, stdout=follower,
                            stderr=follower)  # fmt: skip
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(30) == 0
    return out.decode()


class TestOnARealTerminal:
    def test_a_terminal_gets_a_bar(self) -> None:
        out = on_a_pty(100)
        assert "history 100%|" in out and "48/48 h" in out and "4,800 sent" in out
        assert "█" in out

    def test_a_terminal_that_says_no_width_gets_lines(self) -> None:
        out = on_a_pty(0)
        assert "|" not in out
        assert "history   100%  48 of 48 h, 4,800 sent" in out
