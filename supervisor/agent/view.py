"""The agent's one snapshot of its host: each instance's last derived status, and when it was derived.

:class:`HostView` is the only owner of that cache. It derives statuses through the
core (one look for many names), keeps a status from being replaced by an older
look, says when a status may answer a request as it is, and remembers which
instances' state records may have to go out again.
"""

from __future__ import annotations

import threading
import time
import typing as t

from supervisor.core.watchdog import pid_alive
from supervisor.states import State

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from supervisor.core.manager import ForeignSession, InstanceStatus, Manager
    from supervisor.core.watchdog import Probe

__all__ = ["SNAPSHOT_MAX_AGE", "HostView"]

SNAPSHOT_MAX_AGE = 1.0
"""A status older than this is derived again before it answers a request (its CPU and memory figures age)."""
_TRANSITIONAL = frozenset({State.STARTING, State.WAITING_LOGIN})
"""States a look by another process can end (its readiness record), unseen by the probe."""


class HostView:
    """Hold this host's instances as last derived.

    Parameters
    ----------
    manager
        The core: every look goes through it.
    probe
        Told what to watch (the bots' processes, the registry); says when the snapshot went stale.
    on_stored
        ``on_stored(statuses, announce)``: statuses just kept (said online/offline for when ``announce``).
    on_bots
        ``on_bots()``: after a look that may change this host's instances or which of them have their
        own MQTT bridge (read them with :meth:`bots`).
    """

    def __init__(
        self,
        manager: Manager,
        probe: Probe,
        *,
        on_stored: Callable[[list[InstanceStatus], bool], None],
        on_bots: Callable[[], None],
    ) -> None:
        self.manager = manager
        self.probe = probe
        self._on_stored = on_stored
        self._on_bots = on_bots
        self._lock = threading.Lock()
        self._statuses: dict[str, InstanceStatus] = {}
        self._looked: dict[str, float] = {}  # name -> when (monotonic) its status was derived
        self._changed: set[str] = set()  # names whose state record may have to go out again
        self._foreign_cache: tuple[float, list[ForeignSession]] = (-SNAPSHOT_MAX_AGE, [])
        self._foreign_lock = threading.Lock()
        self.state_error: str | None = None
        """Why this host's state cannot be read now (a broken registry or recipe); nothing is fresh then."""

    # -- reading -----------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, InstanceStatus]:
        """Return every status as it is (no look)."""
        with self._lock:
            return dict(self._statuses)

    def status_of(self, name: str) -> InstanceStatus | None:
        """Return the snapshot's status of ``name`` as it is (no look), or ``None``."""
        with self._lock:
            return self._statuses.get(name)

    def bots(self) -> tuple[set[str], set[str]]:
        """Return this host's instances, and those whose bots have their own MQTT bridge."""
        with self._lock:
            return set(self._statuses), {name for name, status in self._statuses.items() if status.plugin}

    def known(self, name: str) -> bool:
        """Return whether ``name`` is one of this host's (in the snapshot, or on record)."""
        with self._lock:
            if name in self._statuses:
                return True
        return self.manager.has(name)

    def fresh(self, name: str) -> InstanceStatus | None:
        """Return the snapshot's status of ``name`` if it can answer a request as it is, else ``None``.

        It can while the host's state is readable and the registry unchanged,
        it was derived less than :data:`SNAPSHOT_MAX_AGE` ago, and its bot (if
        it had one) is still alive.
        """
        if self.state_error is not None or self.probe.registry_changed():
            return None
        with self._lock:
            status = self._statuses.get(name)
            looked = self._looked.get(name, 0.0)
        if status is None or time.monotonic() - looked > SNAPSHOT_MAX_AGE:
            return None
        if status.pid is not None and not pid_alive(status.pid):
            return None
        if status.state in _TRANSITIONAL:
            return None  # another process (a `start --wait`) may have seen its ready line meanwhile
        return status

    def fresh_all(self) -> dict[str, InstanceStatus] | None:
        """Return the whole snapshot if every status in it is fresh (see :meth:`fresh`), else ``None``."""
        if self.state_error is not None or self.probe.registry_changed():
            return None
        now = time.monotonic()
        with self._lock:
            if any(now - self._looked.get(name, 0.0) > SNAPSHOT_MAX_AGE for name in self._statuses):
                return None
            statuses = dict(self._statuses)
        if any(s.pid is not None and not pid_alive(s.pid) for s in statuses.values()):
            return None
        return statuses

    def current(self, name: str) -> InstanceStatus:
        """Return the status of ``name`` for a request: the snapshot's when fresh, else a new look."""
        return self.fresh(name) or self.look(name)

    # -- looking -----------------------------------------------------------------------------------

    def look_all(self, *, announce: bool = True) -> dict[str, InstanceStatus]:
        """Derive every instance's status (one session query per backend, one process-table pass)."""
        since = time.monotonic()
        self.probe.watch_registry()  # before the look: a write meanwhile is seen at the next probe
        statuses = self.manager.status()
        self.store(statuses, since, complete=True, announce=announce)
        return self.snapshot()

    def look_changed(self) -> bool:
        """Derive again what the probe says may have changed; return whether that was everything."""
        change = self.probe.changes()
        if change.everything:
            self.look_all()
            return True
        if change.names:
            self.manager.forget_sessions()  # a bot just ended: its session may be gone too
            since = time.monotonic()
            gone = {name for name in change.names if not self.manager.has(name)}
            statuses = self.manager.status(sorted(change.names - gone)) if change.names - gone else []
            self.store(statuses, since, gone=gone)
        return False

    def look(self, name: str) -> InstanceStatus:
        """Derive one instance's status now, and keep it in the snapshot."""
        return self.look_some([name])[name]

    def look_some(self, names: Sequence[str]) -> dict[str, InstanceStatus]:
        """Derive these instances' statuses in one look, and keep them in the snapshot.

        Raises
        ------
        InstanceNotFound
        """
        since = time.monotonic()
        statuses = self.manager.status(names)
        self.store(statuses, since)
        return {status.name: status for status in statuses}

    def take(self, status: InstanceStatus | None, name: str) -> InstanceStatus:
        """Keep the status an action returned (derived just now), or derive one when it returned none."""
        if status is None:
            return self.look(name)
        self.store([status], time.monotonic())
        return status

    def store(
        self,
        statuses: Sequence[InstanceStatus],
        since: float,
        *,
        complete: bool = False,
        gone: Iterable[str] = (),
        announce: bool = True,
    ) -> None:
        """Put statuses derived from ``since`` (monotonic) into the snapshot; none replaces a newer one.

        ``complete``: they are all there is (others are dropped); ``gone``: names whose records are gone;
        ``announce``: say online/offline for bots that came up or went (else the next heartbeat tick does).
        """
        with self._lock:
            dropped = set(gone)
            if complete:
                dropped |= set(self._statuses) - {s.name for s in statuses}
            for name in dropped:
                if self._looked.get(name, 0.0) <= since:
                    self._statuses.pop(name, None)
                    self._looked.pop(name, None)
                    self._changed.add(name)
                    self.probe.forget(name)
            kept = []
            for status in statuses:
                if self._looked.get(status.name, 0.0) > since:
                    continue  # a request's action derived it later than this look began
                self._statuses[status.name] = status
                self._looked[status.name] = since
                self._changed.add(status.name)
                kept.append(status)
            changed = complete or kept or dropped
        self.probe.watch(kept)
        self._on_stored(kept, announce)
        if changed:
            self._on_bots()

    def provide(self, names: list[str], foreign: bool) -> dict[str, t.Any]:
        """Answer ``supervisor ls`` over the snapshot socket: the statuses of ``names`` (all when empty).

        From the snapshot while every status in it is younger than
        :data:`SNAPSHOT_MAX_AGE` (states are current: the probe sees every
        change), else from a new look; with ``foreign``, the foreign sessions
        too, looked at most once per :data:`SNAPSHOT_MAX_AGE`.

        Raises
        ------
        InstanceNotFound
        """
        statuses = self.fresh_all() or self.look_all()
        # Looked at again, in one look: names new since the snapshot (or strangers: InstanceNotFound), and
        # bots between launch and ready, whose ready line another process (a `start --wait`) may have seen.
        again = [
            name for name in names or list(statuses) if name not in statuses or statuses[name].state in _TRANSITIONAL
        ]
        if again:
            statuses.update(self.look_some(again))
        selected = [statuses[name] for name in names] if names else [statuses[n] for n in sorted(statuses)]
        return {
            "instances": [status.to_dict() for status in selected],
            "foreign": [session.to_dict() for session in self._foreign()] if foreign else [],
        }

    def _foreign(self) -> list[ForeignSession]:
        with self._foreign_lock:
            looked, sessions = self._foreign_cache
            if time.monotonic() - looked > SNAPSHOT_MAX_AGE:
                sessions = self.manager.foreign_sessions()
                self._foreign_cache = (time.monotonic(), sessions)
            return sessions

    # -- what goes out -----------------------------------------------------------------------------

    def changes(self, *, everything: Iterable[str] | None = None) -> tuple[dict[str, InstanceStatus], set[str]]:
        """Return the snapshot and the names whose state records may have to go out, and forget those.

        ``everything``: names to go through besides every instance (a full refresh), instead of only the changed ones.
        """
        with self._lock:
            statuses = dict(self._statuses)
            names = set(statuses) | set(everything) if everything is not None else self._changed
            self._changed = set()
        return statuses, names

    def changed(self, names: Iterable[str]) -> None:
        """Mark ``names`` as to go out again (a record that could not go out now)."""
        with self._lock:
            self._changed |= set(names)

    def all_changed(self) -> None:
        """Mark every instance as to go out again (the broker may have lost the retained records)."""
        with self._lock:
            self._changed |= set(self._statuses)
