"""The dashboard server: static page, JSON API and Server-Sent Events over ``http.server``.

One long-lived :class:`~supervisor.fleet.client.FleetClient` keeps the fleet's
:class:`~supervisor.fleet.view.FleetView` (the same hosts, instances and staleness
rules as ``fleet ls``) and carries every command; on top of it the dashboard adds
health, alerts, history from Hummingbot's ``notify``/``log``/``performance`` streams
and our ``events``. The view is pushed to browsers every second and at once on a
change. Stdlib only; no paho here.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import gzip
import http.cookies
import http.server
import ipaddress
import json
import logging
import math
import queue
import re
import secrets
import threading
import time
import typing as t
import urllib.parse
import uuid
from importlib import resources

from supervisor import __version__
from supervisor._http import AppServer, Handler, ServedApp, parse_listen
from supervisor.consoletext import check_console_text
from supervisor.errors import UnsafeConsoleText
from supervisor.fleet.client import FleetClient
from supervisor.fleet.dashboard import DashboardError
from supervisor.fleet.dashboard.alerts import Alerter, shown_url
from supervisor.fleet.dashboard.auth import LoginThrottle, Sessions, verify_password
from supervisor.fleet.dashboard.flapping import Flapping
from supervisor.fleet.dashboard.store import controller_figures, message_time
from supervisor.fleet.dashboard.window import WINDOW, Query, parse_query, select, windowed
from supervisor.fleet.view import GREY, PROBE_EVERY, TRUSTED_KEY, Seen
from supervisor.mqtt import protocol
from supervisor.mqtt.protocol import load_record
from supervisor.states import ALIVE, BAD, State

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from supervisor.fleet.dashboard.auth import DashboardSettings, Session
    from supervisor.fleet.dashboard.store import Store
    from supervisor.fleet.view import Change
    from supervisor.mqtt.config import AgentConfig

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8080"
COOKIE = "supervisor_session"
HBOT_VERBS = ("import", "config")
TIMEOUTS: dict[str, float] = {
    "start": 60.0,
    "stop": 60.0,
    "restart": 120.0,
    "status": 10.0,
    "tail": 5.0,
    "logs": 10.0,
    "send": 10.0,
    "import": 15.0,
    "config": 15.0,
}
"""Seconds to wait for each verb's reply before telling the page it timed out."""
RECENT_CRASH = 15.0
"""Seconds a row stays red after its bot crashed, even once the agent has restarted it."""
HEARTBEAT_SLACK = 2.5
"""A running bot is red when its last heartbeat is older than this many intervals."""
BUSY_AFTER = 3.0
ECHO_WINDOW = 30.0
"""Seconds within which an agent event and its Hummingbot ``notify`` copy count as one message."""
SPARK_POINTS = 60
MAX_BODY = 64 * 1024
MAX_STREAMS = 64
MAX_STREAMS_PER_CLIENT = 8
# scrypt needs 16 MB per check: bound how many run at once, and how many logins may wait for a turn.
MAX_PASSWORD_CHECKS = 2
MAX_PASSWORD_QUEUE = 8
TICK = 1.0
SNAPSHOT_SHARE = 0.1
"""The share of one core the live view may take: after a view that took d seconds, the next waits d/share - d."""
MIN_PUSH = 0.1
"""At most ten pushes a second, however busy the fleet."""
BATCH = 500
"""History messages written in one transaction at most."""
DROP_LOG_EVERY = 60.0
"""Seconds between two log lines counting history messages dropped meanwhile."""
WINDOW_BEAT = 30.0
"""Above the window, a row's heartbeat time is sent again only once it moved this many seconds."""
RECHECK_EVERY = 30.0
"""Seconds before the records of a host with stale records are asked for again (a broker may have dropped them)."""
RECHECK_RECORDS = 200
"""Records asked for again at once, at most (whole hosts; a larger one is never asked): the broker must queue them."""
RECHECK_MAX_WAIT = 600.0
"""The longest a host still stale after being asked again waits to be asked once more."""
GZIP_MIN = 1024
"""Answers at least this long are compressed for a client that accepts gzip."""
_RECORD_FIELDS = (
    "pid",
    "cpu_percent",
    "rss",
    "restarts",
    "commit",
    "recipe",
    "backend",
    "desired",
    "plugin",
    "exit_code",
    "last_error",
)
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "stream.js": "text/javascript; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


# --- listen address ----------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Return whether ``host`` is a loopback address (``localhost`` counts; other names do not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- server push -------------------------------------------------------------------


