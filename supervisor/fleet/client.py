"""The fleet view: every host's agent and instances, through the shared broker.

Reads the retained ``{own}/{host}/agent`` and ``{own}/{host}/{instance}/state``
records, watches heartbeats for a moment, and sends our own verbs to many
targets at once (signed when a secret is configured). Imports no manager:
the fleet knows hosts only through the broker.
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
from supervisor.mqtt import protocol
from supervisor.mqtt.auth import is_signed_record, sign
from supervisor.mqtt.connection import Connection

if t.TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from typing_extensions import Self

    from supervisor.mqtt.config import AgentConfig

logger = logging.getLogger(__name__)

STALE_GRACE = 5.0
"""Seconds past a record's refresh period before it counts as stale."""
UNTRUSTED = "untrusted"
"""The state shown for a record that is not signed with the shared secret (or wrongly signed)."""
TRUSTED_KEY = "trusted"
"""Set by readers on every record they keep: whether its signature checked out (always true without a secret)."""


@dataclasses.dataclass
class HostView:
    """One agent as its retained availability record describes it."""

    host: str
    state: str
    ts: float | None
    version: str | None = None
    signed: bool | None = None
    heartbeat_interval: float | None = None
    trusted: bool = True


@dataclasses.dataclass
class InstanceView:
    """One instance as the fleet sees it: the host's state record plus freshness."""

    host: str
    name: str
    state: str
    reported_state: str
    record: dict[str, t.Any]
    age: float | None
    heartbeat_age: float | None
    stale: bool
    host_online: bool
    trusted: bool = True

    @property
    def target(self) -> str:
        """The ``HOST/INSTANCE`` address of this instance."""
        return f"{self.host}/{self.name}"

    def to_dict(self) -> dict[str, t.Any]:
        """Return the ``fleet ls --json`` record."""
        fields = ("pid", "cpu_percent", "rss", "uptime", "restarts", "commit", "recipe", "backend", "desired")
        return {
            "host": self.host,
            "instance": self.name,
            "state": self.state,
            "reported_state": self.reported_state,
            **{k: self.record.get(k) for k in fields},
            "record_age": self.age,
            "heartbeat_age": self.heartbeat_age,
            "stale": self.stale,
            "host_online": self.host_online,
            "trusted": self.trusted,
        }


