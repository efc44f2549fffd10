"""One ordered lane per bot: the agent's work for a bot runs one item at a time, in arrival order.

Lanes share one thread pool; a lane holds a worker only while it has work. Imports
nothing of the agent's, so its ordering can be tested on its own.
"""

from __future__ import annotations

import collections
import logging
import threading
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Executor

__all__ = ["Lanes"]

logger = logging.getLogger(__name__)


class Lanes:
    """Runs jobs on ``pool`` so that jobs of one key never overlap and run in the order submitted.

    Jobs of different keys run side by side. A job that raises is logged and
    the lane goes on with the next one.
    """

    def __init__(self, pool: Executor) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        # key -> jobs waiting behind the one running; a key is present while its lane is busy
        self._waiting: dict[str, collections.deque[Callable[[], None]]] = {}

    def submit(self, key: str, job: Callable[[], None]) -> None:
        """Queue ``job`` behind the work already in ``key``'s lane.

        Raises
        ------
        RuntimeError
            The pool is shut down (the agent is stopping); nothing was queued.
        """
        with self._lock:
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.append(job)
                return
            self._waiting[key] = collections.deque()
        try:
            self._pool.submit(self._drain, key, job)
        except RuntimeError:
            with self._lock:
                self._waiting.pop(key, None)
            raise

    def depth(self, key: str) -> int:
        """Return how many jobs ``key``'s lane holds: the one running and those waiting."""
        with self._lock:
            waiting = self._waiting.get(key)
            return 0 if waiting is None else 1 + len(waiting)

    def is_idle(self, key: str) -> bool:
        """Return whether ``key``'s lane has nothing running and nothing waiting."""
        with self._lock:
            return key not in self._waiting

    def _drain(self, key: str, job: Callable[[], None]) -> None:
        # The worker that runs a lane's first job runs the rest: order needs no hand-over between threads.
        while True:
            try:
                job()
            except Exception:
                logger.exception("work for %s failed unexpectedly", key)
            with self._lock:
                waiting = self._waiting[key]
                if not waiting:
                    del self._waiting[key]
                    return
                job = waiting.popleft()
