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
    from collections.abc import Callable, Collection, Iterable, Mapping

logger = logging.getLogger(__name__)

STALE_GRACE = 5.0
"""Seconds past a record's refresh period before it counts as stale."""
DEFAULT_REFRESH = 30.0
"""A state record's refresh period when it names none."""
DEFAULT_HEARTBEAT = 10.0
"""The agent's heartbeat interval when its record names none."""
PLUGIN_HEARTBEAT = 10.0
"""Hummingbot's own bridge beats every 10 s, whatever the agent's interval."""
BEAT_MISSES = 3
"""Beats a host may miss before it counts as unresponsive (its agent announces its beat interval)."""
BEAT_GRACE = 2.0
"""Seconds of slack on top of the missed beats: a busy machine's agent may beat late."""
PROBE_EVERY = 1.0
"""Seconds between two probes of a long-lived view's delay behind the broker (the dashboard sends them)."""
PROBE_SLACK = 0.5
"""Seconds a probe may take to come back before the view counts itself behind the broker."""
MAX_BEHIND = 60.0
"""Seconds the view judges freshness in the past at most while it is behind (a lost probe stops counting then)."""
TRUSTED_KEY = "trusted"
"""Set on every record the view keeps: whether its signature checked out (always true without a secret)."""


class Seen(str, enum.Enum):
    """What the view says of a host, or of an instance whose own record cannot be taken at its word."""

    ONLINE = "online"
    """The host's agent is connected (its retained record says so)."""
    OFFLINE = "offline"
    """The host's agent is gone (its last will), or unknown: the instance's record is not vouched for."""
    UNRESPONSIVE = "unresponsive"
    """The host's agent is connected but its beats stopped (hung, stopped or starved): it vouches for nothing."""
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
GREY = frozenset({Seen.OFFLINE, Seen.UNRESPONSIVE, Seen.STALE, Seen.UNTRUSTED})
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
    beat_interval: float | None = None
    """Seconds between the agent's own beats (``None``: it does not beat: an older agent)."""
    beat_age: float | None = None
    """Seconds since this view last heard the agent's beat (``None``: not since it listens)."""
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
    behind: float = 0.0
    """Seconds this view is behind the broker (its probes say so): freshness was judged that much earlier."""

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


