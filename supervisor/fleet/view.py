"""One view of the fleet: hosts and instances from retained records and heartbeats, and the rules that judge them.

The fleet client (``fleet ls`` and commands) and the dashboard both keep their records in a
:class:`FleetView`, so the two can never disagree on what is online, stale, untrusted or gone.
Imports only the MQTT wire (record parsing and signatures) and the shared state names; no connection, no core.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import math
import threading
import time
import typing as t

from supervisor.mqtt.auth import is_signed_record
from supervisor.mqtt.protocol import instances_generation, load_record

if t.TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

logger = logging.getLogger(__name__)

STALE_GRACE = 5.0
"""Seconds past a record's refresh period before it counts as stale."""
DEFAULT_REFRESH = 30.0
"""A state record's refresh period when it names none."""
DEFAULT_HEARTBEAT = 10.0
"""The agent's heartbeat interval when its record names none."""
PLUGIN_HEARTBEAT = 10.0
"""Hummingbot's own bridge beats every 10 s, whatever the agent's interval."""
TRUSTED_KEY = "trusted"
"""Set on every record the view keeps: whether its signature checked out (always true without a secret)."""


class Seen(str, enum.Enum):
    """What the view says of a host, or of an instance whose own record cannot be taken at its word."""

    ONLINE = "online"
    """The host's agent is connected (its retained record says so)."""
    OFFLINE = "offline"
    """The host's agent is gone (its last will), or unknown: the instance's record is not vouched for."""
    STALE = "stale"
    """The instance's record was not refreshed in time."""
    UNTRUSTED = "untrusted"
    """The record is not signed with the shared secret (or wrongly signed)."""
    UNSEEN = "unseen"
    """The host is known only from history, not heard from since this view started."""
    UNKNOWN = "unknown"
    """The record names no state."""

    def __str__(self) -> str:
        return str(self.value)


UNTRUSTED = Seen.UNTRUSTED
K = t.TypeVar("K")
GREY = frozenset({Seen.OFFLINE, Seen.STALE, Seen.UNTRUSTED})
"""Instance states that say nothing about the bot, only that its record cannot be believed now."""


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
    expected: int | None = None
    """How many state records the agent says it has (``None``: it does not say: an older agent, or its last will)."""
    received: int = 0
    """How many of its state records this view holds."""
    complete: bool | None = None
    """Whether this view holds exactly the agent's records (``None``: it cannot tell)."""

    @property
    def missing(self) -> int:
        """How many of the host's records this view lacks (0 when it cannot tell)."""
        return max(0, self.expected - self.received) if self.expected is not None and not self.complete else 0

    @property
    def online(self) -> bool:
        """Whether commands may be sent to this host (trusted, heard from, and its agent says online)."""
        return self.state == Seen.ONLINE


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
    heartbeat_ts: float | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT

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
    """Everything ``fleet ls`` shows, at one moment."""

    hosts: dict[str, HostView]
    instances: list[InstanceView]
    now: float = 0.0
    left_over: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """Instances dropped from the view because their live agent no longer publishes them."""

    @property
    def incomplete(self) -> list[HostView]:
        """The hosts whose records this view does not all hold (their agent said how many it has)."""
        return [h for h in self.hosts.values() if h.complete is False]

    def to_dict(self) -> dict[str, t.Any]:
        """Return the snapshot as JSON-able data."""
        return {
            "complete": not self.incomplete,
            "incomplete": [{"host": h.host, "expected": h.expected, "received": h.received} for h in self.incomplete],
            "hosts": [{**dataclasses.asdict(h), "missing": h.missing} for h in self.hosts.values()],
            "instances": [i.to_dict() for i in self.instances],
        }


class Change(t.NamedTuple):
    """A record the view took: what it held before and what it holds now (``None``: nothing)."""

    previous: dict[str, t.Any] | None
    record: dict[str, t.Any] | None


