"""Flapping: a bot that keeps being restarted is a problem, however healthy each new run looks.

Fed the ``restarts`` counter of each state record; stdlib only, imports nothing of ours.
"""

from __future__ import annotations

import collections
import typing as t

FLAP_RESTARTS = 3
FLAP_WINDOW = 600.0
FLAP_SETTLE = 300.0


class Flapping:
    """Restart times per bot, and whether a bot is flapping now.

    A bot flaps once ``restarts`` restarts fall within ``window`` seconds, and stays
    flapping until it has run ``settle`` seconds without another one.
    """

    def __init__(self, restarts: int = FLAP_RESTARTS, window: float = FLAP_WINDOW, settle: float = FLAP_SETTLE) -> None:
        self.restarts = restarts
        self.window = window
        self.settle = settle
        self._times: dict[tuple[str, str], collections.deque[float]] = {}

    def restarted(self, key: tuple[str, str], before: t.Any, after: t.Any, now: float) -> None:
        """Note the restarts between two state records (the counter rising; a reset is no restart)."""
        if not isinstance(before, int) or not isinstance(after, int) or after <= before:
            return
        times = self._times.setdefault(key, collections.deque())
        times.extend([now] * min(after - before, self.restarts))
        while times and now - times[0] > self.window:
            times.popleft()

    def forget(self, key: tuple[str, str]) -> None:
        """Drop a bot's restarts (it was stopped on purpose, or removed)."""
        self._times.pop(key, None)

    def flapping(self, key: tuple[str, str], now: float) -> tuple[int, float] | None:
        """Return how many restarts make ``key`` flap and since when, or ``None`` when it does not."""
        times = self._times.get(key)
        if not times or now - times[-1] >= self.settle:
            return None
        recent = [when for when in times if times[-1] - when <= self.window]
        if len(recent) < self.restarts:
            return None
        return len(recent), recent[0]