def instance_state(
    reported: str, *, trusted: bool, host_online: bool, stale: bool, host_state: str = Seen.OFFLINE
) -> str:
    """Return the state to show for an instance whose record reports ``reported``.

    Trust comes first (a stranger's record says nothing), then the host (an offline or
    unresponsive agent vouches for nothing), then freshness; only then is the record taken at its word.
    """
    if not trusted:
        return Seen.UNTRUSTED
    if not host_online:
        return Seen.UNRESPONSIVE if host_state == Seen.UNRESPONSIVE else Seen.OFFLINE
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
        self.every_beat = False
        """Judge every host by one missed beat (plus grace), not only those with out-of-date records."""
        self._clock = clock
        self._lock = threading.Lock()
        self._agents: dict[str, dict[str, t.Any]] = {}
        self._states: dict[tuple[str, str], dict[str, t.Any]] = {}
        self._heartbeats: dict[str, float] = {}
        self._remembered: set[str] = set()
        # The agents' own beats: when each host's last one came (this view's clock), its ts, whether current.
        self._beats: dict[str, _Beat] = {}
        self._listening: float | None = None
        self._hearing: Callable[[], bool] | None = None
        self._agent_taken: dict[str, float] = {}
        # Completeness, judged again only for hosts whose records changed: fleet ls asks often.
        self._names: dict[str, set[str]] = {}
        self._judged: dict[str, tuple[bool | None, int | None]] = {}
        self._unjudged: set[str] = set()
        # Probes of this view's own delay: id -> (this view's clock, monotonic) when sent; the newest that came back.
        self._probes: dict[int, tuple[float, float]] = {}
        self._probe_id = 0
        self._heard: float | None = None

    def probe_sent(self) -> int:
        """Note a probe sent now through the broker back to this view; return its id.

        A probe that comes back (:meth:`probe_back`) proves every message the broker queued for
        this view before it has come in. The view judges freshness at most :data:`PROBE_EVERY`
        plus :data:`PROBE_SLACK` past the last probe back: when it is behind (a starved network
        thread, a long queue), records that were on time do not turn stale while they wait in its queue.
        """
        with self._lock:
            self._probe_id += 1
            self._probes[self._probe_id] = (self._clock(), time.monotonic())
            return self._probe_id

    def probe_back(self, probe: int) -> None:
        """Note that probe ``probe`` came back (an unknown id is ignored: anyone may publish it)."""
        with self._lock:
            sent = self._probes.get(probe)
            if sent is None:
                return
            self._heard = max(self._heard or sent[0], sent[0])
            for older in [p for p in self._probes if p <= probe]:
                del self._probes[older]

    def _judged_at(self, now: float) -> float:
        """Return the time freshness is judged at: ``now``, or the last probe back plus period and slack (lock held)."""
        mono = time.monotonic()
        for probe in [p for p, (_, sent) in self._probes.items() if mono - sent > MAX_BEHIND]:
            del self._probes[probe]  # lost (a broker over its limits): never coming back
        if self._heard is None:
            return now  # not probing (fleet ls), or no probe back yet
        return min(now, max(self._heard + PROBE_EVERY + PROBE_SLACK, now - MAX_BEHIND))

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
            self._agent_taken[host] = self._clock()
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

    def listen_to_beats(self, hearing: Callable[[], bool] | None = None) -> None:
        """Note that the agents' beats come in from now on (again, after a reconnect): silent hosts are judged.

        ``hearing`` says whether they can come now (the connection is up): while not, no host is judged by them.
        """
        with self._lock:
            self._listening = self._clock()
            self._hearing = hearing or self._hearing
            self._probes.clear()  # sent over the connection that ended: they will not come back

    def on_beat(self, topic: str, payload: bytes) -> bool:
        """Take an agent's own beat on ``{own}/{host}/beat``; return whether it counts.

        It counts when it is signed (with a secret), names the host of its topic and the run of
        the host's agent record, and is newer than the last one taken (an old beat sent again is no news).
        """
        host = topic.split("/")[-2]
        beat = load_record(payload)
        if beat is None or beat.get("host") != host:
            return False
        ts = _number(beat.get("ts"))
        if ts is None or (self.secret is not None and not is_signed_record(self.secret, topic, beat)):
            return False
        with self._lock:
            agent = self._agents.get(host)
            run = None if agent is None else agent.get("run")
            if run is not None and beat.get("run") != run:
                return False  # another agent with this host id (a duplicate that never served)
            last = self._beats.get(host)
            if last is not None and ts <= last.ts:
                return False
            self._beats[host] = _Beat(self._clock(), ts, beat.get("current") is True)
        return True

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
        now = self._clock()
        with self._lock:
            record = self._agents.get(host)
            remembered = host in self._remembered
            states = {key: rec for key, rec in self._states.items() if key[0] == host}
            judged = self._judged_at(now)
            silence = self._silence(host, judged)
        if record is None:
            return None
        view = _host_view(host, record, remembered)
        _judge_beat(view, silence, self.every_beat or _is_out_of_date(record, states.values(), judged))
        return view.state

    def awaiting_beats(self) -> list[str]:
        """Return the hosts whose state records are out of date and whose beat this view still waits for.

        A host that beats again vouches for its records at once; one silent for a beat interval
        (plus grace) is unresponsive. A short-lived view waits for these, not for every host.
        """
        now = self._clock()
        with self._lock:
            candidates = {
                host: record
                for host, record in self._agents.items()
                if host not in self._beats and host not in self._remembered and record.get(TRUSTED_KEY)
            }
            by_host: dict[str, list[dict[str, t.Any]]] = {host: [] for host in candidates}
            for (host, _), record in self._states.items():
                if host in candidates:
                    by_host.setdefault(host, []).append(record)
            judged = self._judged_at(now)
            silences = {host: self._silence(host, judged) for host in by_host}
        waiting = []
        for host, records in sorted(by_host.items()):
            view = _host_view(host, candidates[host], remembered=False)
            out_of_date = self.every_beat or _is_out_of_date(candidates[host], records, judged)
            if out_of_date and _judge_beat(view, silences[host], out_of_date):
                waiting.append(host)
        return waiting

    def _silence(self, host: str, now: float) -> float | None:
        """Seconds since the host's last beat, its record, or the start of listening (``None``: not listening)."""
        if self._listening is None or (self._hearing is not None and not self._hearing()):
            return None
        beat = self._beats.get(host)
        since = max(self._listening, self._agent_taken.get(host, self._listening), beat.arrived if beat else 0.0)
        return now - since

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
        if state == Seen.UNRESPONSIVE:
            return (
                f"host '{host}' is unresponsive: its agent is connected but has not beaten for a while "
                "(hung, stopped or starved); nothing was sent. Check the agent's process on that host."
            )
        if state != Seen.ONLINE:
            return f"host '{host}' is {state} (its agent's last will); nothing was sent."
        return None

    def snapshot(self) -> Snapshot:
        """Return every host and instance, judged now; instances their live agent dropped are forgotten."""
        now = self._clock()
        with self._lock:
            judged = self._judged_at(now)
            agents = dict(self._agents)
            remembered = set(self._remembered)
            states = dict(self._states)
            heartbeats = dict(self._heartbeats)
            silences = {host: self._silence(host, judged) for host in agents}
            beats = dict(self._beats)
        hosts = {host: _host_view(host, rec, host in remembered) for host, rec in sorted(agents.items())}
        by_host: dict[str, list[dict[str, t.Any]]] = {}
        for (host, _), record in states.items():
            by_host.setdefault(host, []).append(record)
        vouched: set[str] = set()
        for host, view in hosts.items():
            beat, interval = beats.get(host), view.beat_interval
            out_of_date = interval is not None and (
                self.every_beat or _is_out_of_date(agents[host], by_host.get(host, ()), judged)
            )
            beating = _judge_beat(view, silences[host], out_of_date)
            if interval is None or beat is None:
                continue
            view.beat_age = now - beat.arrived
            # Only a recent beat vouches for old records: not one from before a hang.
            if beating and beat.current and judged - beat.arrived <= interval + BEAT_GRACE:
                vouched.add(host)
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
            # Judged as of what the view has heard: one behind the broker blames itself, not the agents.
            stale = ts is None or judged - ts > refresh + STALE_GRACE
            if stale and online and host in vouched and agent is not None and _is_counted(agents[host], record):
                stale = False  # its agent beats again: the record it last published is still what it has
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
                    state=instance_state(
                        reported,
                        trusted=trusted,
                        host_online=online,
                        stale=stale,
                        host_state=agent.state if agent is not None else Seen.OFFLINE,
                    ),
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
        return Snapshot(hosts=hosts, instances=instances, now=now, left_over=left_over, behind=round(now - judged, 1))


