"""The dashboard's memory in SQLite: PnL samples, notify/log/event lines, hosts and instances seen.

The last agent and state record of every host and instance is kept, so a dead agent's host stays listed.

Bounded per instance (the limit plus at most one pruning batch), so the file
cannot grow without end; it survives a restart of the dashboard. Hummingbot's
streams carry no host, so history is kept per instance id (our own events also
record their host). Imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
import time
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEEP_SAMPLES = 20_000
KEEP_MESSAGES = 500
KEEP_ALERTS = 1000
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
CREATE TABLE IF NOT EXISTS hosts (
    host TEXT PRIMARY KEY,
    seen REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS states (
    host TEXT NOT NULL,
    instance TEXT NOT NULL,
    seen REAL NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (host, instance)
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    target TEXT,
    text TEXT NOT NULL,
    acked REAL
);
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


def message_time(payload: t.Any, now: float, *, window: float = 7 * 86400.0) -> float:
    """Return the ``timestamp`` a performance message carries (seconds or milliseconds), else ``now``.

    A stamp more than ``window`` away from ``now`` is not believed (a wrong clock, another unit).
    """
    stamp = _number(payload.get("timestamp")) if isinstance(payload, dict) else None
    if stamp is not None and stamp > 1e11:
        stamp /= 1000.0  # milliseconds
    return stamp if stamp is not None and abs(stamp - now) <= window else now


def controller_figures(payload: t.Any) -> dict[str, dict[str, float]]:
    """Return the figures of each controller of a performance message (``{}`` when it has none)."""
    out: dict[str, dict[str, float]] = {}
    if not isinstance(payload, dict) or _number(payload.get("global_pnl_quote")) is not None:
        return out
    for name, value in payload.items():
        report = value.get("performance", value) if isinstance(value, dict) else None
        if not isinstance(report, dict):
            continue
        figures = {key: number for key in _FIGURES if (number := _number(report.get(key))) is not None}
        if figures:
            out[str(name)] = figures
    return out


_FIGURES = ("global_pnl_quote", "realized_pnl_quote", "unrealized_pnl_quote", "volume_traded")


class Store:
    """One SQLite file, safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: Path, *, keep_samples: int = KEEP_SAMPLES, keep_messages: int = KEEP_MESSAGES) -> None:
        self.path = path
        self.keep_samples = keep_samples
        self.keep_messages = keep_messages
        self._lock = threading.RLock()  # re-entered by the calls inside a batch
        self._inserts: dict[tuple[str, str], int] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Run the calls inside as one transaction (one commit for many messages), holding the store meanwhile."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            # SQLite ends the transaction itself on some errors (a full disk): then there is nothing to commit.
            if self._db.in_transaction:
                self._db.execute("COMMIT")

    def add_alert(self, alert: t.Mapping[str, t.Any], ts: float) -> int:
        """Keep one alert (the newest ``KEEP_ALERTS``) and return its id."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO alerts (ts, kind, target, text) VALUES (?, ?, ?, ?)",
                (ts, str(alert["kind"]), alert.get("target"), str(alert["text"])),
            )
            row_id = int(cursor.lastrowid or 0)
            self._db.execute("DELETE FROM alerts WHERE id <= ?", (row_id - KEEP_ALERTS,))
        return row_id

    def alerts(self, limit: int = 200) -> tuple[list[dict[str, t.Any]], int]:
        """Return the alerts to show (unacknowledged first, then the newest) and how many are unacknowledged."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, ts, kind, target, text, acked FROM alerts ORDER BY acked IS NOT NULL, id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            (unacked,) = self._db.execute("SELECT count(*) FROM alerts WHERE acked IS NULL").fetchone()
        keys = ("id", "ts", "kind", "target", "text", "acked")
        return [dict(zip(keys, row, strict=True)) for row in rows], int(unacked)

    def ack_alerts(self, ids: list[int] | None, ts: float) -> None:
        """Acknowledge the alerts ``ids`` (``None``: all of them)."""
        with self._lock:
            if ids is None:
                self._db.execute("UPDATE alerts SET acked = ? WHERE acked IS NULL", (ts,))
            else:
                self._db.executemany(
                    "UPDATE alerts SET acked = ? WHERE id = ? AND acked IS NULL", [(ts, i) for i in ids]
                )

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

    def messages(
        self, instance: str, host: str | None = None, limit: int = 200, *, after: int | None = None
    ) -> list[dict[str, t.Any]]:
        """Return the newest ``limit`` lines of ``instance`` (of ``host``, or host-less ones), oldest first.

        With ``after``, the oldest ``limit`` lines whose ``id`` is greater (what a console has not shown yet).
        """
        where = "instance = ? AND (host IS NULL OR ? IS NULL OR host = ?)"
        with self._lock:
            if after is None:
                query = f"SELECT id, ts, kind, level, text, host FROM messages WHERE {where} ORDER BY id DESC LIMIT ?"
                rows = list(reversed(self._db.execute(query, (instance, host, host, limit)).fetchall()))
            else:
                query = (
                    f"SELECT id, ts, kind, level, text, host FROM messages WHERE {where} AND id > ? ORDER BY id LIMIT ?"
                )
                rows = self._db.execute(query, (instance, host, host, after, limit)).fetchall()
        return [
            {"id": row_id, "ts": ts, "kind": kind, "level": level, "text": text, "host": row_host}
            for row_id, ts, kind, level, text, row_host in rows
        ]

    def last_payload(self, instance: str) -> t.Any:
        """Return the newest stored performance message of ``instance`` (``None``: none)."""
        with self._lock:
            row = self._db.execute(
                "SELECT payload FROM performance WHERE instance = ? AND payload IS NOT NULL ORDER BY id DESC LIMIT 1",
                (instance,),
            ).fetchone()
        return None if row is None else _object(row[0])

    def instances_with_performance(self) -> list[str]:
        """Return every instance that has PnL samples."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT instance FROM performance").fetchall()
        return [str(name) for (name,) in rows]

    def remember_host(self, host: str, record: t.Mapping[str, t.Any] | None, *, ts: float | None = None) -> None:
        """Keep the last agent record of ``host`` (``None``: the agent's record was deleted; forget the host)."""
        with self._lock:
            if record is None:
                self._db.execute("DELETE FROM hosts WHERE host = ?", (host,))
                self._db.execute("DELETE FROM states WHERE host = ?", (host,))
                return
            self._db.execute(
                "INSERT OR REPLACE INTO hosts (host, seen, record) VALUES (?, ?, ?)",
                (host, time.time() if ts is None else ts, json.dumps(dict(record), default=str)),
            )

    def remember_state(
        self, host: str, instance: str, record: t.Mapping[str, t.Any] | None, *, ts: float | None = None
    ) -> None:
        """Keep the last state record of ``host/instance`` (``None``: it was removed; forget it)."""
        with self._lock:
            if record is None:
                self._db.execute("DELETE FROM states WHERE host = ? AND instance = ?", (host, instance))
                return
            self._db.execute(
                "INSERT OR REPLACE INTO states (host, instance, seen, record) VALUES (?, ?, ?, ?)",
                (host, instance, time.time() if ts is None else ts, json.dumps(dict(record), default=str)),
            )

    def known_hosts(self) -> dict[str, dict[str, t.Any]]:
        """Return the last agent record of every remembered host."""
        with self._lock:
            rows = self._db.execute("SELECT host, record FROM hosts").fetchall()
        return {str(host): record for host, text in rows if isinstance(record := _object(text), dict)}

    def known_states(self) -> dict[tuple[str, str], dict[str, t.Any]]:
        """Return the last state record of every remembered instance of a remembered host."""
        with self._lock:
            rows = self._db.execute(
                "SELECT host, instance, record FROM states WHERE host IN (SELECT host FROM hosts)"
            ).fetchall()
        return {
            (str(host), str(name)): record for host, name, text in rows if isinstance(record := _object(text), dict)
        }


def _object(text: str) -> t.Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
