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
import hashlib
import hmac
import json
import logging
import socket
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
from supervisor.events.journal import FAILED, PUBLISHED, Entry, Journal
from supervisor.mqtt.connection import Connection
from supervisor.mqtt.protocol import load_record

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from supervisor.events.config import EventsConfig
    from supervisor.mqtt.config import AgentConfig
    from supervisor.mqtt.connection import Delivery

logger = logging.getLogger(__name__)

EVENT_TYPE = "webhook"
"""The ``type`` member of the payloads we publish (Hummingbot's default is ``eevent``)."""
ACK_TIMEOUT = 10.0
VIEW_SETTLE = 0.5
"""Seconds after (re)connecting before the retained state records count as the fleet view."""
BATCH = 100
PRUNE_EVERY = 3600.0
MAX_CONNECTIONS = 64
"""Connections served at once (each holds a thread, idle keep-alive ones for up to 5 s)."""
_DUMMY_TOKEN = uuid.uuid4().hex


def same_secret(given: str, expected: str) -> bool:
    """Compare two secrets in constant time (hashed first, so not even their lengths leak)."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def build_payload(entry: Entry) -> bytes:
    """Return the event as Hummingbot's ``ExternalEventMessage`` JSON (the same bytes on every retry)."""
    data = {"message": entry.body.decode("utf-8", "replace")} if entry.is_text else json.loads(entry.body)
    message = {"timestamp": int(entry.received * 1000), "sequence": entry.id, "type": EVENT_TYPE, "data": data}
    return json.dumps(message, separators=(",", ":")).encode()


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
    """Which instances the fleet has, from the retained ``{own}/{host}/{instance}/state`` records."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instances: set[tuple[str, str]] = set()
        self._since: float | None = None

    def connected(self) -> None:
        """Note a (re)connect: the view counts once the retained records had time to arrive."""
        with self._lock:
            self._since = time.monotonic()

    def on_state(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        """Record or forget one instance (an empty retained record means it was removed)."""
        parts = topic.split("/")
        key = (parts[-3], parts[-2])
        with self._lock:
            if load_record(payload) is None:
                self._instances.discard(key)
            else:
                self._instances.add(key)

    @property
    def settled(self) -> bool:
        """Whether the view is complete enough to expand patterns."""
        with self._lock:
            return self._since is not None and time.monotonic() - self._since >= VIEW_SETTLE

    def match(self, target: Target) -> list[str]:
        """Return the instance ids a pattern selects, sorted."""
        with self._lock:
            known = sorted(self._instances)
        return sorted(
            {
                name
                for host, name in known
                if fnmatch.fnmatchcase(name, target.instance)
                and (target.host is None or fnmatch.fnmatchcase(host, target.host))
            }
        )


@dataclasses.dataclass
class _Flight:
    entry: Entry
    topics: list[str]
    payload: bytes


class Publisher:
    """Sends journaled events in order at QoS 1; an event is done when every target's PUBACK came."""

    def __init__(
        self,
        journal: Journal,
        connection: Connection,
        view: FleetView,
        namespace: str,
        *,
        on_done: Callable[[Entry, str, list[str], str | None], None] | None = None,
    ) -> None:
        self.journal = journal
        self.connection = connection
        self.view = view
        self.namespace = namespace
        self.on_done = on_done
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: dict[tuple[int, str], Delivery] = {}
        self._resolved: dict[int, tuple[list[str], str | None]] = {}
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

    def _run(self) -> None:
        next_prune = 0.0
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY
                    pruned = self.journal.prune(time.time())
                    if pruned:
                        logger.info("removed %d finished events older than a week from the journal", pruned)
                while self.connection.is_connected and self._deliver_batch():
                    pass
            except Exception:  # the thread must outlive a bad event or a full disk
                logger.exception("publishing external events failed; retrying")
                self._stop.wait(1.0)

    def _topics(self, entry: Entry) -> tuple[list[str] | None, str | None]:
        """Return the event's topics (``None``: wait for the fleet view) and a note on unmatched patterns."""
        if entry.id in self._resolved:
            return self._resolved[entry.id]
        ids: list[str] = []
        unmatched: list[str] = []
        for text in entry.targets:
            target = Target.parse(text)
            if not target.is_pattern:
                ids.append(target.instance)
                continue
            if not self.view.settled:
                return None, None
            found = self.view.match(target)
            ids.extend(found)
            if not found:
                unmatched.append(text)
        topics = [event_topic(self.namespace, i, entry.event) for i in dict.fromkeys(ids)]
        note = f"target(s) {', '.join(unmatched)} match no instance the fleet knows" if unmatched else None
        self._resolved[entry.id] = (topics, note)
        return topics, note

    def _acknowledged(self, delivery: Delivery) -> bool:
        """Wait up to ``ACK_TIMEOUT`` for a PUBACK, in steps, so :meth:`stop` is not held up."""
        deadline = time.monotonic() + ACK_TIMEOUT
        while not self._stop.is_set():
            if delivery.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                return True
            if time.monotonic() >= deadline:
                return False
        return False

    def _deliver_batch(self) -> bool:
        """Publish and confirm one batch; return whether every event in it is done (more may wait)."""
        entries = self.journal.pending(BATCH)
        if not entries:
            return False
        flights: list[_Flight] = []
        notes: dict[int, str] = {}
        for entry in entries:
            topics, note = self._topics(entry)
            if topics is None:
                break
            if note:
                notes[entry.id] = note
            if not topics:
                self.journal.mark_failed(entry.id, note or "no targets")
                self._resolved.pop(entry.id, None)
                logger.warning("external event #%d of route %s failed: %s", entry.id, entry.route, note)
                if self.on_done:
                    self.on_done(entry, FAILED, [], note)
                continue
            flight = _Flight(entry, topics, build_payload(entry))
            full = False
            for topic in topics:
                key = (entry.id, topic)
                if topic in entry.delivered or key in self._inflight:
                    continue
                delivery = self.connection.publish_tracked(topic, flight.payload, qos=1)
                if delivery is None:
                    full = True
                    break
                self._inflight[key] = delivery
            flights.append(flight)
            if full:
                break
        done: list[tuple[int, list[str], bool]] = []
        finished: list[tuple[Entry, list[str]]] = []
        complete = True
        for flight in flights:
            delivered = list(flight.entry.delivered)
            for topic in flight.topics:
                if topic in delivered:
                    continue
                delivery = self._inflight.get((flight.entry.id, topic))
                if delivery is None or not self._acknowledged(delivery):
                    complete = False
                    break
                self._inflight.pop((flight.entry.id, topic))
                delivered.append(topic)
            if delivered != flight.entry.delivered or complete:
                done.append((flight.entry.id, delivered, complete))
            if not complete:
                break
            finished.append((flight.entry, delivered))
            self._resolved.pop(flight.entry.id, None)
        if done:
            self.journal.mark_delivered(done, time.time())
        for entry, topics in finished:
            logger.info("external event #%d (%s, route %s) published to %s", entry.id, entry.event, entry.route, topics)
            if self.on_done:
                self.on_done(entry, PUBLISHED, topics, notes.get(entry.id))
        return complete and len(flights) == len(entries)


