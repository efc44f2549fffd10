"""What the agent says about its host's bots: Hummingbot's heartbeats and status updates, events, state records.

:class:`Beacon` beats and says ``online``/``offline`` for bots without Hummingbot's
MQTT plugin while their process is alive (a plugin bot beats for itself; the agent
only says ``offline`` when its process is gone), publishes agent events, and keeps
each instance's retained ``state`` record current. It owns what was last said.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import typing as t

from supervisor.core.registry import DESIRED_RUNNING
from supervisor.mqtt import protocol
from supervisor.mqtt.auth import sign_record
from supervisor.states import State

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from supervisor.agent.view import HostView
    from supervisor.core.manager import InstanceStatus
    from supervisor.core.watchdog import Probe
    from supervisor.mqtt.connection import Connection

__all__ = ["Beacon"]

_VOLATILE = frozenset({"cpu_percent", "rss", "uptime", "last_heartbeat"})
_DOWN = (State.CRASHED, State.EXITED)


def _stable(status: InstanceStatus) -> tuple[t.Any, ...]:
    """Return what a state record says apart from its ever-changing figures (a record goes out when this changes)."""
    return tuple(getattr(status, f.name) for f in dataclasses.fields(status) if f.name not in _VOLATILE)


@dataclasses.dataclass(frozen=True)
class Voice:
    """Where and how often the beacon speaks."""

    namespace: str  # Hummingbot's
    own: str  # ours for this host: {own_prefix}/{host_id}
    host_id: str
    heartbeat_interval: float
    state_interval: float
    secret: str | None = None


class Beacon:
    """Heartbeats, status updates, events and state records of one host's bots.

    Parameters
    ----------
    connection
        The broker connection.
    view
        The snapshot the records are made from.
    probe
        Says whether someone holds an instance's lock (a restart under way: its gap is no crash).
    voice
        Topics, host id, intervals and the secret that signs records.
    records_changed
        Called after the set of published records changed (the agent's availability record counts them).
    """

    def __init__(
        self,
        connection: Connection,
        view: HostView,
        probe: Probe,
        voice: Voice,
        *,
        records_changed: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.connection = connection
        self.view = view
        self.probe = probe
        self.voice = voice
        self._records_changed = records_changed
        self._clock = clock
        self._liveness_lock = threading.Lock()
        self._alive: dict[str, bool] = {}
        self._plugin_alive: dict[str, bool] = {}
        self._last_heartbeat: dict[str, float] = {}
        self._publish_lock = threading.Lock()
        self._published: dict[str, tuple[InstanceStatus, tuple[t.Any, ...]]] = {}

    # -- liveness ----------------------------------------------------------------------------------

    def heartbeats(self) -> None:
        """Publish ``hb`` for plugin-less bots whose process is alive (as the snapshot says: kept current)."""
        with self._liveness_lock:
            statuses = self.view.snapshot()
            self._track_locked(statuses.values(), beat=True)
            for gone in set(self._alive) - set(statuses):
                self._alive.pop(gone)
            for gone in set(self._plugin_alive) - set(statuses):
                self._plugin_alive.pop(gone)

    def track(self, statuses: Iterable[InstanceStatus]) -> None:
        """Say ``online`` (and beat) for bots that came up, ``offline`` for those gone."""
        with self._liveness_lock:
            self._track_locked(statuses, beat=False)

    def _track_locked(self, statuses: Iterable[InstanceStatus], *, beat: bool) -> None:
        """Say ``online`` (and beat) for bots that came up, ``offline`` for those gone; ``beat``: beat the others too.

        A plugin bot announces itself and beats for itself, but never says
        ``offline``: the agent says it when the bot's process is gone.
        """
        for status in statuses:
            name, alive = status.name, status.is_running  # the process, not readiness: beats say "alive"
            if status.plugin:
                if self._plugin_alive.get(name) and not alive:
                    self._status_update(name, "offline")
                self._plugin_alive[name] = alive
                continue
            was = self._alive.get(name, False)
            if alive and not was:
                self._status_update(name, "online")
                self._beat(name)
            elif was and not alive:
                self._status_update(name, "offline")
            elif alive and beat and not self._beat_recently(name):
                self._beat(name)
            self._alive[name] = alive

    def _beat_recently(self, name: str) -> bool:
        """Whether a beat went out within half an interval (at launch): the tick then skips one, keeping the cadence."""
        last = self._last_heartbeat.get(name)
        return last is not None and self._clock() - last < self.voice.heartbeat_interval / 2

    def _beat(self, name: str) -> None:
        self.connection.publish(f"{self.voice.namespace}/{name}/hb", protocol.heartbeat())
        self._last_heartbeat[name] = round(self._clock(), 3)

    def heard_beat(self, name: str) -> None:
        """Note a plugin bot's own heartbeat (its state record shows its age)."""
        self._last_heartbeat[name] = round(self._clock(), 3)

    def announce(self, name: str, status: InstanceStatus, *, relaunched: bool = False) -> None:
        """Say ``online`` and beat at once for a plugin-less bot whose process was just (re)launched.

        ``relaunched``: a request just launched it and its reply went out: it beats now even if a
        beat for the old process went out moments ago, so heartbeats follow the reply.
        """
        with self._liveness_lock:
            announced = not status.plugin and status.is_running and self._alive.get(name)
            if announced and (relaunched or not self._beat_recently(name)):
                self._beat(name)  # a new process behind a name already announced: it beats at once too
            self._track_locked([status], beat=False)

    def gone(self, name: str, status: InstanceStatus) -> None:
        """Say ``offline`` for a bot the agent had announced (or seen alive) whose process is gone."""
        if not status.is_running:
            self.track([status])

    def all_offline(self) -> None:
        """Say ``offline`` for every bot announced alive (the agent is stopping)."""
        for name, alive in list(self._alive.items()):
            if alive:
                self._status_update(name, "offline")

    def _status_update(self, name: str, state: t.Literal["online", "offline"]) -> None:
        self.connection.publish(f"{self.voice.namespace}/{name}/status_updates", protocol.status_update(state))

    def notify(self, name: str, message: str) -> None:
        """Publish an agent event about ``name`` (and, for a bot we speak for, Hummingbot's ``notify``)."""
        event = {"ts": round(self._clock(), 3), "host": self.voice.host_id, "instance": name, "msg": message}
        self.connection.publish(f"{self.voice.own}/{name}/events", json.dumps(event).encode(), qos=1)
        status = self.view.status_of(name)
        if status is not None and not status.plugin:
            self.connection.publish(f"{self.voice.namespace}/{name}/notify", protocol.notify(0, message))

    # -- state records -----------------------------------------------------------------------------

    def published(self) -> list[str]:
        """Return the instances whose state records are on the broker (as far as this run knows)."""
        return list(self._published)

    def forget_published(self) -> None:
        """Forget what was published: every record goes out again (the broker may have lost them)."""
        self._published.clear()
        self.view.all_changed()

    def publish_states(self, *, force: bool = False) -> None:
        """Publish retained ``state`` records that changed (all of them when ``force``)."""
        if not self.connection.is_connected:
            return
        with self._publish_lock:  # the main loop, the watchdog's reports and request workers all publish
            self._publish_locked(force=force)

    def _publish_locked(self, *, force: bool) -> None:
        before = set(self._published)
        statuses, names = self.view.changes(everything=set(self._published) if force else None)
        now = self._clock()
        for name in names:
            status = statuses.get(name)
            previous = self._published.get(name)
            if status is None:
                if previous is not None:
                    self.connection.publish(f"{self.voice.own}/{name}/state", b"", qos=1, retain=True)
                    self._published.pop(name, None)
                continue
            if not force and previous is not None and previous[0] is status:
                continue
            stable = _stable(status)
            if not force and previous is not None and previous[1] == stable:
                self._published[name] = (status, stable)
                continue
            if status.state in _DOWN and status.desired == DESIRED_RUNNING and self.probe.is_busy(name):
                self.view.changed([name])  # mid-restart (someone holds its lock): the gap is no crash
                continue
            record = {**status.to_dict(), "last_heartbeat": self._last_heartbeat.get(name)}
            body = {**record, "host": self.voice.host_id, "ts": round(now, 3), "refresh": self.voice.state_interval}
            topic = f"{self.voice.own}/{name}/state"
            if self.voice.secret:
                body = sign_record(self.voice.secret, topic, body)
            self.connection.publish(topic, json.dumps(body).encode(), qos=1, retain=True)
            self._published[name] = (status, stable)
        if set(self._published) != before:
            self._records_changed()
