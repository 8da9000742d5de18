"""In-memory limit on failed logins per (username, client address)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable


class LoginRateLimiter:
    """Refuse logins for a key after ``max_failures`` failures within ``window_seconds``.

    State lives in this process only: a restart forgets it, which is acceptable for
    slowing down guessing at a console, not as an account lockout. Thread-safe,
    since waitress serves requests on several threads.

    Parameters
    ----------
    max_failures
        Failures allowed within the window; the next attempt is refused.
    window_seconds
        Length of the sliding window.
    clock
        Monotonic seconds; tests pass a fake one.
    max_keys
        Bound on remembered keys, so a flood of made-up usernames cannot grow memory
        without limit; the oldest keys are forgotten first.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._failures: dict[Hashable, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: Hashable) -> float:
        """Seconds until ``key`` may try again; 0 when it may try now."""
        now = self._clock()
        with self._lock:
            times = self._recent(key, now)
            if len(times) < self.max_failures:
                return 0.0
            return max(times[0] + self.window_seconds - now, 0.0)

    def record_failure(self, key: Hashable) -> None:
        """Remember one failed attempt for ``key``."""
        now = self._clock()
        with self._lock:
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times
            if len(self._failures) > self._max_keys:
                # dicts keep insertion order: drop the key that failed first.
                del self._failures[next(iter(self._failures))]

    def reset(self, key: Hashable) -> None:
        """Forget the failures of ``key`` (after a successful login)."""
        with self._lock:
            self._failures.pop(key, None)

    def _recent(self, key: Hashable, now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self.window_seconds:
            times.popleft()
        if not times:
            self._failures.pop(key, None)
        return times