def _host_view(host: str, record: Mapping[str, t.Any], remembered: bool) -> HostView:
    trusted = bool(record[TRUSTED_KEY])
    if remembered:
        state: str = Seen.UNSEEN
    elif not trusted:
        state = Seen.UNTRUSTED
    else:
        state = str(record.get("state", Seen.UNKNOWN))
    beat = _number(record.get("beat_interval"))
    return HostView(
        host=host,
        state=state,
        ts=_number(record.get("ts")),
        version=record.get("version"),
        signed=record.get("signed"),
        heartbeat_interval=record.get("heartbeat_interval"),
        trusted=trusted,
        beat_interval=beat if beat is not None and beat > 0 else None,
    )


class _Beat(t.NamedTuple):
    arrived: float
    """When it came (the view's clock)."""
    ts: float
    """When the agent sent it (its clock): only a newer one counts."""
    current: bool
    """Whether the agent keeps its state records up to date (it can read its state)."""


def _judge_beat(view: HostView, silence: float | None, out_of_date: bool) -> bool:
    """Mark an online host ``unresponsive`` when its beats are overdue; return whether it is beating.

    Overdue: none for :data:`BEAT_MISSES` intervals (plus grace), or for one when its state records
    are already out of date (they say the agent stopped refreshing them). A host that does not
    beat (an older agent), or a view not listening, is judged as before.
    """
    if view.state != Seen.ONLINE or view.beat_interval is None or silence is None:
        return False
    allowed = (1 if out_of_date else BEAT_MISSES) * view.beat_interval + BEAT_GRACE
    if silence > allowed:
        view.state = Seen.UNRESPONSIVE
        return False
    return True


def _is_out_of_date(agent: Mapping[str, t.Any], records: Iterable[Mapping[str, t.Any]], now: float) -> bool:
    """Whether any trusted state record of the agent's current run was not refreshed in time."""
    for record in records:
        if not _is_counted(agent, record):
            continue
        ts = _number(record.get("ts"))
        if ts is None or now - ts > (_number(record.get("refresh")) or DEFAULT_REFRESH) + STALE_GRACE:
            return True
    return False


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
