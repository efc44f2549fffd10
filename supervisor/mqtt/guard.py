"""What the agent does with requests it will not run: clipped, counted, rate-limited logging.

Everything here sees text from strangers (topics, payload fields). Nothing of it
reaches a log in full, and refusals cost a bounded number of log lines and
audit entries per interval however many arrive. Imports no paho and no manager.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import logging.handlers
import os
import sys
import threading
import time
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

from supervisor.audit import clip

logger = logging.getLogger(__name__)

LOG_RECORD_CHARS = 2000
"""Longest agent log message; anything longer is cut and its length noted."""
STATUS_BUSY = 503
"""Reply status of a request refused before it ran because the agent is saturated."""
REFUSALS_PER_INTERVAL = 20
REFUSAL_INTERVAL = 60.0
AGENT_LOG_MAX_BYTES = 10 * 1024 * 1024
AGENT_LOG_KEEP = 3


class ClipFilter(logging.Filter):
    """Cut every log record's message to :data:`LOG_RECORD_CHARS`, whoever logs it."""

    def __init__(self, limit: int = LOG_RECORD_CHARS) -> None:
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        """Render and clip the message in place; never drop the record."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must still be logged
            message = str(record.msg)
        if len(message) > self.limit:
            record.msg, record.args = clip(message, self.limit), None
        return True


class PrivateLogFile(logging.handlers.RotatingFileHandler):
    """The agent's log file: owner-only (600), and a write that fails is said once, not per record.

    On a full disk every record fails; logging's default prints a "Logging error" traceback
    to stderr for each, which fills whatever disk stderr goes to.
    """

    _failing = False

    def _open(self) -> t.Any:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return super()._open()

    _failed_now = False

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record; after a failure, say so once on stderr, and once more when writing works again."""
        self._failed_now = False
        super().emit(record)
        if self._failing and not self._failed_now:
            self._failing = False
            sys.stderr.write(f"supervisor: the agent log {self.baseFilename} can be written again\n")

    def handleError(self, record: logging.LogRecord) -> None:
        """Note the failure; tell stderr only the first time in a row."""
        self._failed_now = True
        if not self._failing:
            self._failing = True
            error = sys.exc_info()[1]
            sys.stderr.write(f"supervisor: cannot write the agent log {self.baseFilename} ({error}); said once\n")


def configure_agent_logging(
    path: Path, formatter: logging.Formatter, *, max_bytes: int = AGENT_LOG_MAX_BYTES, keep: int = AGENT_LOG_KEEP
) -> None:
    """Clip every record of the root logger's handlers and add a size-capped, rotated log file at ``path``."""
    root = logging.getLogger()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = PrivateLogFile(path, maxBytes=max_bytes, backupCount=keep, encoding="utf-8")
    except OSError as e:
        logger.warning("cannot open the agent log %s: %s; logging to stderr only", path, e)
    else:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    for each in root.handlers:
        if not any(isinstance(f, ClipFilter) for f in each.filters):
            each.addFilter(ClipFilter())


def is_command_topic(topic: str, namespace: str, own_prefix: str) -> bool:
    """Return whether ``topic`` is one any agent or bot listens on or publishes records to.

    Covers every topic of a bot under Hummingbot's namespace (``{ns}/{id}/…``: its commands,
    external events, heartbeats, status updates and streams; no client of Hummingbot's has its
    replies there) and everything under our own ``{own_prefix}/`` (host verbs, instance verbs,
    ``agent`` and ``state`` records, events), for every host: a reply published there would be
    taken as a command, an event to type into a console, or a record.
    """
    if topic == own_prefix or topic.startswith(f"{own_prefix}/"):
        return True
    head = f"{namespace}/"
    if not topic.startswith(head):
        return False
    instance, sep, _ = topic[len(head) :].partition("/")
    return bool(instance) and bool(sep)


class RefusalLog:
    """Counts refused requests and logs them at a bounded rate.

    The first ``burst`` refusals of each ``interval`` get one log line and one
    audit entry each (clipped); later ones are only counted, and one summary
    line with the counts per reason follows when the interval is over.

    Parameters
    ----------
    audit
        ``audit(**entry)``: where the individual entries go (the audit log).
    """

    def __init__(
        self,
        audit: Callable[..., None],
        *,
        burst: int = REFUSALS_PER_INTERVAL,
        interval: float = REFUSAL_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._logged = 0
        self._suppressed: collections.Counter[str] = collections.Counter()
        self.total: collections.Counter[str] = collections.Counter()

    def refuse(self, reason: str, topic: str, detail: str, **audit: t.Any) -> None:
        """Count one refused request; log and audit it while within the budget."""
        with self._lock:
            self._roll()
            self.total[reason] += 1
            if self._logged >= self.burst:
                self._suppressed[reason] += 1
                return
            self._logged += 1
        logger.warning("refused a request on %s (%s): %s", clip(topic), reason, clip(detail))
        self._audit(topic=topic, reason=reason, msg=detail, **audit)

    def flush(self) -> None:
        """Write the summary of the interval that ended, if any refusal went unlogged."""
        with self._lock:
            self._roll()

    def _roll(self) -> None:
        now = self._clock()
        if now - self._window_start < self.interval:
            return
        if self._suppressed:
            counts = ", ".join(f"{reason} {n}" for reason, n in sorted(self._suppressed.items()))
            total = sum(self._suppressed.values())
            logger.warning(
                "refused %d more requests in the last %.0f s without logging each: %s", total, self.interval, counts
            )
            self._audit(topic="", result="refused", reason="summary", msg=f"{total} more refused: {counts}")
        self._window_start = now
        self._logged = 0
        self._suppressed.clear()