def sse_frame(event: str, data: t.Any) -> bytes:
    """Return one Server-Sent Events frame (``json.dumps`` never writes a newline)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


def snapshot_delta(old: Mapping[str, t.Any], new: Mapping[str, t.Any]) -> dict[str, t.Any] | None:
    """Return what changed from ``old`` to ``new`` (``None``: nothing did).

    A new instance is sent whole; a known one as its target and the fields that changed.
    Heartbeat times go in a compact ``beats`` map, and ``pnl_series`` never (the page extends
    its sparklines from the ``performance`` events). Between two windowed views (``summary``),
    hosts come as ``host_changes`` and ``hosts_removed`` instead of the whole list.
    """
    before = {item["target"]: item for item in old["instances"]}
    delta: dict[str, t.Any] = {key: new.get(key) for key in _HEADER if old.get(key) != new.get(key)}
    if "hosts" in delta and "summary" in old and "summary" in new:
        # Above the window (hundreds of hosts): only the hosts that changed, and the ones that went.
        del delta["hosts"]
        known = {host["host"]: host for host in old["hosts"]}
        changed_hosts = [host for host in new["hosts"] if known.pop(host["host"], None) != host]
        if changed_hosts:
            delta["host_changes"] = changed_hosts
        if known:
            delta["hosts_removed"] = sorted(known)
    changed: list[dict[str, t.Any]] = []
    beats: dict[str, t.Any] = {}
    for item in new["instances"]:
        target = item["target"]
        previous = before.pop(target, None)
        if previous is None:
            changed.append({k: v for k, v in item.items() if k != "pnl_series"})
            continue
        fields = {k: v for k, v in item.items() if k not in _QUIET and previous.get(k) != v}
        if fields:
            changed.append({"target": target, **fields})
        if item.get("heartbeat_ts") != previous.get("heartbeat_ts"):
            beats[target] = item.get("heartbeat_ts")
    if changed:
        delta["instances"] = changed
    if beats:
        delta["beats"] = beats
    if before:
        delta["removed"] = list(before)
    return {"now": new["now"], **delta} if delta else None


_HEADER = ("connected", "broker", "hosts", "summary", "dropped")
"""The fields of a view besides its rows, sent again whenever they change (``summary``: only above the window)."""
_QUIET = frozenset({"pnl_series", "heartbeat_ts", "pnl_ts"})
"""Fields a delta leaves out: the page keeps them up to date from the ``performance`` events and ``beats``."""


def _coarse_beats(old: Mapping[str, t.Any], new: dict[str, t.Any]) -> dict[str, t.Any]:
    """Return ``new`` keeping a row's last sent heartbeat time until it is :data:`WINDOW_BEAT` seconds newer.

    Above the window every beat would cost each tab more than its budget; health (a late heartbeat
    turns a row red) is judged here all the same, only the page's heartbeat age is coarser.
    """
    sent = {item["target"]: item.get("heartbeat_ts") for item in old["instances"]}
    rows = []
    for item in new["instances"]:
        before, beat = sent.get(item["target"]), item.get("heartbeat_ts")
        if before is not None and beat is not None and beat - before < WINDOW_BEAT:
            item = {**item, "heartbeat_ts": before}
        rows.append(item)
    return {**new, "instances": rows}


class Hub:
    """Fan-out of SSE frames to every open ``/events`` stream; a stream that cannot keep up is dropped.

    A new stream starts with the last snapshot; after that every stream gets only deltas. Above
    :data:`~supervisor.fleet.dashboard.window.WINDOW` instances, the snapshot and deltas carry only
    that many rows (problems first) and a summary of all; a row entering or leaving is added or removed.

    Slots are counted per client (a login session, or else an address): one
    client holds at most ``per_client`` streams, and opening one more ends its
    oldest, so no single client can take every slot.
    """

    def __init__(
        self,
        limit: int = MAX_STREAMS,
        backlog: int = 500,
        per_client: int = MAX_STREAMS_PER_CLIENT,
        window: int = WINDOW,
    ) -> None:
        self.limit = limit
        self.window = window
        self.per_client = per_client
        self.backlog = backlog
        self._lock = threading.Lock()
        self._clients: set[queue.Queue[bytes | None]] = set()
        self._by_client: dict[str, collections.deque[queue.Queue[bytes | None]]] = {}
        self._last: dict[str, t.Any] | None = None

    def subscribe(self, client: str = "") -> queue.Queue[bytes | None] | None:
        """Return a new stream's queue for ``client`` (holding the last snapshot), or ``None`` when all are taken."""
        with self._lock:
            own = self._by_client.setdefault(client, collections.deque())
            while own and len(own) >= self.per_client:
                oldest = own.popleft()
                self._clients.discard(oldest)
                with contextlib.suppress(queue.Full):
                    oldest.put_nowait(None)
            if len(self._clients) >= self.limit:
                if not own:
                    del self._by_client[client]
                return None
            q: queue.Queue[bytes | None] = queue.Queue(self.backlog)
            if self._last is not None:
                q.put_nowait(sse_frame("snapshot", self._last))
            self._clients.add(q)
            own.append(q)
            return q

    def unsubscribe(self, q: queue.Queue[bytes | None]) -> None:
        """Forget a stream."""
        with self._lock:
            self._clients.discard(q)
            for client, own in list(self._by_client.items()):
                if q in own:
                    own.remove(q)
                if not own:
                    del self._by_client[client]

    def broadcast(self, event: str, data: t.Any) -> None:
        """Queue one frame for every stream; a stream whose queue is full is dropped (its reader ends)."""
        frame = sse_frame(event, data)
        with self._lock:
            self._put(frame)

    def publish_snapshot(self, snapshot: dict[str, t.Any]) -> None:
        """Send what changed since the last snapshot (the whole snapshot the first time)."""
        snapshot = windowed(snapshot, self.window)
        with self._lock:
            if self._last is not None and "summary" in snapshot:
                snapshot = _coarse_beats(self._last, snapshot)
            if self._last is None:
                frame: bytes | None = sse_frame("snapshot", snapshot)
            else:
                delta = snapshot_delta(self._last, snapshot)
                frame = None if delta is None else sse_frame("delta", delta)
            self._last = snapshot
            if frame is not None:
                self._put(frame)

    def _put(self, frame: bytes) -> None:
        for q in list(self._clients):
            if q.full():
                self._clients.discard(q)
            else:
                q.put_nowait(frame)

    def is_subscribed(self, q: queue.Queue[bytes | None]) -> bool:
        """Return whether the stream of ``q`` is still wanted."""
        with self._lock:
            return q in self._clients

    def close(self) -> None:
        """End every stream."""
        with self._lock:
            clients, self._clients = list(self._clients), set()
        for q in clients:
            with contextlib.suppress(queue.Full):
                q.put_nowait(None)


# --- the fleet, live -----------------------------------------------------------------


