"""The audit log: one JSON line per request, who asked what and the result, clipped and rotated.

Written by the agent and by the events receiver, which may run as separate processes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import typing as t
from pathlib import Path

from supervisor.files import locked
from supervisor.logfiles import private_file, rotate_log

logger = logging.getLogger(__name__)

CLIP_CHARS = 200
"""Longest piece of a stranger's text (topic, field, message) written to a log."""
AUDIT_MAX_BYTES = 10 * 1024 * 1024
AUDIT_KEEP = 3


def clip(text: object, limit: int = CLIP_CHARS) -> str:
    """Return ``text`` as a string of at most about ``limit`` characters, noting the original length."""
    value = text if isinstance(text, str) else str(text)
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…[{len(value)} chars]"


class AuditLog:
    """Append-only JSON lines: who asked what, when, and the result.

    Text values are clipped (strangers choose them) and the file is rotated past
    ``max_bytes``, keeping ``keep`` old files, so its size on disk is capped.
    """

    def __init__(
        self, path: os.PathLike[str] | str, *, max_bytes: int = AUDIT_MAX_BYTES, keep: int = AUDIT_KEEP
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()

    def record(self, **entry: t.Any) -> None:
        """Append one entry (never raises: auditing must not break serving)."""
        entry = {"ts": round(time.time(), 3), **{k: clip(v) if isinstance(v, str) else v for k, v in entry.items()}}
        line = json.dumps(entry, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                # The agent and the events receiver append from separate processes: one file lock
                # keeps a rotation from cutting the other's line.
                with locked(self.path.with_name(f".{self.path.name}.lock")):
                    with private_file(self.path).open("a", encoding="utf-8") as handle:
                        handle.write(line)
                    rotate_log(self.path, self.max_bytes, self.keep)
            except OSError as e:
                logger.warning("cannot write the audit log %s: %s", self.path, e)