def instance_state(reported: str, *, trusted: bool, host_online: bool, stale: bool) -> str:
    """Return the state to show for an instance whose record reports ``reported``.

    Trust comes first (a stranger's record says nothing), then the host (an offline agent
    vouches for nothing), then freshness; only then is the record taken at its word.
    """
    if not trusted:
        return Seen.UNTRUSTED
    if not host_online:
        return Seen.OFFLINE
    return Seen.STALE if stale else reported


def is_left_over(ts: float | None, agent_ts: float | None, now: float, refresh: float) -> bool:
    """Whether a state record of time ``ts`` predates its agent's connection and was never published again.

    An agent publishes every instance's state again right after it connects, so a record older
    than the connection, a full refresh later, is of an instance that host no longer has.
    """
    if ts is None or agent_ts is None:
        return False
    return ts < agent_ts - 1.0 and now - agent_ts > refresh + STALE_GRACE


class FleetView:
    """The retained agent and state records and live heartbeats of a fleet, judged by one set of rules.

    Feed it what the broker delivers (:meth:`on_agent`, :meth:`on_state`, :meth:`on_heartbeat`,
    from any thread) and read :meth:`snapshot`. With ``secret`` set, unsigned or wrongly signed
    records are kept as untrusted and never replace trusted ones.
    """

    def __init__(self, secret: str | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self._clock = clock
        self._lock = threading.Lock()
        self._agents: dict[str, dict[str, t.Any]] = {}
        self._states: dict[tuple[str, str], dict[str, t.Any]] = {}
        self._heartbeats: dict[str, float] = {}
        self._remembered: set[str] = set()
        # Completeness, judged again only for hosts whose records changed: fleet ls asks often.
        self._names: dict[str, set[str]] = {}
        self._judged: dict[str, tuple[bool | None, int | None]] = {}
        self._unjudged: set[str] = set()

    def remember(
        self, hosts: Mapping[str, Mapping[str, t.Any]], states: Mapping[tuple[str, str], Mapping[str, t.Any]]
    ) -> None:
        """Take trusted records kept from an earlier run; their hosts stay unseen until the broker speaks of them."""
        with self._lock:
            for host, record in hosts.items():
                self._agents[host] = {**record, TRUSTED_KEY: True}
                self._remembered.add(host)
            for key, record in states.items():
                self._states[key] = {**record, TRUSTED_KEY: True}
                self._names.setdefault(key[0], set()).add(key[1])
            self._unjudged |= set(self._agents) | set(self._names)

    def on_agent(self, topic: str, payload: bytes) -> Change | None:
        """Take ``{own}/{host}/agent``; an empty payload removes the host and its instances.

        Returns ``None`` for a malformed payload, which is ignored (only an empty one deletes).
        """
        host = topic.split("/")[-2]
        loaded = load_record(payload)
        if payload and loaded is None:
            logger.warning("ignoring a malformed agent record on %s", topic[:200])
            return None
        with self._lock:
            self._remembered.discard(host)
            previous = self._agents.get(host)
            record = self._keep(self._agents, host, topic, loaded)
            self._unjudged.add(host)
            if record is None:
                for key in [k for k in self._states if k[0] == host]:
                    del self._states[key]
                self._names.pop(host, None)
        return Change(previous, record)

    def on_state(self, topic: str, payload: bytes) -> Change | None:
        """Take ``{own}/{host}/{instance}/state``; an empty payload removes the instance.

        Returns ``None`` for a malformed payload, which is ignored (only an empty one deletes).
        """
        parts = topic.split("/")
        key = (parts[-3], parts[-2])
        loaded = load_record(payload)
        if payload and loaded is None:
            logger.warning("ignoring a malformed state record on %s", topic[:200])
            return None
        with self._lock:
            previous = self._states.get(key)
            record = self._keep(self._states, key, topic, loaded)
            if record is None:
                self._names.get(key[0], set()).discard(key[1])
            else:
                self._names.setdefault(key[0], set()).add(key[1])
            self._unjudged.add(key[0])
            return Change(previous, record)

    def on_heartbeat(self, topic: str) -> None:
        """Note a heartbeat on ``{ns}/{instance}/hb`` now."""
        with self._lock:
            self._heartbeats[topic.split("/")[-2]] = self._clock()

    def _keep(
        self, records: dict[K, dict[str, t.Any]], key: K, topic: str, record: dict[str, t.Any] | None
    ) -> dict[str, t.Any] | None:
        if record is None:
            records.pop(key, None)
            return None
        trusted = self.secret is None or is_signed_record(self.secret, topic, record)
        previous = records.get(key)
        if not trusted and previous is not None and previous.get(TRUSTED_KEY):
            logger.warning("ignoring an unsigned or wrongly signed record on %s", topic[:200])
            return previous
        records[key] = {**record, TRUSTED_KEY: trusted}
        return records[key]

    # -- reading --------------------------------------------------------------------

    def knows(self, hosts: Collection[str]) -> bool:
        """Whether an availability record of every one of ``hosts`` has arrived."""
        with self._lock:
            return all(host in self._agents for host in hosts)

    def incomplete(self) -> dict[str, int]:
        """Return the hosts whose records this view does not all hold yet, with how many each has."""
        with self._lock:
            for host in self._unjudged:
                agent = self._agents.get(host)
                if agent is None or host in self._remembered:
                    self._judged.pop(host, None)
                    continue
                names = self._names.get(host, set())
                counted = [name for name in names if _is_counted(agent, self._states[(host, name)])]
                self._judged[host] = _completeness(agent, counted)
            self._unjudged.clear()
            return {host: expected or 0 for host, (complete, expected) in self._judged.items() if complete is False}

    def host_state(self, host: str) -> str | None:
        """Return ``host``'s state as :class:`HostView` shows it, or ``None`` when no record of it is known."""
        with self._lock:
            record = self._agents.get(host)
            remembered = host in self._remembered
        return None if record is None else _host_view(host, record, remembered).state

    def refusal(self, host: str) -> str | None:
        """Return why nothing may be sent to ``host`` (unknown, untrusted, not online), or ``None``."""
        state = self.host_state(host)
        if state is None:
            return f"no agent of host '{host}' is known to this broker. Run 'supervisor fleet ls' to see hosts."
        if state == Seen.UNTRUSTED:
            return (
                f"host '{host}': its availability record is not signed with the shared secret "
                "(untrusted: a stranger published it, or the secrets differ); nothing was sent."
            )
        if state == Seen.UNSEEN:
            return f"host '{host}' has not been heard from since this view started; nothing was sent."
        if state != Seen.ONLINE:
            return f"host '{host}' is {state} (its agent's last will); nothing was sent."
        return None

    def snapshot(self) -> Snapshot:
        """Return every host and instance, judged now; instances their live agent dropped are forgotten."""
        now = self._clock()
        with self._lock:
            agents = dict(self._agents)
            remembered = set(self._remembered)
            states = dict(self._states)
            heartbeats = dict(self._heartbeats)
        hosts = {host: _host_view(host, rec, host in remembered) for host, rec in sorted(agents.items())}
        intervals = {host: _number(h.heartbeat_interval) or DEFAULT_HEARTBEAT for host, h in hosts.items()}
        # {ns}/{id}/hb carries no host: a live heartbeat is only attributable to a unique id.
        owners = collections.Counter(name for _, name in states)
        instances: list[InstanceView] = []
        left_over: list[tuple[str, str]] = []
        for (host, name), record in sorted(states.items()):
            agent = hosts.get(host)
            online = agent is not None and agent.online
            ts = _number(record.get("ts"))
            refresh = _number(record.get("refresh")) or DEFAULT_REFRESH
            if online and agent is not None and is_left_over(ts, agent.ts, now, refresh):
                left_over.append((host, name))
                continue
            age = None if ts is None else now - ts
            stale = age is None or age > refresh + STALE_GRACE
            reported = str(record.get("state", Seen.UNKNOWN))
            trusted = bool(record[TRUSTED_KEY]) and (agent is None or agent.trusted)
            last_hb = heartbeats.get(name) if owners[name] == 1 else None
            recorded_hb = _number(record.get("last_heartbeat"))
            if recorded_hb is not None:
                last_hb = max(last_hb or 0.0, recorded_hb)
            interval = PLUGIN_HEARTBEAT if record.get("plugin") else intervals.get(host, DEFAULT_HEARTBEAT)
            instances.append(
                InstanceView(
                    host=host,
                    name=name,
                    state=instance_state(reported, trusted=trusted, host_online=online, stale=stale),
                    reported_state=reported,
                    record=record,
                    age=age,
                    heartbeat_age=(now - last_hb) if last_hb else None,
                    stale=stale,
                    host_online=online,
                    trusted=trusted,
                    heartbeat_ts=last_hb or None,
                    heartbeat_interval=float(interval),
                )
            )
        if left_over:
            with self._lock:
                for key in left_over:
                    self._states.pop(key, None)
                    self._names.get(key[0], set()).discard(key[1])
                    self._unjudged.add(key[0])
        dropped = set(left_over)
        kept = [(key, record) for key, record in states.items() if key not in dropped]
        names = _names_by_host(agents, kept)
        for host, view in hosts.items():
            if host not in remembered:
                complete, view.expected = _completeness(agents[host], names.get(host, []))
                view.complete, view.received = complete, len(names.get(host, []))
        return Snapshot(hosts=hosts, instances=instances, now=now, left_over=left_over)


def _host_view(host: str, record: Mapping[str, t.Any], remembered: bool) -> HostView:
    trusted = bool(record[TRUSTED_KEY])
    if remembered:
        state: str = Seen.UNSEEN
    elif not trusted:
        state = Seen.UNTRUSTED
    else:
        state = str(record.get("state", Seen.UNKNOWN))
    return HostView(
        host=host,
        state=state,
        ts=_number(record.get("ts")),
        version=record.get("version"),
        signed=record.get("signed"),
        heartbeat_interval=record.get("heartbeat_interval"),
        trusted=trusted,
    )


def _names_by_host(
    agents: Mapping[str, Mapping[str, t.Any]], states: Collection[tuple[tuple[str, str], Mapping[str, t.Any]]]
) -> dict[str, list[str]]:
    """Return, per host, the instances whose trusted state records its agent's current run published.

    A record older than the run (ts before its ``started``) is not counted: the run publishes all
    its records again at once, and one it does not is of an instance that host no longer has.
    """
    names: dict[str, list[str]] = {}
    for (host, name), record in states:
        agent = agents.get(host)
        if agent is not None and _is_counted(agent, record):
            names.setdefault(host, []).append(name)
    return names


def _is_counted(agent: Mapping[str, t.Any], record: Mapping[str, t.Any]) -> bool:
    """Whether a state record is one its agent's current run counts (trusted, not older than the run)."""
    if not record.get(TRUSTED_KEY):
        return False
    started, ts = _number(agent.get("started")), _number(record.get("ts"))
    return started is None or (ts is not None and ts >= started - 1.0)


def _completeness(agent: Mapping[str, t.Any], names: Collection[str]) -> tuple[bool | None, int | None]:
    """Return whether ``names`` are all of the records ``agent``'s availability record speaks of, and how many."""
    expected = _count(agent.get("instances"))
    if expected is None or not agent.get(TRUSTED_KEY):
        return None, expected
    generation = agent.get("generation")
    if isinstance(generation, str) and instances_generation(names) == generation:
        return True, expected
    if len(names) > expected:
        # Records the agent does not count (a stranger's, without a secret): whether all of its own
        # are among them the count cannot tell.
        return None, expected
    return len(names) == expected and not isinstance(generation, str), expected


def _count(value: t.Any) -> int | None:
    """Return ``value`` if it is a count (a non-negative int, not a bool), else ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _number(value: t.Any) -> float | None:
    """Return ``value`` if it is a real number (not a bool), else ``None``: records come from anyone."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None