class Monitor:
    """The dashboard's MQTT side: the fleet view with health and alerts, history capture and commands."""

    def __init__(
        self,
        config: AgentConfig,
        store: Store,
        hub: Hub,
        *,
        clock: Callable[[], float] = time.time,
        webhook_url: str | None = None,
        flapping: Flapping | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.hub = hub
        self.alerter = Alerter(webhook_url, self._send_alert, clock=clock)
        self.flapping = flapping or Flapping()
        self.own = config.own_prefix
        self.ns = config.namespace
        self._clock = clock
        self.fleet = FleetClient(config, client_id=f"supervisor-dashboard-{uuid.uuid4().hex[:12]}", clock=clock)
        self.view = self.fleet.view
        self._lock = threading.Lock()
        self._crashes: dict[tuple[str, str], tuple[float, str, t.Any]] = {}
        self._busy: dict[tuple[str, str], float] = {}
        self._spark: dict[str, collections.deque[tuple[float, float]]] = {}
        self._saved: dict[tuple[str, str], tuple[float, t.Any]] = {}
        self._recent_text: dict[tuple[str, str], tuple[float, str]] = {}
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue(10_000)
        self.dropped = 0
        """History messages dropped since the start because the store could not keep up (never silently: logged)."""
        self._dropped_logged = (0, 0.0)
        self._latest: dict[str, t.Any] | None = None
        self._asked: dict[str, float] = {}  # host -> when its records were last asked for again (monotonic)
        self._asking: dict[str, float] = {}  # the hosts whose subscription of their own is still open
        self._recheck_wait: dict[str, float] = {}  # host asked again and stale ever since -> its next wait
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = clock()

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Load history, subscribe and connect (within 10 s, else :class:`AgentError`)."""
        for name in self.store.instances_with_performance():
            self._spark[name] = collections.deque(self.store.performance(name, SPARK_POINTS), SPARK_POINTS)
        # Without retained messages (a broker restart, a broker that keeps none) a dead agent would vanish.
        # Only trusted records were remembered.
        self.view.remember(self.store.known_hosts(), self.store.known_states())
        self.fleet.watch(on_agent=self._agent_changed, on_state=self._state_changed)
        subscribe = self.fleet.connection.subscribe
        subscribe(f"{self.own}/+/+/events", self._on_event, qos=1)
        subscribe(f"{self.ns}/+/notify", self._on_notify, qos=0)
        subscribe(f"{self.ns}/+/log", self._on_log, qos=0)
        subscribe(f"{self.ns}/+/performance", self._on_performance, qos=0)
        self.fleet.__enter__()
        first = self.snapshot()
        self._latest = first
        self.hub.publish_snapshot(first)  # the first page gets a view at once, then deltas
        self.alerter.observe(first)
        self.alerter.start()
        threads = (
            (self._writer, "dashboard-store"),
            (self._ticker, "dashboard-tick"),
            (self._prober, "dashboard-probe"),
        )
        for target, name in threads:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Disconnect and end the worker threads."""
        self._stop.set()
        self._poke.set()
        with contextlib.suppress(queue.Full):  # a writer that cannot keep up must not hold up the stop
            self._work.put(None, timeout=5)
        for thread in self._threads:
            thread.join(5)
        self.alerter.stop()
        self.fleet.__exit__()

    @property
    def connected(self) -> bool:
        """Whether the MQTT session is up."""
        return self.fleet.connection.is_connected

    def _defer(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the store thread (MQTT handlers must return quickly); count what does not fit."""
        try:
            self._work.put_nowait(job)
        except queue.Full:
            with self._lock:
                self.dropped += 1
                count, when = self._dropped_logged
                now = time.monotonic()
                due = now - when >= DROP_LOG_EVERY
                if due:
                    self._dropped_logged = (self.dropped, now)
            if due:
                logger.warning(
                    "dashboard history queue is full: %d message(s) dropped since the last report (%d in all)",
                    self.dropped - count,
                    self.dropped,
                )

    def _writer(self) -> None:
        while True:
            jobs = [self._work.get()]
            # Whatever else waits goes into the same transaction: one commit per batch, not per message.
            with contextlib.suppress(queue.Empty):
                while len(jobs) < BATCH and jobs[-1] is not None:
                    jobs.append(self._work.get_nowait())
            try:
                with self.store.batch():
                    for job in jobs:
                        if job is None:
                            break
                        try:
                            job()
                        except Exception:
                            logger.exception("recording a message failed")
            except Exception:
                # A full disk or a broken file: this batch is lost (and said so); the next one tries again.
                logger.exception("writing a batch of %d history messages failed", len(jobs))
            if jobs[-1] is None:
                return

    def _ticker(self) -> None:
        pause = MIN_PUSH
        while not self._stop.is_set():
            self._poke.wait(max(TICK, pause))
            self._poke.clear()
            if self._stop.is_set():
                return
            started = time.monotonic()
            try:
                snapshot = self.snapshot()
                with self._lock:
                    self._latest = snapshot
                self.hub.publish_snapshot(snapshot)
                self.alerter.observe(snapshot)
                self._recheck(snapshot)
            except Exception:
                # One bad view (a record no rule foresaw) must not end the live view for good.
                logger.exception("building the fleet view failed; trying again at the next tick")
            # A large fleet's view takes long to build: build it less often, so it stays a small share of a core.
            took = time.monotonic() - started
            pause = max(MIN_PUSH, took / SNAPSHOT_SHARE - took)
            self._stop.wait(pause)

    def _recheck(self, view: Mapping[str, t.Any]) -> None:
        """Ask the broker again for the records of online hosts whose records look stale or are missing.

        A broker over its per-client limits drops what it cannot queue for a busy dashboard, a
        refresh too: its retained copy is the agent's latest, so a record stale only here comes back fresh.
        """
        now = time.monotonic()
        for host in [h for h, when in self._asking.items() if now - when >= 1.0]:
            del self._asking[host]
            self.fleet.done_asking(host)
        if not self.connected:
            return
        stale = {row["host"] for row in view["instances"] if row["stale"] and row["host_online"]}
        stale |= {host["host"] for host in view["hosts"] if host["missing"] and host["online"]}
        sizes = {host["host"]: host["instances"] + host["missing"] for host in view["hosts"]}
        budget = RECHECK_RECORDS
        # A host asked again and still stale waits twice as long each time (its retained copies may
        # really be old: asking cannot help, and each time costs the broker's queue for this client).
        self._recheck_wait = {h: wait for h, wait in self._recheck_wait.items() if h in stale}
        for host in sorted(stale):
            wait = self._recheck_wait.get(host, RECHECK_EVERY)
            if now - self._asked.get(host, -math.inf) < wait:
                continue
            if sizes.get(host, 0) > budget:
                continue  # never more than the cap at once, whatever the host: the broker would drop the rest
            budget -= sizes.get(host, 0)
            self._asked[host] = self._asking[host] = now
            self._recheck_wait[host] = min(2 * wait, RECHECK_MAX_WAIT) if host in self._recheck_wait else wait
            self.fleet.ask_again(host)
        if len(self._asked) > len(sizes):
            self._asked = {h: when for h, when in self._asked.items() if now - when < RECHECK_MAX_WAIT}

    def _prober(self) -> None:
        # The view measures how far behind the broker it is (judging freshness accordingly).
        while not self._stop.wait(PROBE_EVERY):
            if self.connected:
                self.fleet.probe()

    def latest(self) -> dict[str, t.Any]:
        """Return the view as last pushed when the fleet is larger than the window, else a fresh one.

        A large fleet's view is built on the ticker's schedule only: requests never build one each.
        """
        with self._lock:
            latest = self._latest
        if latest is not None and len(latest["instances"]) > self.hub.window:
            return latest
        return self.snapshot()

    def instances(self, query: Query) -> dict[str, t.Any]:
        """Return the page of instances ``query`` asks for, how many match and how many there are."""
        view = self.latest()
        rows, matching = select(view["instances"], query)
        return {
            "now": view["now"],
            "total": len(view["instances"]),
            "matching": matching,
            "offset": query.offset,
            "limit": query.limit,
            "instances": rows,
        }

    def _send_alert(self, alert: dict[str, t.Any]) -> None:
        logger.warning("alert: %s", alert["text"])
        now = self._clock()
        # Kept, so a page opened (or logged into) later still shows it until someone acknowledges it.
        alert_id = self.store.add_alert(alert, now)
        self.hub.broadcast("alert", {**alert, "id": alert_id, "ts": now, "acked": None})

    def alerts(self) -> dict[str, t.Any]:
        """Return the kept alerts, unacknowledged first, how many are unacknowledged, and whether alerts are on.

        ``judging`` is false while the broker is lost and for a moment after it is back (no false alarm);
        ``judged`` counts the views judged so far.
        """
        alerts, unacked = self.store.alerts()
        return {"alerts": alerts, "unacked": unacked, "judging": self.alerter.judging, "judged": self.alerter.judged}

    def ack_alerts(self, ids: list[int] | None) -> dict[str, t.Any]:
        """Acknowledge alerts (``None``: all) and tell every open page."""
        self.store.ack_alerts(ids, self._clock())
        state = self.alerts()
        self.hub.broadcast("ack", {"unacked": state["unacked"], "ids": ids})
        return state

    def poke(self) -> None:
        """Push a fresh snapshot now."""
        self._poke.set()

    # -- MQTT handlers (network thread) -------------------------------------------------

    def _agent_changed(self, topic: str, change: Change) -> None:
        host = topic.split("/")[-2]
        record = change.record
        if record is None or record[TRUSTED_KEY]:  # a stranger's record is shown, never remembered
            self._defer(lambda: self.store.remember_host(host, record))
        self.poke()

    def _state_changed(self, topic: str, change: Change) -> None:
        parts = topic.split("/")
        key = (parts[-3], parts[-2])
        now = self._clock()
        previous, record = change
        with self._lock:
            untrusted = record is not None and not record[TRUSTED_KEY]
            if untrusted:
                previous = record = None  # shown as untrusted, never counted as a crash or a state change
            before = None if previous is None else previous.get("state")
            after = None if record is None else record.get("state")
            busy = self._busy.get(key, 0.0) >= now
            if record is not None and after in BAD and after != before and not busy:
                self._crashes[key] = (now, str(after), record.get("exit_code"))
            if previous is not None and record is not None and not busy:
                self.flapping.restarted(key, previous.get("restarts"), record.get("restarts"), now)
            if record is None or after == State.STOPPED:
                self.flapping.forget(key)
            # The store keeps the last record of each instance: on every change, else once a minute.
            saved = self._saved.get(key)
            save = not untrusted and (record is None or saved is None or saved[1] != after or now - saved[0] >= 60)
            if save:
                self._saved[key] = (now, after)
        if save:
            self._defer(lambda: self.store.remember_state(key[0], key[1], record, ts=now))
        if previous is not None and record is not None and before != after:
            code = record.get("exit_code")
            text = f"state {before} → {after}" + (f" (exit code {code})" if after in BAD and code else "")
            self._defer(lambda: self._record(key[1], "state", text, host=key[0], ts=now))
        self.poke()

    def _on_event(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        parts = topic.split("/")
        host, name = parts[-3], parts[-2]
        record = load_record(payload) or {}
        text = str(record.get("msg") or payload.decode("utf-8", "replace"))
        self._defer(lambda: self._record(name, "event", text, host=host))

    def _on_notify(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        record = load_record(payload)
        text = str(record.get("msg", "")) if record else payload.decode("utf-8", "replace")
        name = topic.split("/")[-2]
        self._defer(lambda: self._record(name, "notify", text))

    def _on_log(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        record = load_record(payload) or {}
        text = str(record.get("msg") or payload.decode("utf-8", "replace"))
        level = record.get("level_name")
        ts = record.get("timestamp")
        when = float(ts) if isinstance(ts, (int, float)) and math.isfinite(ts) else None
        name = topic.split("/")[-2]
        self._defer(lambda: self._record(name, "log", text, level=str(level) if level else None, ts=when))

    def _on_performance(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        name = topic.split("/")[-2]
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            return

        def job() -> None:
            now = message_time(data, self._clock())
            pnl = self.store.add_performance(name, data, ts=now)
            if pnl is None:
                return
            with self._lock:
                self._spark.setdefault(name, collections.deque(maxlen=SPARK_POINTS)).append((now, pnl))
            self.hub.broadcast("performance", {"instance": name, "ts": now, "pnl": pnl})
            self.poke()  # the row's figure and sparkline

        self._defer(job)

    def _record(
        self,
        name: str,
        kind: str,
        text: str,
        *,
        host: str | None = None,
        level: str | None = None,
        ts: float | None = None,
    ) -> None:
        when = self._clock() if ts is None else ts
        if kind in ("event", "notify") and self._is_echo(name, kind, text):
            return
        # Not pushed: only a tab showing this bot's console reads it (GET /api/messages), so the stream stays small.
        self.store.add_message(name, kind, text, host=host, level=level, ts=when)

    def _is_echo(self, name: str, kind: str, text: str) -> bool:
        """Whether ``text`` is an agent event seen a moment ago under the other topic.

        The agent sends each event twice for plugin-less bots: on our ``events`` topic and as
        Hummingbot's ``notify``. Either may arrive first; the second copy is dropped (store thread only).
        """
        now = self._clock()
        key = (name, text)
        seen = self._recent_text.get(key)
        if seen is not None and seen[1] != kind and now - seen[0] < ECHO_WINDOW:
            del self._recent_text[key]
            return True
        self._recent_text[key] = (now, kind)
        if len(self._recent_text) > 1000:
            self._recent_text = {k: v for k, v in self._recent_text.items() if now - v[0] < ECHO_WINDOW}
        return False

    # -- the merged view --------------------------------------------------------------------

    def snapshot(self) -> dict[str, t.Any]:
        """Return every host and instance with freshness, heartbeat time, health and PnL.

        Times are absolute (``*_ts``, this host's clock, with ``now``) rather than ages, so a record
        changes only when something happened and the stream can send just the changed records.
        """
        view = self.view.snapshot()
        now = view.now
        if view.left_over:
            self._forget(view.left_over)
        with self._lock:
            crashes = dict(self._crashes)
            spark = {name: list(points) for name, points in self._spark.items()}
            flaps = {(i.host, i.name): self.flapping.flapping((i.host, i.name), now) for i in view.instances}
        per_host = collections.Counter(i.host for i in view.instances)
        hosts = [
            {
                "host": h.host,
                "state": h.state,
                "online": h.online,
                "trusted": h.trusted,
                "ts": h.ts,
                "version": h.version,
                "signed": h.signed,
                "heartbeat_interval": h.heartbeat_interval,
                "instances": per_host[h.host],
                "missing": h.missing,
            }
            for h in view.hosts.values()
        ]
        owners = collections.Counter(i.name for i in view.instances)
        instances = []
        for item in view.instances:
            state, reported, record = item.state, item.reported_state, item.record
            alert, since = self._alert(
                state,
                reported,
                record,
                crashes.get((item.host, item.name)),
                flaps.get((item.host, item.name)),
                now,
                item.heartbeat_age,
                item.heartbeat_interval,
            )
            if state in GREY and reported in BAD and state != Seen.UNTRUSTED:
                health = "bad"  # known bad stays bad while the host or the broker is out of reach
            elif state in GREY:
                health = "off"
            else:
                health = "bad" if alert else "ok"
            # Hummingbot's streams carry no host: PnL is only attributable to a unique id.
            points = spark.get(item.name, []) if owners[item.name] == 1 else []
            instances.append(
                {
                    "host": item.host,
                    "instance": item.name,
                    "target": item.target,
                    "state": state,
                    "reported_state": reported,
                    "health": health,
                    "alert": alert,
                    "alert_ts": since,
                    **{k: record.get(k) for k in _RECORD_FIELDS},
                    "started_ts": _started(record.get("ts"), record.get("uptime")),
                    "heartbeat_ts": round(item.heartbeat_ts, 2) if item.heartbeat_ts else None,
                    "heartbeat_interval": item.heartbeat_interval,
                    "stale": item.stale,
                    "host_online": item.host_online,
                    "trusted": item.trusted,
                    "pnl": points[-1][1] if points else None,
                    "pnl_ts": points[-1][0] if points else None,
                    "pnl_series": [p for _, p in points],
                }
            )
        return {
            "now": now,
            "connected": self.connected,
            "broker": self.config.broker.url,
            "dropped": self.dropped,
            "behind": view.behind,
            "hosts": hosts,
            "instances": instances,
        }

    def _forget(self, keys: list[tuple[str, str]]) -> None:
        """Forget instances their (live) agent no longer publishes (removed while nobody watched) in the store too."""
        with self._lock:
            for key in keys:
                self._saved.pop(key, None)

        def job() -> None:
            for host, name in keys:
                self.store.remember_state(host, name, None)

        self._defer(job)

    def _alert(
        self,
        state: str,
        reported: str,
        record: Mapping[str, t.Any],
        crash: tuple[float, str, t.Any] | None,
        flap: tuple[int, float] | None,
        now: float,
        hb_age: float | None,
        interval: float,
    ) -> tuple[str | None, float | None]:
        """Return why a row is red (a text that stays the same while nothing changes) and since when."""
        code = record.get("exit_code")
        exit_text = f" (exit code {code})" if code not in (None, 0) else ""
        last_error = record.get("last_error")
        if state == Seen.UNTRUSTED:
            return None, None  # a stranger's record says nothing about the bot
        if reported in BAD and (state == reported or state in GREY):
            text = reported + exit_text + (f": {last_error}" if last_error else "")
            return (text + (f" (last known; {state})" if state != reported else "")), None
        if flap is not None and state in ALIVE:
            minutes = max(1, round(self.flapping.window / 60))
            return f"flapping: {flap[0]} restarts within {minutes} min", flap[1]
        if crash is not None and now - crash[0] < RECENT_CRASH:
            when, what, crash_code = crash
            text = what + (f" (exit code {crash_code})" if crash_code not in (None, 0) else "")
            return text + (", restarted" if state == State.RUNNING else ""), when
        if (
            state == State.RUNNING
            and hb_age is not None
            and hb_age > HEARTBEAT_SLACK * interval
            and now - self.started > HEARTBEAT_SLACK * interval
        ):
            return "no heartbeat", now - hb_age
        return None, None

    def messages(self, host: str, name: str, after: int) -> dict[str, t.Any]:
        """Return the stream lines of one instance stored since line ``after``."""
        return {"target": f"{host}/{name}", "messages": self.store.messages(name, host, 500, after=after)}

    def history(self, host: str, name: str) -> dict[str, t.Any]:
        """Return the stored PnL samples and stream lines of one instance."""
        return {
            "target": f"{host}/{name}",
            "performance": self.store.performance(name),
            "controllers": controller_figures(self.store.last_payload(name)),
            "messages": self.store.messages(name, host),
        }

    # -- commands -------------------------------------------------------------------------

    def command(self, host: str, name: str, verb: str, data: Mapping[str, t.Any]) -> dict[str, t.Any]:
        """Send one verb to ``host/name`` and return the reply (or why there is none) as JSON-able data.

        Raises
        ------
        DashboardError
            For an unknown verb or data the verb does not accept (nothing is sent).
        """
        target = f"{host}/{name}"
        try:
            if verb in HBOT_VERBS:
                data = protocol.validate(verb, data)
            elif verb in protocol.OWN_VERBS:
                data = protocol.validate_own(verb, data)
            else:
                known = ", ".join((*protocol.OWN_VERBS, *HBOT_VERBS))
                msg = f"verb '{verb}' is unknown. Known verbs: {known}."
                raise DashboardError(msg)
            if verb in HBOT_VERBS or verb == "send":
                _check_typed(data)
        except protocol.ProtocolError as e:
            raise DashboardError(str(e)) from e
        except UnsafeConsoleText as e:
            raise DashboardError(str(e)) from e
        refusal = self.view.refusal(host)
        if refusal is not None:
            return _reply(target, verb, refusal)
        changes = verb in ("start", "stop", "restart")
        key = (host, name)
        if changes:
            with self._lock:
                self._busy[key] = math.inf
        timeout = TIMEOUTS[verb]
        reply: dict[str, t.Any] | None = None
        try:
            if verb in HBOT_VERBS:
                reply = self.fleet.hbot_request(host, name, verb, data, timeout).to_dict()
            else:
                reply = self.fleet.request(host, name, verb, data, timeout).to_dict()
        finally:
            if changes:
                with self._lock:
                    # The agent may report a passing 'exited' while it restarts a bot for us: not a crash.
                    self._busy[key] = self._clock() + BUSY_AFTER
                    if reply is not None and reply["ok"]:
                        self._crashes.pop(key, None)
                self.poke()
        if verb not in ("tail", "status", "logs"):
            outcome = "ok" if reply["ok"] else ("timed out" if reply["timed_out"] else "failed")
            detail = f"{verb} from the dashboard: {outcome}" + (f": {reply['msg']}" if reply["msg"] else "")
            if verb == "send":
                detail = f"send {data['text']!r} from the dashboard: {outcome}"
            self._defer(lambda: self._record(name, "command", detail, host=host))
        return reply


def _check_typed(data: Mapping[str, t.Any]) -> None:
    """Refuse a value the agent would type into a console if it holds a control character."""
    for key, value in data.items():
        if isinstance(value, str):
            check_console_text(value, what=f"field '{key}'")


def _started(ts: t.Any, uptime: t.Any) -> float | None:
    """Return when the process started (whole seconds, so it stays put from one state record to the next)."""
    if isinstance(ts, (int, float)) and isinstance(uptime, (int, float)) and not isinstance(uptime, bool):
        started = float(ts) - float(uptime)
        if math.isfinite(started):  # records come from anyone: 1e308 - -1e308 is no time
            return float(round(started))
    return None


def _reply(target: str, verb: str, msg: str, *, timed_out: bool = False) -> dict[str, t.Any]:
    return {
        "target": target,
        "verb": verb,
        "ok": False,
        "status": None,
        "msg": msg,
        "result": None,
        "timed_out": timed_out,
    }


# --- HTTP ------------------------------------------------------------------------------


class _HTTPServer(AppServer["Dashboard"]):
    def __init__(self, address: tuple[str, int], app: Dashboard) -> None:
        super().__init__(address, _Handler, app)


class Dashboard(ServedApp):
    """The whole dashboard: HTTP server, SSE hub, MQTT monitor and history store.

    Parameters
    ----------
    config
        Broker and namespaces, as ``load_agent_config`` builds them.
    settings
        Password hash and session lifetime.
    listen
        ``HOST:PORT``; anything but loopback needs ``settings.password_hash``.
    store
        The SQLite history.
    insecure_no_login
        Serve loopback without a password: every local user and process may then drive the bots.
    sessions_path
        Where login sessions are kept across restarts (``None``: in memory only).

    Raises
    ------
    DashboardError
        For a non-loopback address without a password, no password without ``insecure_no_login``,
        or an address that cannot be bound.
    """

    def __init__(
        self,
        config: AgentConfig,
        settings: DashboardSettings,
        listen: str,
        store: Store,
        *,
        insecure_no_login: bool = False,
        sessions_path: Path | None = None,
    ) -> None:
        host, port = parse_listen(listen, DashboardError)
        self.loopback = is_loopback(host)
        if not self.loopback and not settings.login_required:
            msg = (
                f"refusing to listen on {listen} without a password: anyone who reaches it could stop your bots. "
                "Set one with 'supervisor dashboard passwd --write', or listen on 127.0.0.1."
            )
            raise DashboardError(msg)
        if not settings.login_required and not insecure_no_login:
            msg = (
                f"refusing to serve {listen} without a password: any local user could stop your bots. "
                "Set one with 'supervisor dashboard passwd --write', or pass --insecure-no-login."
            )
            raise DashboardError(msg)
        self.config = config
        self.settings = settings
        self.store = store
        self.hub = Hub()
        self.sessions = Sessions(settings.session_ttl, path=sessions_path)
        self.throttle = LoginThrottle()
        # Checks run on a few threads of their own: scrypt's 16 MB then come from (and go back to)
        # a few malloc arenas instead of one per connection thread; a bounded number may wait.
        self.password_pool = concurrent.futures.ThreadPoolExecutor(MAX_PASSWORD_CHECKS, "dashboard-password")
        self.password_checks = threading.BoundedSemaphore(MAX_PASSWORD_CHECKS + MAX_PASSWORD_QUEUE)
        self.csrf = secrets.token_urlsafe(24)
        """Loopback without a password: the page still needs this token, so other web pages cannot POST."""
        flapping = Flapping(settings.flap_restarts, settings.flap_window, settings.flap_settle)
        self.monitor = Monitor(config, store, self.hub, webhook_url=settings.webhook_url, flapping=flapping)
        self._stopped = threading.Event()
        try:
            self.server = _HTTPServer((host, port), self)
        except OSError as e:
            msg = f"cannot listen on {listen}: {e.strerror or e}. Pick another address with --listen."
            raise DashboardError(msg) from e
        self.host, self.port = host, int(self.server.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        # Any port: an SSH tunnel (ssh -L 9000:127.0.0.1:8080) changes it, never the name.
        self.allowed_hosts = {shown, "localhost", "127.0.0.1", "[::1]"} if self.loopback else set()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Connect to the broker, then serve HTTP on a background thread."""
        self.monitor.start()
        self._serve_in_background("dashboard-http")
        logger.info(
            "dashboard on %s (broker %s, %s)",
            self.url,
            self.config.broker.url,
            "login required" if self.settings.login_required else "no login: loopback only",
        )
        if not self.settings.login_required:
            logger.warning("INSECURE: no login; every local user and process can stop and start your bots")

    def close(self) -> None:
        """End every stream, the HTTP server, the MQTT connection and the store."""
        self.hub.close()
        self._close_server()
        self.password_pool.shutdown(wait=False, cancel_futures=True)
        self.monitor.stop()
        self.store.close()


class _Handler(Handler):
    server: _HTTPServer
    server_version = "supervisor-dashboard"
    timeout = 60

    @property
    def app(self) -> Dashboard:
        return self.server.app

    def log_message(self, format: str, *args: t.Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    # -- responses -------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        cache: str = "no-store",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(
        self, status: int, data: t.Any, *, headers: Mapping[str, str] | None = None, compress: bool = False
    ) -> None:
        body = json.dumps(data, separators=(",", ":"), default=str).encode()
        if compress and len(body) >= GZIP_MIN and self._accepts_gzip():
            body = gzip.compress(body, compresslevel=5)
            headers = {**(headers or {}), "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        self._send(status, body, "application/json", headers=headers)

    def _accepts_gzip(self) -> bool:
        for part in self.headers.get("Accept-Encoding", "").split(","):
            name, _, params = part.strip().partition(";")
            if name.strip().lower() in ("gzip", "*") and params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00"):
                return True
        return False

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # -- checks -------------------------------------------------------------------------------

    def _host_ok(self) -> bool:
        """On loopback, refuse other Host names (DNS rebinding would otherwise reach the API)."""
        if not self.app.loopback:
            return True
        raw = self.headers.get("Host", "")
        host, sep, port = raw.rpartition(":")
        if not sep or not port.isdigit() or (raw.startswith("[") and not host.endswith("]")):
            host = raw
        return host in self.app.allowed_hosts

    def _session(self) -> Session | None:
        cookie = http.cookies.SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except http.cookies.CookieError:
            return None
        morsel = cookie.get(COOKIE)
        return self.app.sessions.get(morsel.value if morsel else None)

    def _csrf(self) -> str | None:
        """Return the CSRF token this request must carry, or ``None`` when it is not logged in."""
        if not self.app.settings.login_required:
            return self.app.csrf
        session = self._session()
        return session.csrf if session else None

    def _same_origin(self) -> bool:
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = self.headers.get("Origin")
        if origin is None:
            return True
        return urllib.parse.urlsplit(origin).netloc == self.headers.get("Host", "")

    def _body(self) -> dict[str, t.Any] | None:
        """Return the JSON object body, or answer 400/413/415 and return ``None``."""
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self._error(415, "send application/json")
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._error(413, f"the body must be at most {MAX_BODY} bytes")
            return None
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deeper than Python recurses
            data = None
        if not isinstance(data, dict):
            self._error(400, "the body must be a JSON object")
            return None
        return data

    def _target(self, host: str, name: str) -> tuple[str, str] | None:
        host, name = urllib.parse.unquote(host), urllib.parse.unquote(name)
        if not _NAME.fullmatch(host) or not _NAME.fullmatch(name):
            self._error(400, "target must be HOST/INSTANCE with letters, digits, '-' and '_'")
            return None
        return host, name

    # -- routes -----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._host_ok():
            self._error(421, "unexpected Host header")
            return
        path = urllib.parse.urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._static("index.html")
        elif path.startswith("/static/"):
            self._static(path.removeprefix("/static/"))
        elif path == "/api/session":
            csrf = self._csrf()
            self._json(
                200,
                {
                    "login_required": self.app.settings.login_required,
                    "authenticated": csrf is not None,
                    "csrf": csrf,
                    "version": __version__,
                    "webhook": shown_url(self.app.settings.webhook_url) if csrf is not None else None,
                },
            )
        elif path.startswith(("/api/", "/events")) and self._csrf() is None:
            self._error(403, "log in first")
        elif path == "/api/snapshot":
            self._snapshot()
        elif path == "/api/instances":
            self._instances()
        elif path.startswith("/api/history/") and path.count("/") == 4:
            target = self._target(*path.split("/")[3:5])
            if target is not None:
                self._json(200, self.app.monitor.history(*target))
        elif path == "/api/alerts":
            self._json(200, self.app.monitor.alerts())
        elif path.startswith("/api/messages/") and path.count("/") == 4:
            target = self._target(*path.split("/")[3:5])
            after = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("after", ["0"])[0]
            if target is not None and not after.isdigit():
                self._error(400, "after must be a line id (a whole number)")
            elif target is not None:
                self._json(200, self.app.monitor.messages(*target, int(after)))
        elif path == "/events":
            self._events()
        else:
            self._error(404, "not found")

    def _params(self) -> dict[str, list[str]] | None:
        """Return the query string's parameters, or answer 400 and return ``None``."""
        try:
            query = urllib.parse.urlsplit(self.path).query
            return urllib.parse.parse_qs(query, keep_blank_values=True, max_num_fields=20)
        except ValueError:
            self._error(400, "too many query parameters")
            return None

    def _snapshot(self) -> None:
        params = self._params()
        if params is None:
            return
        whole = params.pop("all", ["0"])
        if params or whole not in (["0"], ["1"]):
            self._error(400, "the only parameter is all=1 (every instance, however many)")
            return
        view = self.app.monitor.latest()
        self._json(200, view if whole == ["1"] else windowed(view, self.app.hub.window), compress=True)

    def _instances(self) -> None:
        params = self._params()
        if params is None:
            return
        try:
            query = parse_query(params)
        except ValueError as e:
            self._error(400, str(e))
            return
        self._json(200, self.app.monitor.instances(query), compress=True)

    def do_HEAD(self) -> None:
        # Routed as GET; _send writes no body for HEAD and the event stream sends only its headers.
        self.do_GET()

    def do_POST(self) -> None:
        if not self._host_ok():
            self._error(421, "unexpected Host header")
            return
        path = urllib.parse.urlsplit(self.path).path
        if not self._same_origin():
            self._error(403, "cross-site request refused")
            return
        if path == "/api/login":
            self._login()
            return
        csrf = self._csrf()
        if csrf is None:
            self._error(403, "log in first")
            return
        if not secrets.compare_digest(self.headers.get("X-CSRF-Token", ""), csrf):
            self._error(403, "missing or wrong X-CSRF-Token header; reload the page")
            return
        if path == "/api/logout":
            cookie = self._session()
            self.app.sessions.revoke(cookie.token if cookie else None)
            self._json(200, {"ok": True}, headers={"Set-Cookie": self._cookie("", 0)})
        elif path == "/api/command":
            self._command()
        elif path == "/api/alerts/test":
            self._json(200, self.app.monitor.alerter.test())
        elif path == "/api/alerts/ack":
            self._ack()
        else:
            self._error(404, "not found")

    def _static(self, name: str) -> None:
        if name not in _STATIC:
            self._error(404, "not found")
            return
        body = resources.files("supervisor.fleet.dashboard").joinpath("static", name).read_bytes()
        self._send(200, body, _STATIC[name], cache="no-cache")

    def _cookie(self, value: str, max_age: int) -> str:
        secure = "; Secure" if self.app.settings.secure_cookie else ""
        return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"

    def _login(self) -> None:
        data = self._body()
        if data is None:
            return
        client = self.client_address[0]
        settings = self.app.settings
        if not settings.login_required or settings.password_hash is None:
            self._json(200, {"ok": True, "csrf": self.app.csrf})
            return
        password = data.get("password")
        if not isinstance(password, str):
            self._error(400, "send {password: '...'}")
            return
        # Each password check costs memory (scrypt): a few at a time, the rest are told to retry.
        if not self.app.password_checks.acquire(blocking=False):
            self._error(429, "the dashboard is busy checking other logins; try again in a moment")
            return
        try:
            # Counted before the check, under one lock: parallel guesses cannot pass the limit.
            if not self.app.throttle.attempt(client):
                self._error(429, "too many wrong passwords; wait a minute")
                return
            good = self.app.password_pool.submit(verify_password, password, settings.password_hash).result()
        finally:
            self.app.password_checks.release()
        if not good:
            logger.warning("dashboard: wrong password from %s", client)
            self._error(401, "wrong password")
            return
        self.app.throttle.succeeded(client)
        session = self.app.sessions.create()
        self._json(
            200,
            {"ok": True, "csrf": session.csrf},
            headers={"Set-Cookie": self._cookie(session.token, int(settings.session_ttl))},
        )

    def _ack(self) -> None:
        data = self._body()
        if data is None:
            return
        ids = data.get("ids")
        if data.get("all") is True:
            ids = None
        elif not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            self._error(400, "send {ids: [alert ids]} or {all: true}")
            return
        self._json(200, self.app.monitor.ack_alerts(ids))

    def _command(self) -> None:
        data = self._body()
        if data is None:
            return
        target, verb, args = data.get("target"), data.get("verb"), data.get("data", {})
        if not isinstance(target, str) or target.count("/") != 1 or not isinstance(verb, str):
            self._error(400, "send {target: 'HOST/INSTANCE', verb, data}")
            return
        if not isinstance(args, dict):
            self._error(400, "data must be an object")
            return
        parsed = self._target(*target.split("/"))
        if parsed is None:
            return
        try:
            reply = self.app.monitor.command(*parsed, verb, args)
        except DashboardError as e:
            self._error(400, str(e))
            return
        self._json(200, reply)

    def _events(self) -> None:
        if self.command == "HEAD":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            return
        # A logged-in browser is one client (also behind a reverse proxy); otherwise its address is.
        session = self._session()
        q = self.app.hub.subscribe(f"session:{session.token}" if session else self.client_address[0])
        if q is None:
            self._error(503, "too many open dashboards")
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            self.wfile.write(b"retry: 2000\n\n")
            self.wfile.flush()
            while True:
                try:
                    frame = q.get(timeout=15)
                except queue.Empty:
                    frame = b": keep-alive\n\n"
                if frame is None or not self.app.hub.is_subscribed(q) or self._csrf() is None:
                    return
                self.wfile.write(frame)
                self.wfile.flush()
        except OSError:  # the browser went away
            return
        finally:
            self.app.hub.unsubscribe(q)