# --- HTTP ----------------------------------------------------------------------------------------


class _HTTPServer(AppServer["Receiver"]):
    def __init__(self, address: tuple[str, int], app: Receiver) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler, app)

    def process_request(self, request: t.Any, client_address: t.Any) -> None:
        """Serve at most ``MAX_CONNECTIONS`` connections at once; close the others at once."""
        if not self.slots.acquire(blocking=False):
            logger.warning("too many open connections; closing one from %s", client_address[0])
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: t.Any, client_address: t.Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


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
    ) -> None:
        self.events = events
        self.config = config
        self.journal = journal
        self.audit = AuditLog(audit_path)
        self.limits = {name: RateLimit(route.rate, route.burst) for name, route in events.routes.items()}
        self.view = FleetView()
        client_id = config.broker.client_id or f"supervisor-events-{config.host_id}-{uuid.uuid4().hex[:6]}"
        self.connection = Connection(
            config.broker, client_id=client_id, on_connect=self._on_connect, max_backoff=max_backoff
        )
        self.connection.subscribe(f"{config.own_prefix}/+/+/state", self.view.on_state, qos=1)
        self.publisher = Publisher(journal, self.connection, self.view, config.namespace, on_done=self._on_done)
        address = listen or events.listen
        try:
            host, port = parse_listen(address)
            self.server = _HTTPServer((host, port), self)
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

    def _on_done(self, entry: Entry, status: str, topics: list[str], note: str | None) -> None:
        self.audit.record(
            source="webhook", route=entry.route, event=entry.event, id=entry.id, result=status, topics=topics, msg=note
        )
        # The dashboard's event stream shows {own}/{host}/{instance}/events: say so for each HOST/INSTANCE target.
        text = f"external event '{entry.event}' #{entry.id} from route '{entry.route}' {status}"
        for target in map(Target.parse, entry.targets):
            if target.host is None or target.is_pattern:
                continue
            record = {"ts": round(time.time(), 3), "host": target.host, "instance": target.instance, "msg": text}
            if note:
                record["msg"] = f"{text} ({note})"
            topic = f"{self.config.own_prefix}/{target.host}/{target.instance}/events"
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

    def client(self, peer: str, forwarded: str | None) -> str:
        """Return the sender's address: the proxy's ``X-Forwarded-For`` entry when the peer is a trusted proxy."""
        if forwarded and self.events.trusted_proxies and is_allowed(peer, self.events.trusted_proxies):
            last = forwarded.split(",")[-1].strip()
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
        try:
            parsed = json.loads(text) if text.strip()[:1] in ("{", "[") else None
        except (ValueError, RecursionError):
            parsed = None
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
            stored, is_text = json.dumps(parsed, separators=(",", ":")).encode(), False
        else:
            stored, is_text = text.encode(), True
        event_id, duplicate = self.journal.accept(
            route=route.name,
            event=route.event,
            targets=[str(target) for target in route.targets],
            body=stored,
            is_text=is_text,
            source=client,
            now=time.time(),
            dedupe_window=self.events.dedupe_window,
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
    timeout = 5  # a sender that trickles its body does not hold a thread for long
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # The status line and headers go out in one write and the body in another: without
        # TCP_NODELAY the body waits for the client's delayed ACK (~40 ms on Linux).
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/healthz":
            self._json(200, {"ok": True, "broker": self.server.app.connection.is_connected})
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
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self._json(400, {"error": "bad Content-Length"}, close=True)
            return
        if length > app.events.max_body:
            self._json(413, {"error": f"the body must be at most {app.events.max_body} bytes"}, close=True)
            return
        body = self.rfile.read(length)
        tokens = urllib.parse.parse_qs(parts.query).get("token")
        client = app.client(self.client_address[0], self.headers.get("X-Forwarded-For"))
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
