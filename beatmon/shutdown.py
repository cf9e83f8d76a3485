"""Stopping a long-running command cleanly on SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)


@contextmanager
def stop_on_signals(stopping: threading.Event) -> Iterator[None]:
    """Turn the first SIGINT or SIGTERM into ``stopping``; a second SIGINT aborts.

    Outside the main thread signals cannot be caught, and this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logger.info(
            "%s received: finishing the work in hand, then stopping",
            signal.Signals(signum).name,
        )
        stopping.set()

    previous = {
        signum: signal.signal(signum, handle)
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
