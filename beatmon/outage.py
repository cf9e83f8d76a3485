"""Telling the operator once that Kafka went away, and once that it is back.

kafka-python retries on its own: it reconnects with a randomised exponential
backoff, capped at ``RECONNECT_BACKOFF_MAX_MS``, and retries a produce request
until the producer's delivery timeout. Left alone it says nothing useful
during an outage; the clients of beatmon say it once through
:class:`OutageLog`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

# kafka-python's default cap is 30 s: after a long outage a client could wait
# that long to try again once the broker is back. One second keeps recovery
# prompt and costs a connection attempt a second while the broker is away.
RECONNECT_BACKOFF_MAX_MS = 1000
# How long acknowledgements may be missing before an outage is declared.
UNREACHABLE_AFTER_S = 5.0


class OutageLog:
    """Logs once when ``what`` stops answering and once when it answers again.

    Safe to call from several threads: producer acknowledgements arrive on
    the producer's network thread.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.clock = clock
        self.outages = 0
        self._lock = threading.Lock()
        self._down_since: float | None = None

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def unreachable(self, since: float, detail: str) -> None:
        """Say, once per outage, that nothing answered since ``since`` (clock s)."""
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = since
            self.outages += 1
        self.logger.warning("%s unreachable: %s", self.what, detail)

    def reachable(self, detail: str) -> None:
        """Say that ``what`` answers again, if an outage was declared."""
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            self.logger.info(
                "%s reachable again after %.1f s: %s",
                self.what,
                self.clock() - since,
                detail,
            )
