"""The webhook receiver: ``POST /hooks/{route}`` -> journal -> Hummingbot's external-event topics.

The HTTP side only checks, journals and answers (well within TradingView's 3 s);
a publisher thread sends journaled events in order at QoS 1 and records each
PUBACK, so a broker outage or a restart loses nothing. Stdlib HTTP; MQTT through
:mod:`supervisor.mqtt.connection`. Imports no manager.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import hashlib
import hmac
import io
import json
import logging
import math
import queue
import re
import socket
import sys
import threading
import time
import typing as t
import urllib.parse
import uuid

from supervisor._http import AppServer, Handler, ServedApp, parse_listen
from supervisor.audit import AuditLog
from supervisor.errors import SupervisorError
from supervisor.events import EventsError
from supervisor.events.config import Target, event_topic_suffix, is_allowed
from supervisor.events.journal import (
    DELIVERED,
    EXPIRED,
    FAILED,
    PUBLISHED,
    QUEUED,
    WAITING,
    Entry,
    Journal,
)
from supervisor.mqtt.auth import is_signed_record
from supervisor.mqtt.connection import Connection
from supervisor.mqtt.delivery import EXPIRES, RECEIVER, TO, TYPED, Confirmation, delivery_filter, read_confirmation
from supervisor.mqtt.protocol import load_record

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

    from supervisor.events.config import EventsConfig
    from supervisor.mqtt.config import AgentConfig
    from supervisor.mqtt.connection import Delivery

logger = logging.getLogger(__name__)

EVENT_TYPE = "webhook"
"""The ``type`` member of the payloads we publish (Hummingbot's default is ``eevent``)."""
VIEW_SETTLE = 0.5
"""Seconds after (re)connecting before the retained state records count as the fleet view."""
BATCH = 100
PRUNE_EVERY = 3600.0
MAX_CONNECTIONS = 64
"""Connections served at once (each holds a thread); when all are taken the slowest is cut."""
REQUEST_DEADLINE = 10.0
"""Seconds a sender has for a whole request, headers and body (a trickling sender is cut)."""
IDLE_TIMEOUT = 5.0
"""Seconds of silence after which a connection is closed."""
_DUMMY_TOKEN = uuid.uuid4().hex
_LENGTH_RE = re.compile(r"[0-9]{1,12}")


def same_secret(given: str, expected: str) -> bool:
    """Compare two secrets in constant time (hashed first, so not even their lengths leak)."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def build_payload(entry: Entry, receiver: str, to: Sequence[str] = ()) -> bytes:
    """Return the event as Hummingbot's ``ExternalEventMessage`` JSON.

    ``receiver``, ``expires`` and ``to`` are ours (Hummingbot ignores unknown members): an
    agent recognises a re-send by ``(receiver, sequence)``, never types an expired event, and
    types only for the ``HOST/INSTANCE`` targets listed in ``to`` (the topic names no host, so
    another host's bot of the same name hears it too).
    """
    data = {"message": entry.body.decode("utf-8", "replace")} if entry.is_text else json.loads(entry.body)
    message = {"timestamp": int(entry.received * 1000), "sequence": entry.id, "type": EVENT_TYPE, "data": data}
    message[RECEIVER] = receiver
    if entry.expires is not None:
        message[EXPIRES] = int(entry.expires * 1000)
    if to:
        message[TO] = sorted(to)
    return json.dumps(message, separators=(",", ":")).encode()


def _not_json(name: str) -> t.NoReturn:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        msg = f"{text} is too large a number"
        raise ValueError(msg)
    return value


def event_topic(namespace: str, instance: str, event: str) -> str:
    """Return ``{ns}/{id}/external/event/{name with . as /}``, where a Hummingbot bot listens."""
    return f"{namespace}/{instance}/external/event/{event_topic_suffix(event)}"


class RateLimit:
    """A token bucket: ``burst`` events at once, refilled at ``per_minute``."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.per_second = per_minute / 60.0
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float | None:
        """Take one token; return ``None``, or the seconds until one is available."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_second)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return None
            return (1.0 - self._tokens) / self.per_second


class FleetView:
    """What the fleet has, from the retained records: each host's agent and each instance's state.

    With ``secret`` set, only records signed with it count (an unsigned record on a
    writable topic must not add a target or make one look online).
    """

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self._lock = threading.Lock()
        self._instances: dict[tuple[str, str], dict[str, t.Any]] = {}
        self._agents: dict[str, float] = {}  # host -> since when (monotonic) its agent is online
        self._started: dict[str, float] = {}  # host -> its online record's ts (the agent's clock)
        self._since: float | None = None

    def connected(self) -> None:
        """Note a (re)connect: the view counts once the retained records had time to arrive."""
        with self._lock:
            self._since = time.monotonic()

    def _trusted(self, topic: str, payload: bytes) -> dict[str, t.Any] | None:
        record = load_record(payload)
        if record is not None and self.secret and not is_signed_record(self.secret, topic, record):
            logger.warning("ignoring an unsigned or wrongly signed record on %s", topic[:200])
            return None
        return record

    def on_state(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        """Record or forget one instance (an empty retained record means it was removed)."""
        parts = topic.split("/")
        key = (parts[-3], parts[-2])
        record = self._trusted(topic, payload)
        with self._lock:
            if record is None:
                self._instances.pop(key, None)
            else:
                self._instances[key] = record

    def on_agent(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        """Note whether a host's agent is online (its retained availability record)."""
        host = topic.split("/")[-2]
        record = self._trusted(topic, payload)
        with self._lock:
            if record is not None and record.get("state") == "online":
                self._agents.setdefault(host, time.monotonic())
                ts = record.get("ts")
                self._started[host] = float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else 0.0
            else:
                self._agents.pop(host, None)
                self._started.pop(host, None)

    @property
    def settled(self) -> bool:
        """Whether the view is complete enough to resolve targets."""
        with self._lock:
            return self._since is not None and time.monotonic() - self._since >= VIEW_SETTLE

    def match(self, target: Target) -> list[tuple[str, str]]:
        """Return the ``(host, instance)`` pairs a target selects (a pattern, or an exact name), sorted."""
        with self._lock:
            known = sorted(self._instances)
        return [
            (host, name)
            for host, name in known
            if fnmatch.fnmatchcase(name, target.instance)
            and (target.host is None or fnmatch.fnmatchcase(host, target.host))
        ]

    def is_fresh(self, host: str | None, now: float) -> bool:
        """Whether ``host``'s agent (any, for ``None``) came online so lately its records may still be coming."""
        with self._lock:
            started = [ts for h, ts in self._started.items() if host is None or fnmatch.fnmatchcase(h, host)]
        return any(now - ts < RECORD_GRACE for ts in started)

    def target(self, host: str, name: str) -> tuple[dict[str, t.Any] | None, float | None]:
        """Return an instance's state record and since when its host's agent is online (``None``: offline)."""
        with self._lock:
            return self._instances.get((host, name)), self._agents.get(host)


RECORD_GRACE = 5.0
"""Seconds after an agent's online record during which a missing instance is not yet taken as none."""
RESEND = 5.0
"""Seconds between re-sends of an event an agent has not confirmed yet."""


@dataclasses.dataclass
class _Sent:
    topic: str
    at: float
    delivery: Delivery | None = None


class Publisher:
    """Delivers journaled events in order, each target by its kind, until delivered or expired.

    A plugin-less bot's agent confirms what it typed or refused (``delivered`` /
    ``failed``): the event is sent again every :data:`RESEND` seconds, and at once when
    the agent comes back, until it does. A plugin bot cannot confirm: its event is
    published once, while the records say it runs and its host's agent is online, and is
    ``published`` on the broker's PUBACK. When the journal cannot be written nothing is
    sent (a state that cannot be recorded would be sent again), until it can.
    """

    def __init__(
        self,
        journal: Journal,
        connection: Connection,
        view: FleetView,
        namespace: str,
        *,
        on_done: Callable[[Entry, str, list[str], str | None], None] | None = None,
        on_blocked: Callable[[str], None] | None = None,
    ) -> None:
        self.journal = journal
        self.connection = connection
        self.view = view
        self.namespace = namespace
        self.on_done = on_done
        self.on_blocked = on_blocked
        self.receiver_id = journal.receiver_id
        self.blocked: str | None = None
        """Why the journal cannot be written right now (nothing is sent meanwhile), or ``None``."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sent: dict[tuple[int, str], _Sent] = {}
        self._writes: list[tuple[int, str, Mapping[str, str], str | None]] = []
        self._confirmed: queue.SimpleQueue[Confirmation] = queue.SimpleQueue()
        self._answers: dict[tuple[int, str], str] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the publishing thread."""
        self._thread = threading.Thread(target=self._run, name="events-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread (queued events stay in the journal)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def wake(self) -> None:
        """Look at the journal now (an event was accepted, or the broker came back)."""
        self._wake.set()

    def confirmed(self, answer: Confirmation) -> None:
        """Take an agent's confirmation (network thread: quick)."""
        if answer.receiver == self.receiver_id:
            self._confirmed.put(answer)
            self._wake.set()

    def _run(self) -> None:
        next_prune = 0.0
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if self.blocked is not None:
                    self.journal.probe()
                    logger.warning("the event journal can be written again; delivering external events again")
                    self.blocked = None
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY
                    pruned = self.journal.prune(time.time())
                    if pruned:
                        logger.info("removed %d finished events older than a week from the journal", pruned)
                if self._round():
                    self._wake.wait(0.02)  # PUBACKs are due: look again soon
                    self._wake.set()
            except EventsError as e:
                if self.blocked is None:
                    logger.error("cannot record external events' delivery (%s); sending nothing until it can", e)  # noqa: TRY400 - one line, no traceback per retry
                    self.blocked = str(e)
                    if self.on_blocked:
                        self.on_blocked(self.blocked)
                self.blocked = str(e)
                self._stop.wait(1.0)
            except Exception:  # the thread must outlive a bad event
                logger.exception("publishing external events failed; retrying")
                self._stop.wait(1.0)

    def _round(self) -> bool:
        """Move every pending event on; return whether some broker acknowledgement is awaited."""
        while True:
            try:
                answer = self._confirmed.get_nowait()
            except queue.Empty:
                break
            key = f"{answer.host}/{answer.instance}"
            outcome = DELIVERED if answer.result == TYPED else f"{FAILED}: {answer.msg}"
            self._answers.setdefault((answer.sequence, key), outcome)
        entries = self.journal.pending(BATCH)
        now = time.time()
        self._writes = []
        finished: list[tuple[Entry, str, Mapping[str, str], str | None]] = []
        for entry in entries:
            final = self._advance(entry, now)
            if final is not None:
                finished.append((entry, *final))
        if self._writes:  # one commit (one fsync) for the whole round
            self.journal.update_many(self._writes, now=now)
        for entry, status, outcomes, error in finished:
            self._finished(entry, status, outcomes, error)
        live = {entry.id for entry in entries}
        for stale in [k for k in self._answers if k[0] not in live and k[0] < min(live, default=1 << 62)]:
            del self._answers[stale]
        return any(sent.delivery is not None for sent in self._sent.values())

    def _resolve(self, entry: Entry, now: float) -> tuple[list[str], dict[str, str], bool]:
        """Return the event's ``host/instance`` targets, the outcomes known at once, and whether to wait.

        A target that matches no instance fails, unless an agent it may name has just come
        online (its state records follow its availability record): then the event waits.
        """
        keys: list[str] = []
        failed: dict[str, str] = {}
        waiting = False
        for text in entry.targets:
            target = Target.parse(text)
            found = [f"{host}/{name}" for host, name in self.view.match(target)]
            if not found and self.view.is_fresh(target.host, now):
                waiting = True
            elif not found:
                failed[text] = f"{FAILED}: no instance matches {text}"
            keys.extend(found)
        return list(dict.fromkeys(keys)), failed, waiting

    def _advance(self, entry: Entry, now: float) -> tuple[str, Mapping[str, str], str | None] | None:
        """Move one event on; return ``(status, outcomes, error)`` when it became final (written by the caller)."""
        if entry.expires is not None and now > entry.expires:
            return self._finish(
                entry, EXPIRED, entry.outcomes, f"not delivered within {entry.expires - entry.received:g} s"
            )
        if not self.view.settled or not self.connection.is_connected:
            return None
        keys, outcomes, waiting = self._resolve(entry, now)
        outcomes = {**outcomes, **entry.outcomes}
        payload = functools.partial(build_payload, entry, self.receiver_id, keys)  # built only when sent
        topic_now: dict[str, bool] = {}
        for key in keys:
            if key in outcomes:
                continue
            answer = self._answers.pop((entry.id, key), None)
            if answer is not None:
                outcomes[key] = answer
                self._sent.pop((entry.id, key), None)
                continue
            host, _, name = key.partition("/")
            record, online_since = self.view.target(host, name)
            if record is None:
                outcomes[key] = f"{FAILED}: no instance {key}"
                continue
            plugin = bool(record.get("plugin"))
            if online_since is None or (plugin and record.get("state") != "running"):
                waiting = True
                continue
            topic = event_topic(self.namespace, name, entry.event)
            sent = self._sent.get((entry.id, key))
            if plugin:
                if sent is None:
                    self._sent[(entry.id, key)] = _Sent(topic, now, self._publish(topic, payload(), topic_now))
                elif sent.delivery is not None and sent.delivery.wait(0):
                    outcomes[key] = PUBLISHED
                    self._sent.pop((entry.id, key))
            elif sent is None or now - sent.at >= RESEND or sent.at < now - (time.monotonic() - online_since):
                self._publish(topic, payload(), topic_now)
                self._sent[(entry.id, key)] = _Sent(topic, now)
        if not waiting and all(key in outcomes for key in keys):
            return self._finish(entry, _final(outcomes), outcomes, None)
        status = WAITING if waiting else QUEUED
        if outcomes != entry.outcomes or status != entry.status:
            self._writes.append((entry.id, status, outcomes, None))
        return None

    def _publish(self, topic: str, payload: bytes, topic_now: dict[str, bool]) -> Delivery | None:
        """Publish an event once per topic (one topic may reach a bare id's instances on several hosts)."""
        if topic in topic_now:
            return None
        topic_now[topic] = True
        return self.connection.publish_tracked(topic, payload, qos=1)

    def _finish(
        self, entry: Entry, status: str, outcomes: Mapping[str, str], note: str | None
    ) -> tuple[str, Mapping[str, str], str | None]:
        failures = [f"{k}: {v.removeprefix(FAILED + ': ')}" for k, v in outcomes.items() if v.startswith(FAILED)]
        error = note or ("; ".join(failures) if failures else None)
        self._writes.append((entry.id, status, outcomes, error))
        return status, outcomes, error

    def _finished(self, entry: Entry, status: str, outcomes: Mapping[str, str], error: str | None) -> None:
        """Forget a final event's sends, log it and tell ``on_done`` (after its status is on disk)."""
        for key in [k for k in self._sent if k[0] == entry.id]:
            del self._sent[key]
        level = logging.INFO if status in (DELIVERED, PUBLISHED) else logging.WARNING
        logger.log(level, "external event #%d (%s, route %s) %s%s", entry.id, entry.event, entry.route, status,
                   f": {error}" if error else "")  # fmt: skip
        if self.on_done:
            self.on_done(entry, status, sorted(outcomes), error)


def _final(outcomes: Mapping[str, str]) -> str:
    """Return an event's status once every target has an outcome."""
    values = set(outcomes.values())
    if any(v.startswith(FAILED) for v in values):
        return FAILED
    return DELIVERED if values == {DELIVERED} else PUBLISHED


# --- HTTP ----------------------------------------------------------------------------------------


class _HTTPServer(AppServer["Receiver"]):
    def __init__(self, address: tuple[str, int], app: Receiver, deadline: float) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.deadline = deadline
        self.handlers: set[_Handler] = set()
        self.handlers_lock = threading.Lock()
        super().__init__(address, _Handler, app)

    def process_request(self, request: t.Any, client_address: t.Any) -> None:
        """Serve at most ``MAX_CONNECTIONS`` at once; when full, cut the one slowest to send its request."""
        taken = self.slots.acquire(blocking=False) or (self._cut_slowest() and self.slots.acquire(timeout=2))
        if not taken:
            logger.warning("too many open connections; closing one from %s", client_address[0])
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def _cut_slowest(self) -> bool:
        """Close the connection that has been sending its request (or idling) the longest."""
        with self.handlers_lock:
            reading = [(h.reading_since, id(h), h) for h in self.handlers if h.reading_since is not None]
        if not reading:
            return False
        _, _, victim = min(reading)
        logger.info("all connections taken; cutting the slowest, from %s", victim.client_address[0])
        with contextlib.suppress(OSError):
            victim.connection.shutdown(socket.SHUT_RDWR)
        return True

    def process_request_thread(self, request: t.Any, client_address: t.Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: t.Any, client_address: t.Any) -> None:
        """Log a connection that failed in one line (a sender hanging up early is no traceback)."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            logger.info("connection from %s ended early: %s", client_address[0], error)
        else:
            logger.exception("serving a request from %s failed", client_address[0])


class _DeadlineSocket(io.RawIOBase):
    """Reads a connection until the handler's deadline: each recv waits at most what is left of it."""

    def __init__(self, handler: _Handler) -> None:
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: t.Any) -> int:
        remaining = self.handler.deadline - time.monotonic()
        if remaining <= 0:
            msg = "the request took longer than its deadline"
            raise TimeoutError(msg)
        self.handler.connection.settimeout(min(remaining, IDLE_TIMEOUT))
        return int(self.handler.connection.recv_into(buffer))


class Receiver(ServedApp):
    """The whole receiver: HTTP server, journal, publisher and its MQTT connection.

    Parameters
    ----------
    events
        Routes and receiver settings from ``events.toml``.
    config
        Broker and namespaces, as ``load_agent_config`` builds them.
    journal
        The SQLite journal (``$SUPERVISOR_HOME/events.sqlite``).
    audit_path
        The append-only audit log shared with the agent.
    listen
        ``HOST:PORT``, overriding ``events.listen``.
    request_deadline
        Seconds a sender has for one whole request.

    Raises
    ------
    EventsError
        If the address cannot be bound.
    """

    def __init__(
        self,
        events: EventsConfig,
        config: AgentConfig,
        journal: Journal,
        *,
        audit_path: Path,
        listen: str | None = None,
        max_backoff: float = 5.0,
        request_deadline: float = REQUEST_DEADLINE,
    ) -> None:
        self.events = events
        self.config = config
        self.journal = journal
        self.audit = AuditLog(audit_path)
        self.limits = {name: RateLimit(route.rate, route.burst) for name, route in events.routes.items()}
        self.view = FleetView(config.secret)
        client_id = config.broker.client_id or f"supervisor-events-{config.host_id}-{uuid.uuid4().hex[:6]}"
        self.connection = Connection(
            config.broker, client_id=client_id, on_connect=self._on_connect, max_backoff=max_backoff
        )
        self.connection.subscribe(f"{config.own_prefix}/+/+/state", self.view.on_state, qos=1)
        self.connection.subscribe(f"{config.own_prefix}/+/agent", self.view.on_agent, qos=1)
        self.publisher = Publisher(
            journal, self.connection, self.view, config.namespace, on_done=self._on_done, on_blocked=self._on_blocked
        )
        self.connection.subscribe(delivery_filter(config.own_prefix), self._on_delivery, qos=1)
        address = listen or events.listen
        try:
            host, port = parse_listen(address)
            self.server = _HTTPServer((host, port), self, request_deadline)
        except (OSError, SupervisorError) as e:
            detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            msg = f"webhook receiver: cannot listen on {address}: {detail}. Pick another address with --listen."
            raise EventsError(msg) from e
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.server.server_address[1]}/"
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def _on_connect(self) -> None:
        self.view.connected()
        self.publisher.wake()

    def _on_delivery(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        answer = read_confirmation(topic, payload, self.config.secret)
        if answer is not None:
            self.publisher.confirmed(answer)

    def _on_blocked(self, error: str) -> None:
        """Alert on each bot whose events wait: the journal cannot be written, nothing is sent."""
        text = (
            f"external events held: the receiver cannot record their delivery ({error}); nothing is sent until it can"
        )
        try:
            entries = self.journal.pending()
        except EventsError:
            entries = []
        where = {key for entry in entries for key in entry.outcomes}
        where |= {key for entry in entries for key in self._keys(entry)}
        for key in sorted(where):
            host, _, name = key.partition("/")
            record = {"ts": round(time.time(), 3), "host": host, "instance": name, "msg": text, "level": "error"}
            self.connection.publish(f"{self.config.own_prefix}/{key}/events", json.dumps(record).encode(), qos=1)

    def _keys(self, entry: Entry) -> set[str]:
        found = {
            f"{host}/{name}" for target in map(Target.parse, entry.targets) for host, name in self.view.match(target)
        }
        return found | {str(x) for x in map(Target.parse, entry.targets) if x.host is not None and not x.is_pattern}

    def _on_done(self, entry: Entry, status: str, topics: list[str], note: str | None) -> None:
        self.audit.record(
            source="webhook", route=entry.route, event=entry.event, id=entry.id, result=status, topics=topics, msg=note
        )
        # The dashboard's event stream shows {own}/{host}/{instance}/events: say so for each instance reached.
        text = f"external event '{entry.event}' #{entry.id} from route '{entry.route}' {status}"
        where = {k for k in topics if "/" in k and "*" not in k}
        where |= {str(x) for x in map(Target.parse, entry.targets) if x.host is not None and not x.is_pattern}
        for key in sorted(where):
            host, _, name = key.partition("/")
            record: dict[str, t.Any] = {"ts": round(time.time(), 3), "host": host, "instance": name, "msg": text}
            if note:
                record["msg"] = f"{text} ({note})"
            if status in (EXPIRED, FAILED):
                record["level"] = "error"
            topic = f"{self.config.own_prefix}/{host}/{name}/events"
            self.connection.publish(topic, json.dumps(record).encode(), qos=1)

    def start(self) -> None:
        """Connect (in the background: the broker may be down), publish, and serve HTTP."""
        self.connection.start()
        self.publisher.start()
        self.publisher.wake()
        self._serve_in_background("events-http")
        logger.info(
            "webhook receiver on %s with route(s) %s; publishing to %s",
            self.url,
            ", ".join(sorted(self.events.routes)),
            self.config.broker.url,
        )

    def close(self) -> None:
        """Stop HTTP, the publisher and the connection; queued events stay in the journal."""
        self._close_server()
        self.publisher.stop()
        self.connection.stop()
        self.journal.close()

    # -- one request --------------------------------------------------------------------

    def client(self, peer: str, forwarded: Sequence[str] | None) -> str:
        """Return the sender's address: the hop a trusted proxy added to ``X-Forwarded-For``, else the peer.

        A proxy appends the address it saw: the last entry of the last header line. Entries
        before it (the first line, if two were sent) came from the client and prove nothing.
        """
        if forwarded and self.events.trusted_proxies and is_allowed(peer, self.events.trusted_proxies):
            last = forwarded[-1].split(",")[-1].strip()
            if last:
                return last
        return peer

    def accept(
        self, route_name: str, client: str, query_token: str | None, body: bytes
    ) -> tuple[int, dict[str, t.Any], Mapping[str, str]]:
        """Check and journal one webhook; return ``(HTTP status, JSON body, headers)``."""
        route = self.events.routes.get(route_name)
        if route is None:
            same_secret(query_token or "", _DUMMY_TOKEN)  # the same work as for a known route
            return 404, {"error": "unknown route"}, {}
        if not (is_allowed(client, self.events.allow) and is_allowed(client, route.allow)):
            logger.warning("route %s: refused a request from %s (not in the allow-list)", route.name, client)
            self.audit.record(source="webhook", route=route.name, client=client, result=403, msg="source not allowed")
            return 403, {"error": "source address not allowed"}, {}
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return 400, {"error": "the body must be UTF-8 text"}, {}
        parsed: t.Any = None
        if text.strip()[:1] in ("{", "["):
            try:
                parsed = json.loads(text, parse_constant=_not_json, parse_float=_finite)
            except (ValueError, RecursionError):
                # Stored as text it would keep a token it holds: refuse, store nothing.
                return 400, {"error": "the body starts like JSON but is not standard JSON; send valid JSON"}, {}
        body_token = parsed.pop("token", None) if isinstance(parsed, dict) else None
        token = query_token if query_token is not None else body_token
        if not isinstance(token, str) or not same_secret(token, route.token):
            why = "missing token" if token is None else "wrong token"
            logger.warning("route %s: refused a request from %s (%s)", route.name, client, why)
            self.audit.record(source="webhook", route=route.name, client=client, result=401, msg=why)
            return 401, {"error": f'{why}: pass ?token=... in the URL or a "token" member in a JSON body'}, {}
        wait = self.limits[route.name].take()
        if wait is not None:
            logger.warning("route %s: rate limit reached; refused a request from %s", route.name, client)
            self.audit.record(source="webhook", route=route.name, client=client, result=429, msg="rate limit")
            return 429, {"error": "rate limit reached"}, {"Retry-After": str(max(1, round(wait + 0.5)))}
        if isinstance(parsed, dict):
            shown = json.dumps(parsed, separators=(",", ":"))
            is_text = False
            # A token elsewhere in the body (a nested member, a URL in a message) never reaches the journal.
            shown = shown.replace(json.dumps(route.token)[1:-1], "[token]")
        else:
            shown, is_text = text.replace(route.token, "[token]"), True
        stored = shown.encode()
        event_id, duplicate = self.journal.accept(
            route=route.name,
            event=route.event,
            targets=[str(target) for target in route.targets],
            body=stored,
            is_text=is_text,
            source=client,
            now=time.time(),
            dedupe_window=self.events.dedupe_window,
            max_age=route.max_age,
        )
        if duplicate:
            logger.info("route %s: dropped a duplicate of event #%d from %s", route.name, event_id, client)
            self.audit.record(source="webhook", route=route.name, client=client, result=200, id=event_id, msg="dup")
            return 200, {"status": "duplicate", "id": event_id}, {}
        self.publisher.wake()
        logger.info("route %s: accepted event #%d (%s) from %s", route.name, event_id, route.event, client)
        self.audit.record(source="webhook", route=route.name, client=client, result=202, id=event_id, msg="queued")
        return 202, {"status": "queued", "id": event_id}, {}


class _Handler(Handler):
    server: _HTTPServer
    server_version = "supervisor-events"
    timeout = IDLE_TIMEOUT
    protocol_version = "HTTP/1.1"
    deadline = 0.0
    reading_since: float | None = None

    def setup(self) -> None:
        super().setup()
        # The status line and headers go out in one write and the body in another: without
        # TCP_NODELAY the body waits for the client's delayed ACK (~40 ms on Linux).
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = io.BufferedReader(_DeadlineSocket(self))
        with self.server.handlers_lock:
            self.server.handlers.add(self)

    def finish(self) -> None:
        with self.server.handlers_lock:
            self.server.handlers.discard(self)
        with contextlib.suppress(OSError):
            super().finish()

    def handle_one_request(self) -> None:
        # One deadline per request, from the moment we wait for its first byte.
        self.reading_since = time.monotonic()
        self.deadline = self.reading_since + self.server.deadline
        try:
            super().handle_one_request()
        except TimeoutError:
            self.close_connection = True  # a trickling sender: cut, nothing stored
        finally:
            self.reading_since = None

    def log_message(self, format: str, *args: t.Any) -> None:
        """Log nothing from http.server: its lines hold the request line, and so the URL's token."""

    def _json(self, status: int, data: t.Any, headers: Mapping[str, str] | None = None, *, close: bool = False) -> None:
        body = json.dumps(data, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the sender hung up before our answer: nothing to tell it
            self.close_connection = True

    def do_GET(self) -> None:
        self.reading_since = None
        path = urllib.parse.urlsplit(self.path).path
        if path == "/healthz":
            app = self.server.app
            blocked = app.publisher.blocked
            body = {"ok": blocked is None, "broker": app.connection.is_connected, "journal": blocked or "ok"}
            self._json(200 if blocked is None else 503, body)
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        app = self.server.app
        parts = urllib.parse.urlsplit(self.path)
        name = parts.path.removeprefix("/hooks/")
        if not parts.path.startswith("/hooks/") or "/" in name:
            self._json(404, {"error": "not found"}, close=True)
            return
        if self.headers.get("Transfer-Encoding"):
            self._json(411, {"error": "send a Content-Length (chunked bodies are not accepted)"}, close=True)
            return
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            self._json(411, {"error": "send a Content-Length"}, close=True)
            return
        if len(lengths) > 1 or not _LENGTH_RE.fullmatch(lengths[0]):
            self._json(400, {"error": "bad Content-Length: send one header with a plain number"}, close=True)
            return
        length = int(lengths[0])
        if length > app.events.max_body:
            self._json(413, {"error": f"the body must be at most {app.events.max_body} bytes"}, close=True)
            return
        body = self.rfile.read(length)
        if len(body) < length:  # the sender hung up (or was cut) mid-body: store nothing
            logger.info("route %s: a body ended after %d of %d bytes; nothing stored", name, len(body), length)
            self._json(400, {"error": "the body is shorter than its Content-Length"}, close=True)
            return
        self.reading_since = None
        tokens = urllib.parse.parse_qs(parts.query).get("token")
        client = app.client(self.client_address[0], self.headers.get_all("X-Forwarded-For"))
        try:
            status, data, headers = app.accept(name, client, tokens[-1] if tokens else None, body)
        except SupervisorError as e:  # the journal could not be written: the sender should retry
            logger.error("route %s: could not journal an event: %s", name, e)  # noqa: TRY400 - the message says it all
            status, data, headers = 503, {"error": "cannot store the event right now; retry"}, {}
        self._json(status, data, headers)

    def do_PUT(self) -> None:
        self._json(405, {"error": "use POST"}, {"Allow": "POST"}, close=True)

    do_DELETE = do_PUT
    do_PATCH = do_PUT
