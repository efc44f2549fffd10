"""The journal of accepted external events: SQLite, durable before the HTTP reply.

An event is appended (``queued``) before the sender hears 2xx; each target's outcome
(``delivered``: its agent confirmed; ``published``: a plugin bot's broker acknowledged;
``failed: why``) is recorded with the event's status in one transaction. Stdlib only;
imports nothing above ``errors``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sqlite3
import threading
import typing as t
import uuid

from supervisor.events import EventsError

if t.TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

QUEUED, WAITING = "queued", "waiting"
DELIVERED, PUBLISHED, EXPIRED, FAILED = "delivered", "published", "expired", "failed"
PENDING = (QUEUED, WAITING)
"""Statuses of events still to be delivered (the others are final)."""
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
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
    outcomes: dict[str, str] = dataclasses.field(default_factory=dict)
    expires: float | None = None

    @property
    def is_pending(self) -> bool:
        """Whether the event is still to be delivered."""
        return self.status in PENDING

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
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
                for column, kind in (("outcomes", "TEXT NOT NULL DEFAULT '{}'"), ("expires", "REAL")):
                    if column not in columns:  # a journal from before delivery was confirmed
                        self._db.execute(f"ALTER TABLE events ADD COLUMN {column} {kind}")
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('receiver', ?)", (uuid.uuid4().hex,))
            self._db.execute("PRAGMA busy_timeout=2000")
            # A journal from before delivery was confirmed, read (events ls) before a receiver upgraded it.
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
            self._extra = ", ".join(
                name if name in columns else f"{default} AS {name}"
                for name, default in (("outcomes", "'{}'"), ("expires", "NULL"))
            )
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
        max_age: float | None = None,
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
                "INSERT INTO events (route, event, targets, body, text, digest, source, received, status, expires) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    route,
                    event,
                    json.dumps(list(targets)),
                    body,
                    int(is_text),
                    digest,
                    source,
                    now,
                    QUEUED,
                    None if max_age is None else now + max_age,
                ),
            )
            return int(t.cast("int", cursor.lastrowid)), False

    def pending(self, limit: int = 100) -> list[Entry]:
        """Return the oldest events still to be delivered (queued or waiting), oldest first."""
        return self._select("WHERE status IN (?, ?) ORDER BY id LIMIT ?", (*PENDING, limit))

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
            "SELECT id, route, event, targets, body, text, source, received, status, delivered, published, error, "
            f"{self._extra} FROM events {where}"
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
                outcomes=json.loads(r[12]),
                expires=r[13],
            )
            for r in rows
        ]

    @property
    def receiver_id(self) -> str:
        """Return the journal's id, the ``receiver`` member of the events it sends (stable across restarts)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'receiver'").fetchone()
        return str(row[0]) if row else ""

    def update(self, event_id: int, *, status: str, outcomes: Mapping[str, str], error: str | None, now: float) -> None:
        """Record an event's target outcomes and status (``published`` holds when it became final)."""
        self.update_many([(event_id, status, outcomes, error)], now=now)

    def update_many(self, rows: Sequence[tuple[int, str, Mapping[str, str], str | None]], *, now: float) -> None:
        """Record ``(id, status, outcomes, error)`` of several events in one transaction."""
        with self._write() as db:
            db.executemany(
                "UPDATE events SET status = ?, outcomes = ?, error = ?, published = ? WHERE id = ?",
                [
                    (status, json.dumps(dict(outcomes)), error, None if status in PENDING else now, event_id)
                    for event_id, status, outcomes, error in rows
                ],
            )

    def probe(self) -> None:
        """Write nothing of value, to learn whether the journal can be written (a full disk says no).

        Raises
        ------
        EventsError
            The write failed.
        """
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (uuid.uuid4().hex,))

    def prune(self, now: float, keep: float = KEEP_SECONDS) -> int:
        """Delete finished events older than ``keep`` seconds; return how many."""
        with self._write() as db:
            cursor = db.execute(
                "DELETE FROM events WHERE status NOT IN (?, ?) AND received < ?", (*PENDING, now - keep)
            )
            return int(cursor.rowcount)
