"""Long-running commands stop cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType


def stop_on_signals(log: logging.Logger, doing: str = "stopping") -> threading.Event:
    """An event set when SIGTERM or SIGINT arrives (logged as ``received SIGTERM: <doing>``);
    the command's loop watches it. Call from the main thread."""
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: %s", signal.Signals(signum).name, doing)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return stop
