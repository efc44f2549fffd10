"""The fleet client: requests to many hosts and instances through the shared broker.

Watches the retained ``{own}/{host}/agent`` and ``{own}/{host}/{instance}/state`` records and
heartbeats into one :class:`~supervisor.fleet.view.FleetView`, sends our own verbs (signed when a
secret is configured) and Hummingbot's commands, waits for the replies and shapes them. Imports no
manager: the fleet knows hosts only through the broker.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import re
import threading
import time
import typing as t
import uuid

from supervisor.errors import AgentError
from supervisor.fleet.view import (
    STALE_GRACE,
    TRUSTED_KEY,
    UNTRUSTED,
    Change,
    FleetView,
    HostView,
    InstanceView,
    Snapshot,
)
from supervisor.mqtt import protocol
from supervisor.mqtt.auth import sign
from supervisor.mqtt.connection import Connection
from supervisor.mqtt.protocol import load_record

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Self

    from supervisor.mqtt.config import AgentConfig

__all__ = [
    "STALE_GRACE",
    "TRUSTED_KEY",
    "UNTRUSTED",
    "FleetClient",
    "HostView",
    "InstanceView",
    "Reply",
    "Snapshot",
    "expand",
    "load_record",
]

logger = logging.getLogger(__name__)

Listener = t.Callable[[str, Change], None]
"""Called on the network thread with the topic and what the view took, after it took it."""

DEFAULT_WAIT = 5.0
"""Seconds ``fleet ls`` waits at most for hosts whose records are not all in."""
RETRY_BUDGET = 500
"""Records asked for again at once, host by host, when a broker's per-client limits dropped some
(half of mosquitto's default ``max_queued_messages``)."""
BARRIER_RESEND = 0.05
"""Seconds before the barrier message is sent again (a broker over its limits drops it too)."""
BARRIER_FALLBACK = 1.0
"""Seconds after which a barrier that never comes back (an ACL that forbids it) gives way to a quiet moment."""
QUIET = 0.25
"""Seconds without a new record that then count as "the retained records are in"."""


@dataclasses.dataclass
class Reply:
    """The answer of one target (or why there is none)."""

    target: str
    verb: str
    ok: bool
    status: int | None
    msg: str
    result: t.Any = None
    timed_out: bool = False

    def to_dict(self) -> dict[str, t.Any]:
        """Return the reply as JSON-able data."""
        return dataclasses.asdict(self)


class FleetClient:
    """A client of the fleet: one CLI invocation, or the dashboard's long-lived connection.

    Parameters
    ----------
    config
        Broker, namespaces and the shared secret.
    client_id
        The MQTT client id (a random one by default).
    clock
        The view's clock (tests pass a fake one).
    """

    def __init__(
        self, config: AgentConfig, *, client_id: str | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.own = config.own_prefix
        self.ns = config.namespace
        self.view = FleetView(config.secret, clock=clock)
        self._token = uuid.uuid4().hex
        self._reply_prefix = f"supervisor-fleet/{self._token}"
        self._lock = threading.Lock()
        self._waiters: dict[str, tuple[threading.Event, list[bytes]]] = {}
        self._agent_listeners: list[Listener] = []
        self._state_listeners: list[Listener] = []
        self._watching = False
        self._changed = threading.Event()
        self._last_record = time.monotonic()
        self._no_echo = False  # our barrier never came back once: do not wait for it again
        self.connection = Connection(
            config.broker, client_id=client_id or f"supervisor-fleet-{self._token[:12]}", on_connect=self._on_connect
        )

    def __enter__(self) -> Self:
        self.connection.subscribe(f"{self._reply_prefix}/+", self._on_reply, qos=1)
        self.connection.start()
        if not self.connection.wait_connected(10):
            self.connection.stop()
            reason = self.connection.last_failure
            msg = (
                f"broker '{self.config.broker.url}': could not connect within 10s"
                + (f" ({reason})" if reason else "")
                + ". Check --broker, the TLS files, and that the broker runs."
            )
            raise AgentError(msg)
        return self

    def __exit__(self, *_: object) -> None:
        self.connection.stop()

    # -- the view ------------------------------------------------------------------

    def watch(
        self, *, on_agent: Listener | None = None, on_state: Listener | None = None, barrier: float | None = None
    ) -> None:
        """Keep the view up to date from the broker; ``on_agent``/``on_state`` hear of every record it takes.

        Safe to call again (to add listeners); the subscriptions are made once. With ``barrier``
        (a deadline, monotonic), the agents' records are waited for before the state records are
        asked for, so a broker's per-client limits leave room for every host's record first.
        """
        with self._lock:
            if on_agent is not None:
                self._agent_listeners.append(on_agent)
            if on_state is not None:
                self._state_listeners.append(on_state)
            if self._watching:
                return
            self._watching = True
        self.connection.subscribe(f"{self.own}/+/agent", self._on_agent, qos=1)
        self.connection.subscribe(f"{self.own}/+/beat", self._on_beat, qos=0)
        self.view.listen_to_beats(lambda: self.connection.is_connected)
        if barrier is not None:
            self._barrier(barrier)
        self.connection.subscribe(f"{self.own}/+/+/state", self._on_state, qos=1)
        self.connection.subscribe(f"{self.ns}/+/hb", self._on_heartbeat, qos=0)

    def _on_connect(self) -> None:
        if self._watching:  # beats were missed while the connection was down: count silence from now
            self.view.listen_to_beats()

    def _on_agent(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        change = self.view.on_agent(topic, payload)
        self._last_record = time.monotonic()
        self._changed.set()
        if change is not None:
            for listener in self._agent_listeners:
                listener(topic, change)

    def _on_state(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        change = self.view.on_state(topic, payload)
        self._last_record = time.monotonic()
        self._changed.set()
        if change is not None:
            for listener in self._state_listeners:
                listener(topic, change)

    def _on_heartbeat(self, topic: str, _payload: bytes, _props: Mapping[str, t.Any]) -> None:
        self.view.on_heartbeat(topic)

    def _on_beat(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        if self.view.on_beat(topic, payload):
            self._changed.set()

    def snapshot(self, wait: float = DEFAULT_WAIT, *, beats: bool = False) -> Snapshot:
        """Collect the retained records until every host's are in, at most ``wait`` seconds; judge freshness.

        The broker sends the retained records on subscription; a message to ourselves sent after
        the subscriptions comes back after them (a barrier). Then every host whose availability
        record says how many instances it has must be complete. Hosts whose records a broker's
        per-client limits dropped are asked for again, a few hundred records at a time (one host at
        a time once that was too many); whatever is still missing when ``wait`` runs out the
        snapshot reports. Last, for hosts whose state records are out of date, it waits (within
        ``wait``) for the agent's own beat: a host that beats vouches for its records, one that
        stays silent is unresponsive. With ``beats``, it waits so for every host's beat.
        """
        self.view.every_beat = beats
        deadline = time.monotonic() + wait
        self.watch(barrier=deadline)
        synced = self._barrier(deadline)
        budget = RETRY_BUDGET
        alone: set[str] = set()  # hosts asked for on their own: more cannot be done for them
        while time.monotonic() < deadline:
            self._changed.clear()
            pending = self.view.incomplete()
            if synced and not pending:
                break
            todo = {host: count for host, count in sorted(pending.items()) if host not in alone}
            if synced and todo:
                batch = _batch(todo, budget)
                if len(batch) == 1:
                    alone.add(batch[0])
                logger.info("asking again for the records of %d host(s): %s", len(batch), ", ".join(batch[:10]))
                for host in batch:
                    self.connection.subscribe(f"{self.own}/{host}/+/state", self._on_state, qos=1)
                synced = self._barrier(deadline)
                for host in batch:
                    # Its retained records came (or were dropped again); live ones come through the wildcard.
                    self.connection.unsubscribe(f"{self.own}/{host}/+/state")
                if set(batch) & set(self.view.incomplete()):
                    budget = 1  # the broker drops even that many: one host at a time
                continue
            self._changed.wait(max(0.0, min(0.05, deadline - time.monotonic())))
        while time.monotonic() < deadline and self.view.awaiting_beats():
            self._changed.clear()
            self._changed.wait(max(0.0, min(0.05, deadline - time.monotonic())))
        return self.view.snapshot()

    def _barrier(self, deadline: float) -> bool:
        """Send a message to ourselves until one comes back (or ``deadline``): what the broker queued before is in.

        Sent again every :data:`BARRIER_RESEND` seconds, since a broker over its per-client limits drops it too.
        A broker whose ACL does not let us publish on our reply topics never sends it back: after
        :data:`BARRIER_FALLBACK` seconds, :data:`QUIET` seconds without a new record do instead.
        """
        topic = f"{self._reply_prefix}/barrier-{uuid.uuid4().hex[:12]}"
        event = threading.Event()
        with self._lock:
            self._waiters[topic] = (event, [])
        started = time.monotonic()
        try:
            while True:
                self.connection.publish(topic, b"{}", qos=1)
                remaining = deadline - time.monotonic()
                if event.wait(max(0.0, min(BARRIER_RESEND, remaining))):
                    return True
                now = time.monotonic()
                if (self._no_echo or now - started > BARRIER_FALLBACK) and now - self._last_record > QUIET:
                    if self._no_echo:
                        return True
                    self._no_echo = True
                    logger.warning(
                        "no message of ours came back through %s within %gs (may we publish on %s/#?); "
                        "took %gs without a new record as the end of the retained records",
                        self.config.broker.url,
                        BARRIER_FALLBACK,
                        self._reply_prefix.rpartition("/")[0],
                        QUIET,
                    )
                    return True
                if remaining <= BARRIER_RESEND:
                    return False
        finally:
            with self._lock:
                self._waiters.pop(topic, None)

    def host_states(self, hosts: t.Collection[str], wait: float = 1.0) -> dict[str, str]:
        """Return the retained availability of ``hosts`` (missing ones are absent), waiting at most ``wait``."""
        if not self._watching:
            for host in hosts:
                self.connection.subscribe(f"{self.own}/{host}/agent", self._on_agent, qos=1)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not self.view.knows(hosts):
            time.sleep(0.01)
        return {h: state for h in hosts if (state := self.view.host_state(h)) is not None}

    # -- commands ----------------------------------------------------------------

    def ask_again(self, host: str) -> None:
        """Ask the broker for ``host``'s retained state records again (a broker over its limits dropped some).

        The broker sends them on this subscription; :meth:`done_asking` ends it once they are queued.
        """
        self.connection.subscribe(f"{self.own}/{host}/+/state", self._on_state, qos=1)

    def done_asking(self, host: str) -> None:
        """End what :meth:`ask_again` began (the wildcard subscription still brings every new record)."""
        self.connection.unsubscribe(f"{self.own}/{host}/+/state")

    def probe(self) -> None:
        """Send the view a probe of its own delay through the broker (QoS 1: queued with the state records)."""
        probe = self.view.probe_sent()
        self.connection.publish(f"{self._reply_prefix}/probe", json.dumps({"probe": probe}).encode(), qos=1)

    def _on_reply(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        if topic == f"{self._reply_prefix}/probe":
            probe = (load_record(payload) or {}).get("probe")
            if isinstance(probe, int) and not isinstance(probe, bool):
                self.view.probe_back(probe)
            return
        with self._lock:
            waiter = self._waiters.get(topic)
        if waiter is not None:
            waiter[1].append(payload)
            waiter[0].set()

    def _call(self, topic: str, envelope: Callable[[str], bytes], timeout: float) -> bytes | None:
        """Publish ``envelope(reply_to)`` on ``topic``; return the reply's payload, or ``None`` after ``timeout``."""
        reply_to = f"{self._reply_prefix}/{uuid.uuid4().hex}"
        event = threading.Event()
        box: list[bytes] = []
        with self._lock:
            self._waiters[reply_to] = (event, box)
        try:
            self.connection.publish(topic, envelope(reply_to), qos=1)
            if not event.wait(timeout):
                return None
        finally:
            with self._lock:
                self._waiters.pop(reply_to, None)
        return box[0]

    def request(self, host: str, instance: str | None, verb: str, data: Mapping[str, t.Any], timeout: float) -> Reply:
        """Send one of our verbs to ``host`` (and ``instance``) and wait up to ``timeout`` seconds for the reply."""
        target = f"{host}/{instance}" if instance else host
        topic = f"{self.own}/{host}/{instance}/{verb}" if instance else f"{self.own}/{host}/{verb}"

        def envelope(reply_to: str) -> bytes:
            header: dict[str, t.Any] = {
                "reply_to": reply_to,
                "timestamp": int(time.time() * 1000),
                "agent": "supervisor-fleet",
            }
            if self.config.secret:
                header["auth"] = sign(self.config.secret, topic, reply_to, data)
            return json.dumps({"header": header, "data": dict(data)}, separators=(",", ":")).encode()

        payload = self._call(topic, envelope, timeout)
        if payload is None:
            return _timed_out(target, verb, timeout)
        body = _body(payload)
        return _shaped(target, verb, body, body.get("result"))

    def hbot_request(self, host: str, name: str, verb: str, data: Mapping[str, t.Any], timeout: float) -> Reply:
        """Send one of Hummingbot's commands (commlib envelope) to ``{ns}/{name}/{verb}`` and wait for its reply.

        The reply's members other than ``status`` and ``msg`` make its ``result`` (``None`` if there are none).
        """
        target = f"{host}/{name}"
        payload = self._call(
            f"{self.ns}/{name}/{verb}", lambda reply_to: protocol.encode_request(data, reply_to), timeout
        )
        if payload is None:
            return _timed_out(target, verb, timeout)
        body = _body(payload)
        extra = {k: v for k, v in body.items() if k not in ("status", "msg")}
        return _shaped(target, verb, body, extra or None)

    def run(
        self, targets: Sequence[tuple[str, str | None]], verb: str, data: Mapping[str, t.Any], timeout: float
    ) -> list[Reply]:
        """Send ``verb`` to every target at once and return the replies in target order.

        Targets on hosts whose retained agent record is offline, untrusted or missing
        fail at once instead of waiting out the timeout.
        """
        replies: list[Reply | None] = [None] * len(targets)
        self.host_states({host for host, _ in targets})

        def one(index: int, host: str, instance: str | None) -> None:
            target = f"{host}/{instance}" if instance else host
            refusal = self.view.refusal(host)
            if refusal is not None:
                replies[index] = Reply(target, verb, False, None, refusal)
            else:
                replies[index] = self.request(host, instance, verb, data, timeout)

        threads = [
            threading.Thread(target=one, args=(i, host, inst), daemon=True) for i, (host, inst) in enumerate(targets)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout + 5)
        return [
            r or Reply(f"{h}/{i}", verb, False, None, "no reply", timed_out=True)
            for r, (h, i) in zip(replies, targets, strict=True)
        ]


def _batch(pending: Mapping[str, int], budget: int) -> list[str]:
    """Return the first hosts of ``pending`` whose records together fit ``budget`` (at least one host)."""
    chosen: list[str] = []
    total = 0
    for host, count in pending.items():
        if chosen and total + count > budget:
            break
        chosen.append(host)
        total += count
    return chosen


def _timed_out(target: str, verb: str, timeout: float) -> Reply:
    return Reply(target, verb, False, None, f"timed out after {timeout:g}s waiting for {target}", timed_out=True)


def _body(payload: bytes) -> dict[str, t.Any]:
    """Return the ``data`` member of a reply envelope (empty when there is none)."""
    data = (load_record(payload) or {}).get("data")
    return data if isinstance(data, dict) else {}


def _shaped(target: str, verb: str, body: Mapping[str, t.Any], result: t.Any) -> Reply:
    status = body.get("status")
    return Reply(
        target,
        verb,
        status == protocol.STATUS_OK,
        status if isinstance(status, int) else None,
        str(body.get("msg", "")),
        result,
    )


#: One side of a ``HOST/INSTANCE`` selector: a name, or an fnmatch pattern of names.
_SELECTOR_PART = re.compile(r"[A-Za-z0-9_*?\[\]!-]+")


def expand(selectors: Sequence[str], snapshot: Snapshot) -> list[tuple[str, str]]:
    """Turn ``HOST/INSTANCE`` selectors (``*`` allowed on either side) into targets.

    Raises
    ------
    AgentError
        A selector is not ``HOST/INSTANCE`` or matches nothing the fleet knows.
    """
    known = [(i.host, i.name) for i in snapshot.instances if i.trusted]
    chosen: list[tuple[str, str]] = []
    for selector in selectors:
        host, sep, instance = selector.partition("/")
        if not sep or not host or not instance or "/" in instance:
            msg = f"target '{selector}' is not HOST/INSTANCE. Examples: host-1/mm-1, host-1/*, */mm-1."
            raise AgentError(msg)
        if not (_SELECTOR_PART.fullmatch(host) and _SELECTOR_PART.fullmatch(instance)):
            # Anything else would go out as a topic no agent answers (a trailing newline, a space...).
            msg = (
                f"target {selector!r} is not HOST/INSTANCE: names hold letters, digits, '-' and '_' "
                "('*', '?' and [...] select many). Examples: host-1/mm-1, host-1/*, */mm-1."
            )
            raise AgentError(msg)
        if "*" not in selector:
            chosen.append((host, instance))
            continue
        matches = [(h, n) for h, n in known if fnmatch.fnmatchcase(h, host) and fnmatch.fnmatchcase(n, instance)]
        if not matches:
            msg = f"target '{selector}' matches no instance. Run 'supervisor fleet ls' to see them."
            raise AgentError(msg)
        chosen.extend(matches)
    return list(dict.fromkeys(chosen))
