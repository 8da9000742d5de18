"""Log lines that a peer can provoke at will, written at most once per interval per kind.

A host that opens thousands of connections over a limit, or sends garbage in a
loop, must not be able to fill the disk with log lines: each kind of event is
logged once per interval, with the count of the ones left out since.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimitedLog:
    """Writes one line per ``key`` per ``interval`` seconds, saying how many it skipped.

    Parameters
    ----------
    logger
        Where the lines go.
    interval
        Seconds between two lines of one key.
    clock
        The monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (time of the last line, lines skipped since)
        self._seen: dict[str, tuple[float, int]] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` was logged less than an interval ago.

        Returns
        -------
        bool
            Whether the line was written.
        """
        now = self._clock()
        with self._lock:
            last, skipped = self._seen.get(key, (-self._interval - 1.0, 0))
            if now - last < self._interval:
                self._seen[key] = (last, skipped + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1024:
                # Keys carry addresses: forget the old ones rather than grow for ever.
                horizon = now - self._interval
                self._seen = {k: v for k, v in self._seen.items() if v[0] >= horizon}
        if skipped:
            message += " (%d more like it in the last %.0f s not logged)"
            args = (*args, skipped, self._interval)
        self._logger.log(level, message, *args)
        return True

    def warning(self, key: str, message: str, *args: object) -> bool:
        """:meth:`log` at WARNING."""
        return self.log(logging.WARNING, key, message, *args)

    def info(self, key: str, message: str, *args: object) -> bool:
        """:meth:`log` at INFO."""
        return self.log(logging.INFO, key, message, *args)
