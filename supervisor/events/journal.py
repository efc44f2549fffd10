"""The journal of accepted external events: SQLite, durable before the HTTP reply.

An event is appended (``queued``) before the sender hears 2xx, each target's
topic is recorded once the broker acknowledged it, and the event becomes
``published`` when every target has. Stdlib only; imports nothing above ``errors``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sqlite3
import threading
import typing as t

from supervisor.events import EventsError

if t.TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

QUEUED, PUBLISHED, FAILED = "queued", "published", "failed"
KEEP_SECONDS = 7 * 24 * 3600.0
"""Finished events are kept this long for ``events ls``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    route TEXT NOT NULL,
    event TEXT NOT NULL,
    targets TEXT NOT NULL,
    body BLOB NOT NULL,
    text INTEGER NOT NULL,
    digest TEXT NOT NULL,
    source TEXT,
    received REAL NOT NULL,
    status TEXT NOT NULL,
    delivered TEXT NOT NULL DEFAULT '[]',
    published REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS events_status ON events (status, id);
CREATE INDEX IF NOT EXISTS events_digest ON events (route, digest, received);
"""


@dataclasses.dataclass
class Entry:
    """One journaled event."""

    id: int
    route: str
    event: str
    targets: list[str]
    body: bytes
    is_text: bool
    source: str | None
    received: float
    status: str
    delivered: list[str]
    published: float | None
    error: str | None

    def to_dict(self) -> dict[str, t.Any]:
        """Return the ``events ls --json`` record (the body as text, cut at 500 characters)."""
        record = dataclasses.asdict(self)
        record["body"] = self.body.decode("utf-8", "replace")[:500]
        record["text"] = record.pop("is_text")
        return record


def body_digest(route: str, body: bytes) -> str:
    """Return the duplicate-detection key of a body sent to ``route``."""
    return hashlib.sha256(route.encode() + b"\0" + body).hexdigest()


class Journal:
    """The receiver's queue on disk; safe to share between threads.

    Raises
    ------
    EventsError
        If the file cannot be opened or is not a journal.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            if read_only:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                # Alert bodies are the user's business: owner-only (SQLite gives -wal/-shm the same mode).
                path.touch(mode=0o600, exist_ok=True)
                self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                # WAL + FULL: a committed event survives a power cut, and readers (events ls) never block it.
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA busy_timeout=2000")
            self._db.execute("SELECT count(*) FROM events").fetchone()
        except (sqlite3.Error, OSError) as e:
            msg = f"event journal '{path}': {e}. Move the file aside if it is not a journal of bot-supervisor."
            raise EventsError(msg) from e

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                msg = f"event journal '{self.path}': {e}. Check the disk space and the file's permissions."
                raise EventsError(msg) from e

    def accept(
        self,
        *,
        route: str,
        event: str,
        targets: Sequence[str],
        body: bytes,
        is_text: bool,
        source: str | None,
        now: float,
        dedupe_window: float,
    ) -> tuple[int, bool]:
        """Append an event unless the same body reached ``route`` within ``dedupe_window`` seconds.

        Returns ``(id, duplicate)``: the new event's id, or the earlier one's and ``True``.
        The event is on disk when this returns.
        """
        digest = body_digest(route, body)
        with self._write() as db:
            if dedupe_window > 0:
                row = db.execute(
                    "SELECT id FROM events WHERE route = ? AND digest = ? AND received >= ? ORDER BY id DESC LIMIT 1",
                    (route, digest, now - dedupe_window),
                ).fetchone()
                if row is not None:
                    return int(row[0]), True
            cursor = db.execute(
                "INSERT INTO events (route, event, targets, body, text, digest, source, received, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (route, event, json.dumps(list(targets)), body, int(is_text), digest, source, now, QUEUED),
            )
            return int(t.cast("int", cursor.lastrowid)), False

    def pending(self, limit: int = 100) -> list[Entry]:
        """Return the oldest queued events, oldest first."""
        return self._select("WHERE status = ? ORDER BY id LIMIT ?", (QUEUED, limit))

    def recent(self, limit: int = 50, route: str | None = None) -> list[Entry]:
        """Return the newest events (of ``route``), newest first."""
        if route is None:
            return self._select("ORDER BY id DESC LIMIT ?", (limit,))
        return self._select("WHERE route = ? ORDER BY id DESC LIMIT ?", (route, limit))

    def get(self, event_id: int) -> Entry | None:
        """Return one event."""
        found = self._select("WHERE id = ?", (event_id,))
        return found[0] if found else None

    def _select(self, where: str, args: tuple[t.Any, ...]) -> list[Entry]:
        sql = (
            "SELECT id, route, event, targets, body, text, source, received, status, delivered, published, error "
            f"FROM events {where}"
        )
        try:
            with self._lock:
                rows = self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            msg = f"event journal '{self.path}': {e}."
            raise EventsError(msg) from e
        return [
            Entry(
                id=r[0],
                route=r[1],
                event=r[2],
                targets=json.loads(r[3]),
                body=bytes(r[4]),
                is_text=bool(r[5]),
                source=r[6],
                received=r[7],
                status=r[8],
                delivered=json.loads(r[9]),
                published=r[10],
                error=r[11],
            )
            for r in rows
        ]

    def mark_delivered(self, done: Sequence[tuple[int, Sequence[str], bool]], now: float) -> None:
        """Record acknowledged topics: ``(id, topics acknowledged so far, all targets done)`` per event."""
        with self._write() as db:
            for event_id, topics, complete in done:
                db.execute(
                    "UPDATE events SET delivered = ?, status = ?, published = ? WHERE id = ?",
                    (json.dumps(list(topics)), PUBLISHED if complete else QUEUED, now if complete else None, event_id),
                )

    def mark_failed(self, event_id: int, error: str) -> None:
        """Give up on an event (its targets match nothing)."""
        with self._write() as db:
            db.execute("UPDATE events SET status = ?, error = ? WHERE id = ?", (FAILED, error, event_id))

    def prune(self, now: float, keep: float = KEEP_SECONDS) -> int:
        """Delete finished events older than ``keep`` seconds; return how many."""
        with self._write() as db:
            cursor = db.execute("DELETE FROM events WHERE status != ? AND received < ?", (QUEUED, now - keep))
            return int(cursor.rowcount)
