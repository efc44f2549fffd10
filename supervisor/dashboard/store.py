"""The dashboard's history in SQLite: performance (PnL) samples and notify/log/event lines.

Bounded per instance (the limit plus at most one pruning batch), so the file
cannot grow without end; it survives a restart of the dashboard. Hummingbot's
streams carry no host, so history is kept per instance id (our own events also
record their host). Imports nothing of ours.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
import typing as t

if t.TYPE_CHECKING:
    from pathlib import Path

KEEP_SAMPLES = 20_000
KEEP_MESSAGES = 500
MAX_PAYLOAD = 64 * 1024
_PRUNE_EVERY = 50

_SCHEMA = """
CREATE TABLE IF NOT EXISTS performance (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT,
    instance TEXT NOT NULL,
    ts REAL NOT NULL,
    pnl REAL,
    payload TEXT
);
CREATE INDEX IF NOT EXISTS performance_instance ON performance (instance, id);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT,
    instance TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    level TEXT,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_instance ON messages (instance, id);
"""


def _number(value: t.Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def extract_pnl(payload: t.Any) -> float | None:
    """Return the global PnL (quote) of a ``{p}/performance`` payload, or ``None`` if it has none.

    Hummingbot v2.12+ sends ``{controller_id: {"performance": {...}, "custom_info": {...}}}``,
    older versions ``{controller_id: {...report...}}``, and ``{controller_id: {}}`` on stop;
    the global figure is the sum of the controllers' ``global_pnl_quote``. A report
    object sent directly (``{"global_pnl_quote": …}``) counts as it is.
    """
    if not isinstance(payload, dict):
        return None
    direct = _number(payload.get("global_pnl_quote"))
    if direct is not None:
        return direct
    total: float | None = None
    for value in payload.values():
        if not isinstance(value, dict):
            continue
        report = value.get("performance", value)
        pnl = _number(report.get("global_pnl_quote")) if isinstance(report, dict) else None
        if pnl is not None:
            total = (total or 0.0) + pnl
    return total


class Store:
    """One SQLite file, safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: Path, *, keep_samples: int = KEEP_SAMPLES, keep_messages: int = KEEP_MESSAGES) -> None:
        self.path = path
        self.keep_samples = keep_samples
        self.keep_messages = keep_messages
        self._lock = threading.Lock()
        self._inserts: dict[tuple[str, str], int] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def add_performance(
        self, instance: str, payload: t.Any, *, host: str | None = None, ts: float | None = None
    ) -> float | None:
        """Record one performance message; return its PnL (``None``: nothing worth charting, nothing kept)."""
        pnl = extract_pnl(payload)
        if pnl is None:
            return None
        text = json.dumps(payload, separators=(",", ":"), default=str)
        with self._lock:
            self._db.execute(
                "INSERT INTO performance (host, instance, ts, pnl, payload) VALUES (?, ?, ?, ?, ?)",
                (host, instance, time.time() if ts is None else ts, pnl, text if len(text) <= MAX_PAYLOAD else None),
            )
            self._prune("performance", instance, self.keep_samples)
        return pnl

    def add_message(
        self,
        instance: str,
        kind: str,
        text: str,
        *,
        host: str | None = None,
        level: str | None = None,
        ts: float | None = None,
    ) -> None:
        """Record one notify, log, event or state line."""
        with self._lock:
            self._db.execute(
                "INSERT INTO messages (host, instance, ts, kind, level, text) VALUES (?, ?, ?, ?, ?, ?)",
                (host, instance, time.time() if ts is None else ts, kind, level, text[:MAX_PAYLOAD]),
            )
            self._prune("messages", instance, self.keep_messages)

    def _prune(self, table: str, instance: str, keep: int) -> None:
        key = (table, instance)
        self._inserts[key] = self._inserts.get(key, 0) + 1
        if self._inserts[key] % _PRUNE_EVERY != 1:
            return
        # ``table`` is one of our two names, never input; pruning in batches keeps inserts cheap.
        self._db.execute(
            f"DELETE FROM {table} WHERE instance = ? AND id <= "
            f"(SELECT id FROM {table} WHERE instance = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (instance, instance, keep),
        )

    def performance(self, instance: str, limit: int = 2000) -> list[tuple[float, float]]:
        """Return the newest ``limit`` ``(ts, pnl)`` samples of ``instance``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, pnl FROM performance WHERE instance = ? ORDER BY id DESC LIMIT ?", (instance, limit)
            ).fetchall()
        return [(float(ts), float(pnl)) for ts, pnl in reversed(rows)]

    def messages(self, instance: str, host: str | None = None, limit: int = 200) -> list[dict[str, t.Any]]:
        """Return the newest ``limit`` lines of ``instance`` (of ``host``, or host-less ones), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, kind, level, text, host FROM messages WHERE instance = ? AND (host IS NULL OR ? IS NULL "
                "OR host = ?) ORDER BY id DESC LIMIT ?",
                (instance, host, host, limit),
            ).fetchall()
        return [
            {"ts": ts, "kind": kind, "level": level, "text": text, "host": row_host}
            for ts, kind, level, text, row_host in reversed(rows)
        ]

    def instances_with_performance(self) -> list[str]:
        """Return every instance that has PnL samples."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT instance FROM performance").fetchall()
        return [str(name) for (name,) in rows]
