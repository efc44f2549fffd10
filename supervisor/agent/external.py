"""External events for bots without Hummingbot's MQTT plugin: ``{ns}/{id}/external/event/#`` -> console.

A recipe's ``events`` table maps an event name (or ``*``) to a console line such
as ``buy {amount}``; the line is typed literally, like ``send``, with the
event's values checked by :func:`~supervisor.consoletext.check_console_text`.
An unmapped or refused event is logged and reported as an agent event; nothing
reaches a shell. The agent calls :meth:`ExternalEvents.handle` from its worker pool.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
import typing as t

from supervisor.consoletext import check_console_text
from supervisor.core.recipe import OPTIONAL_RE, VAR_RE, render
from supervisor.errors import SupervisorError
from supervisor.mqtt.delivery import REFUSED, TYPED, confirmation, delivery_topic, is_expired, is_for, sender_of

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from supervisor.core.manager import Manager

logger = logging.getLogger(__name__)

KEEP_TYPED = 7 * 24 * 3600.0
"""How long the receiver's events typed here are remembered (the receiver keeps its journal as long)."""


class TypedEvents:
    """The receiver's events this host already acted on, by (receiver, sequence, instance): on disk.

    A receiver re-sends an event until this agent confirms it; a re-send that comes after
    a crash (of either side) is recognised here and not typed again. A foreign sender's
    events carry no receiver id and are never looked up. If the file cannot be written the
    set is kept in memory (said once in the log), so this run still types each event once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._memory: set[tuple[str, int, str]] = set()
        self._db: sqlite3.Connection | None = None
        self._broken: str | None = None
        try:
            path.touch(mode=0o600, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: in WAL mode a commit survives the agent's crash (kill -9), which is what a re-send
            # follows; only a power cut may lose the last ones. FULL would add an fsync before each typing.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS typed (receiver TEXT NOT NULL, sequence INTEGER NOT NULL, "
                "instance TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (receiver, sequence, instance))"
            )
            self._db.execute("DELETE FROM typed WHERE at < ?", (time.time() - KEEP_TYPED,))
        except (sqlite3.Error, OSError) as e:
            self._failed(e)

    def _failed(self, error: Exception) -> None:
        text = str(error)
        if text != self._broken:
            logger.error("cannot record typed external events in %s (%s); remembering them in memory", self.path, text)
        self._broken = text

    def has(self, receiver: str, sequence: int, instance: str) -> bool:
        """Return whether the event was acted on (by this run or an earlier one)."""
        key = (receiver, sequence, instance)
        with self._lock:
            if key in self._memory:
                return True
            if self._db is None:
                return False
            try:
                row = self._db.execute(
                    "SELECT 1 FROM typed WHERE receiver = ? AND sequence = ? AND instance = ?", key
                ).fetchone()
            except sqlite3.Error as e:
                self._failed(e)
                return False
            return row is not None

    def claim(self, receiver: str, sequence: int, instance: str) -> bool:
        """Record the event as acted on; return ``False`` if it already was."""
        key = (receiver, sequence, instance)
        with self._lock:
            if key in self._memory:
                return False
            if self._db is not None:
                try:
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO typed VALUES (?, ?, ?, ?)", (receiver, sequence, instance, time.time())
                    )
                except sqlite3.Error as e:
                    self._failed(e)
                else:
                    if self._broken is not None:
                        logger.warning("typed external events are recorded in %s again", self.path)
                        self._broken = None
                    if cursor.rowcount == 0:
                        return False
            self._memory.add(key)
            return True

    def close(self) -> None:
        """Close the file."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            if self._db is not None:
                self._db.close()


class MalformedEvent(SupervisorError):
    """An external event's payload is not Hummingbot's ExternalEventMessage."""

    code = "malformed_event"