@dataclasses.dataclass
class Snapshot:
    """Everything ``fleet ls`` shows."""

    hosts: dict[str, HostView]
    instances: list[InstanceView]

    def to_dict(self) -> dict[str, t.Any]:
        """Return the snapshot as JSON-able data."""
        return {
            "hosts": [dataclasses.asdict(h) for h in self.hosts.values()],
            "instances": [i.to_dict() for i in self.instances],
        }


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
    """A short-lived client of the fleet (one CLI invocation)."""

    def __init__(self, config: AgentConfig, *, client_id: str | None = None) -> None:
        self.config = config
        self.own = config.own_prefix
        self._token = uuid.uuid4().hex
        self._reply_prefix = f"supervisor-fleet/{self._token}"
        self._lock = threading.Lock()
        self._agents: dict[str, dict[str, t.Any]] = {}
        self._states: dict[tuple[str, str], dict[str, t.Any]] = {}
        self._heartbeats: dict[str, float] = {}
        self._waiters: dict[str, tuple[threading.Event, list[bytes]]] = {}
        self.connection = Connection(config.broker, client_id=client_id or f"supervisor-fleet-{self._token[:12]}")

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

    def _on_agent(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        host = topic.split("/")[-2]
        with self._lock:
            keep_record(self._agents, host, topic, payload, self.config.secret)

    def _on_state(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        parts = topic.split("/")
        host, name = parts[-3], parts[-2]
        with self._lock:
            keep_record(self._states, (host, name), topic, payload, self.config.secret)

    def _on_heartbeat(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        name = topic.split("/")[-2]
        with self._lock:
            self._heartbeats[name] = time.time()

    def snapshot(self, wait: float = 1.5) -> Snapshot:
        """Collect retained records (and live heartbeats) for ``wait`` seconds and judge freshness."""
        self.connection.subscribe(f"{self.own}/+/agent", self._on_agent, qos=1)
        self.connection.subscribe(f"{self.own}/+/+/state", self._on_state, qos=1)
        self.connection.subscribe(f"{self.config.namespace}/+/hb", self._on_heartbeat, qos=0)
        time.sleep(wait)
        now = time.time()
        with self._lock:
            agents = dict(self._agents)
            states = dict(self._states)
            heartbeats = dict(self._heartbeats)
        hosts = {
            host: HostView(
                host=host,
                state=str(rec.get("state", "unknown")) if rec[TRUSTED_KEY] else UNTRUSTED,
                ts=rec.get("ts"),
                version=rec.get("version"),
                signed=rec.get("signed"),
                heartbeat_interval=rec.get("heartbeat_interval"),
                trusted=rec[TRUSTED_KEY],
            )
            for host, rec in agents.items()
        }
        views = []
        hosts_of: dict[str, int] = {}
        for _, name in states:
            hosts_of[name] = hosts_of.get(name, 0) + 1
        for (host, name), record in sorted(states.items()):
            agent = hosts.get(host)
            online = agent is not None and agent.state == "online"
            ts = record.get("ts")
            age = now - ts if isinstance(ts, (int, float)) else None
            refresh = record.get("refresh") or 30.0
            stale = age is None or age > refresh + STALE_GRACE
            reported = str(record.get("state", "unknown"))
            trusted = bool(record[TRUSTED_KEY]) and (agent is None or agent.trusted)
            state = UNTRUSTED if not trusted else "offline" if not online else ("stale" if stale else reported)
            # {ns}/{id}/hb carries no host: a live heartbeat is only attributable to a unique id.
            last_hb = heartbeats.get(name) if hosts_of[name] == 1 else None
            recorded_hb = record.get("last_heartbeat")
            if isinstance(recorded_hb, (int, float)):
                last_hb = max(last_hb or 0.0, recorded_hb)
            views.append(
                InstanceView(
                    host=host,
                    name=name,
                    state=state,
                    reported_state=reported,
                    record=record,
                    age=age,
                    heartbeat_age=(now - last_hb) if last_hb else None,
                    stale=stale,
                    host_online=online,
                    trusted=trusted,
                )
            )
        return Snapshot(hosts=hosts, instances=views)

    # -- commands ----------------------------------------------------------------

    def _on_reply(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        with self._lock:
            waiter = self._waiters.get(topic)
        if waiter is not None:
            waiter[1].append(payload)
            waiter[0].set()

    def request(self, host: str, instance: str | None, verb: str, data: Mapping[str, t.Any], timeout: float) -> Reply:
        """Send one verb to ``host`` (and ``instance``) and wait up to ``timeout`` seconds for the reply."""
        target = f"{host}/{instance}" if instance else host
        topic = f"{self.own}/{host}/{instance}/{verb}" if instance else f"{self.own}/{host}/{verb}"
        reply_to = f"{self._reply_prefix}/{uuid.uuid4().hex}"
        header: dict[str, t.Any] = {
            "reply_to": reply_to,
            "timestamp": int(time.time() * 1000),
            "agent": "supervisor-fleet",
        }
        if self.config.secret:
            header["auth"] = sign(self.config.secret, topic, reply_to, data)
        event = threading.Event()
        box: list[bytes] = []
        with self._lock:
            self._waiters[reply_to] = (event, box)
        try:
            payload = json.dumps({"header": header, "data": dict(data)}, separators=(",", ":")).encode()
            self.connection.publish(topic, payload, qos=1)
            if not event.wait(timeout):
                return Reply(
                    target, verb, False, None, f"timed out after {timeout:g}s waiting for {target}", timed_out=True
                )
        finally:
            with self._lock:
                self._waiters.pop(reply_to, None)
        reply = load_record(box[0]) or {}
        data_member = reply.get("data")
        body: dict[str, t.Any] = data_member if isinstance(data_member, dict) else {}
        status = body.get("status")
        return Reply(
            target,
            verb,
            status == protocol.STATUS_OK,
            status if isinstance(status, int) else None,
            str(body.get("msg", "")),
            body.get("result"),
        )

    def host_states(self, hosts: t.Collection[str], wait: float = 1.0) -> dict[str, str]:
        """Return the retained availability of ``hosts`` (missing ones are absent), waiting at most ``wait``."""
        for host in hosts:
            self.connection.subscribe(f"{self.own}/{host}/agent", self._on_agent, qos=1)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self._lock:
                if all(host in self._agents for host in hosts):
                    break
            time.sleep(0.01)
        with self._lock:
            return {
                h: str(self._agents[h].get("state", "unknown")) if self._agents[h][TRUSTED_KEY] else UNTRUSTED
                for h in hosts
                if h in self._agents
            }

    def run(
        self, targets: Sequence[tuple[str, str | None]], verb: str, data: Mapping[str, t.Any], timeout: float
    ) -> list[Reply]:
        """Send ``verb`` to every target at once and return the replies in target order.

        Targets on hosts whose retained agent record is offline, or missing, fail
        at once instead of waiting out the timeout.
        """
        replies: list[Reply | None] = [None] * len(targets)
        hosts = self.host_states({host for host, _ in targets})

        def one(index: int, host: str, instance: str | None) -> None:
            target = f"{host}/{instance}" if instance else host
            state = hosts.get(host)
            if state is None:
                msg = f"no agent of host '{host}' is known to this broker. Run 'supervisor fleet ls' to see hosts."
                replies[index] = Reply(target, verb, False, None, msg)
            elif state == UNTRUSTED:
                msg = (
                    f"host '{host}': its availability record is not signed with this client's secret "
                    "(untrusted: a stranger published it, or the secrets differ); nothing was sent."
                )
                replies[index] = Reply(target, verb, False, None, msg)
            elif state != "online":
                msg = f"host '{host}' is {state} (its agent's last will); nothing was sent."
                replies[index] = Reply(target, verb, False, None, msg)
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


def load_record(payload: bytes) -> dict[str, t.Any] | None:
    """Return a JSON object payload as a dict; ``None`` for an empty (cleared), non-JSON or non-object one."""
    if not payload:
        return None
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: a deeply nested payload
        return None
    return value if isinstance(value, dict) else None


K = t.TypeVar("K")


def keep_record(
    records: dict[K, dict[str, t.Any]], key: K, topic: str, payload: bytes, secret: str | None
) -> dict[str, t.Any] | None:
    """Store a retained record under ``key``, marked with :data:`TRUSTED_KEY`; return what is kept.

    With a secret, a record that is unsigned or wrongly signed for ``topic`` is
    kept as untrusted, and never replaces a trusted one (a stranger cannot hide
    or rewrite a real host). An empty payload (a cleared record) removes it.
    """
    record = load_record(payload)
    if record is None:
        records.pop(key, None)
        return None
    trusted = secret is None or is_signed_record(secret, topic, record)
    previous = records.get(key)
    if not trusted and previous is not None and previous.get(TRUSTED_KEY):
        logger.warning("ignoring an unsigned or wrongly signed record on %s", topic[:200])
        return previous
    records[key] = {**record, TRUSTED_KEY: trusted}
    return records[key]