def parse_event(payload: bytes) -> dict[str, t.Any]:
    """Return an event's JSON object (``data`` defaults to ``{}``, as in Hummingbot).

    Raises
    ------
    MalformedEvent
        Empty, not JSON, not an object, or ``data`` that is not an object.
    """
    if not payload.strip():
        msg = "its payload is empty"
        raise MalformedEvent(msg)
    try:
        message = json.loads(payload, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        msg = "its payload is not JSON"
        raise MalformedEvent(msg) from e
    if not isinstance(message, dict):
        msg = f"its payload is {_kind(message)}, not an object"
        raise MalformedEvent(msg)
    data = message.setdefault("data", {})
    if not isinstance(data, dict):
        msg = f"its 'data' is {_kind(data)}, not an object"
        raise MalformedEvent(msg)
    return message


def _kind(value: object) -> str:
    """Name a JSON value's type as JSON does."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string" if isinstance(value, str) else "a list"


def _refuse_constant(name: str) -> t.NoReturn:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


def event_values(name: str, payload: bytes) -> dict[str, str]:
    """Return the placeholders of an event: ``name``, ``payload`` and each member of its ``data``.

    ``payload`` is the alert's text when the sender posted plain text (``data`` is
    then ``{"message": text}``), else the compact JSON of ``data``. Members that are
    objects or lists are given as compact JSON.
    """
    try:
        message = parse_event(payload)
    except MalformedEvent:
        message = {"data": {}}
    return data_values(name, message["data"])


def data_values(name: str, data: Mapping[str, t.Any]) -> dict[str, str]:
    """Return the placeholders of an event whose ``data`` object is ``data`` (see :func:`event_values`)."""
    values: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, bool):
            values[key] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            values[key] = str(value)
        elif value is not None:
            values[key] = json.dumps(value, separators=(",", ":"))
    text = data.get("message")
    values["payload"] = (
        text if set(data) == {"message"} and isinstance(text, str) else json.dumps(data, separators=(",", ":"))
    )
    values["name"] = name
    return values


def render_event_line(template: str, values: Mapping[str, str], what: str) -> str:
    """Fill an event's console line; ``[...]`` parts whose values are missing are left out.

    Raises
    ------
    SupervisorError
        A placeholder outside ``[...]`` has no value.
    UnsafeConsoleText
        A used value, or the whole line, holds a control character.
    """
    outside = OPTIONAL_RE.sub("", template)
    missing = [name for name in VAR_RE.findall(outside) if not values.get(name)]
    if missing:
        msg = f"{what}: the event has no value for {', '.join(repr(m) for m in dict.fromkeys(missing))}."
        raise SupervisorError(msg)
    for name in dict.fromkeys(VAR_RE.findall(template)):
        if name in values:
            check_console_text(values[name], what=f"{what}: value '{name}'")
    line = render(template, values, optional_groups=True).strip()
    return check_console_text(line, what=f"{what}: the console line")


class ExternalEvents:
    """Types mapped external events into the consoles of this host's plugin-less bots.

    Every event acts, as in Hummingbot: two identical events from a foreign sender are two
    events. Only our receiver's re-sends, recognised by the ``receiver`` and ``sequence``
    members it adds, are typed once; the agent confirms each of those it typed or refused.

    Parameters
    ----------
    manager
        The agent's core.
    namespace
        Hummingbot's topic namespace.
    report
        ``report(instance, message)``: the agent's event (``{own}/{instance}/events``).
    audit
        ``audit(**entry)``: one audit log line.
    publish
        ``publish(topic, payload, qos)``: the agent's connection, for confirmations.
    own_prefix, host, secret
        Where confirmations go (``{own_prefix}/{host}/{instance}/delivery``) and how they are signed.
    typed
        The file remembering the receiver's events acted on (default: in the state folder).
    """

    def __init__(
        self,
        manager: Manager,
        namespace: str,
        *,
        report: Callable[[str, str], None],
        audit: Callable[..., None],
        publish: Callable[..., t.Any] | None = None,
        own_prefix: str = "supervisor",
        host: str = "",
        secret: str | None = None,
        typed: Path | None = None,
    ) -> None:
        self.manager = manager
        self.namespace = namespace
        self.report = report
        self.audit = audit
        self.publish = publish
        self.own_prefix = own_prefix
        self.host = host
        self.secret = secret
        self.typed = TypedEvents(typed or manager.paths.home / "events-typed.sqlite")

    def topic_filter(self, instance: str) -> str:
        """Return the subscription to one instance's external events (an agent listens for its own bots only)."""
        return f"{self.namespace}/{instance}/external/event/#"

    def handle(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        """Act on one event published to ``{ns}/{id}/external/event/{name...}``.

        A retained event is never typed: the broker would replay it at every reconnect.
        An empty retained publish only clears one: nothing to do, nothing to say.
        """
        instance, _, rest = topic[len(self.namespace) + 1 :].partition("/")
        name = rest.removeprefix("external/event/").replace("/", ".")
        if not self.manager.has(instance):
            return  # another host's bot, or a Hummingbot with its own bridge
        recipe = self.manager.recipe(instance)
        if recipe.mqtt.plugin:
            return  # its own bridge listens on this topic (Hummingbot's listeners, not the console)
        if retained and not payload:
            return
        try:
            message = parse_event(payload)
        except MalformedEvent as e:
            self._refuse(instance, name, f"external event '{name}' refused: {e}. Not typed.", level=logging.WARNING)
            return
        sender = sender_of(message)
        if sender is not None and not is_for(message, self.host, instance):
            return  # our receiver meant another host's bot of the same name
        if retained:
            text = f"external event '{name}' ignored: it is a retained message (replayed at every connect)."
            self._refuse(instance, name, text, level=logging.WARNING)
            return
        if sender is not None and self.typed.has(sender[0], sender[1], instance):
            self._already(sender, instance)
            return
        if sender is not None and is_expired(message, time.time()):
            text = f"external event '{name}' #{sender[1]} refused: it expired before it arrived. Not typed."
            self._refuse(instance, name, text, level=logging.WARNING, sender=sender)
            return
        template = recipe.external_events.get(name) or recipe.external_events.get("*")
        if template is None:
            text = f"external event '{name}' ignored: recipe '{recipe.name}' maps no console line to it."
            self._refuse(instance, name, text, level=logging.INFO, sender=sender)
            return
        what = f"instance '{instance}': external event '{name}'"
        try:
            line = render_event_line(template, data_values(name, message["data"]), what)
            if sender is not None and not self.typed.claim(sender[0], sender[1], instance):
                self._already(sender, instance)
                return
            self.manager.send(instance, line)
        except SupervisorError as e:
            self._refuse(instance, name, f"{e} Not typed.", level=logging.WARNING, sender=sender)
            return
        logger.info("instance %s: external event %s typed as %r", instance, name, line)
        self.audit(topic=topic, source="external-event", instance=instance, event=name, result=200, msg=line[:200])
        self.report(instance, f"external event '{name}' typed into the console: {line[:200]}")
        if sender is not None:
            self._confirm(sender, instance, TYPED, line[:200])

    def _already(self, sender: tuple[str, int], instance: str) -> None:
        logger.info("instance %s: event #%d of receiver %s was typed before; confirming again", instance, *sender[::-1])
        self._confirm(sender, instance, TYPED, "typed before (a re-send)")

    def _confirm(self, sender: tuple[str, int], instance: str, result: str, msg: str) -> None:
        if self.publish is None:
            return
        topic = delivery_topic(self.own_prefix, self.host, instance)
        payload = confirmation(
            secret=self.secret,
            topic=topic,
            receiver=sender[0],
            sequence=sender[1],
            host=self.host,
            instance=instance,
            result=result,
            msg=msg,
        )
        self.publish(topic, payload, qos=1)

    def _refuse(
        self, instance: str, name: str, message: str, *, level: int, sender: tuple[str, int] | None = None
    ) -> None:
        logger.log(level, "instance %s: %s", instance, message)
        self.audit(source="external-event", instance=instance, event=name, result=400, msg=message[:200])
        self.report(instance, message)
        if sender is not None:
            self._confirm(sender, instance, REFUSED, message)
