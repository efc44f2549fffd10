"""Crash policy and change detection: what the agent's supervision does, without MQTT.

:class:`Watchdog` restarts crashed bots that should run (backoff, then ``fatal``),
which also brings them back after a reboot, rotates console logs and finds
sessions that lost their record; it reports through a callback. :class:`Probe`
tells cheaply whether a status snapshot went stale. Imports no ``paho``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import typing as t

from supervisor.core.registry import DESIRED_RUNNING
from supervisor.errors import SupervisorError
from supervisor.paths import SESSION_PREFIX
from supervisor.states import State

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from supervisor.core.manager import InstanceStatus, Manager

logger = logging.getLogger(__name__)

BACKOFF_BASE = 1.0
BACKOFF_MAX = 60.0
FATAL_AFTER = 5
FAST_FAILURE = 30.0
ROTATE_INTERVAL = 10.0
"""Seconds between two passes that rotate console logs grown past their limit."""
UNSETTLED_RECHECK = 0.25
"""Seconds between looks at a bot whose session is up but whose process is not (coming up, or just gone)."""

Kind = t.Literal["down", "restarted", "fatal", "restart-failed", "orphan"]


@dataclasses.dataclass(frozen=True)
class Incident:
    """One thing the watchdog did or found.

    ``down``: an instance that should run is crashed or exited, reported just
    before it is restarted (so listeners say so first); ``restarted``; ``fatal``:
    it failed too often and was marked so; ``restart-failed``; ``orphan``: a
    session of ours without a record (``name`` is then the session's name
    without its prefix). ``status`` is the instance's status when it happened.
    """

    kind: Kind
    name: str
    message: str
    status: InstanceStatus | None = None


@dataclasses.dataclass
class _Failures:
    """Crash bookkeeping of one instance."""

    count: int = 0
    """Fast failures in a row: crashes within ``fast_failure`` seconds of a restart by the watchdog."""
    started_at: float = 0.0
    """When the watchdog last restarted it (0: never)."""
    next_attempt: float | None = None
    """When the restart for the crash at hand may go (``None``: no crash at hand)."""


class Watchdog:
    """Restarts crashed bots with backoff and marks repeat offenders ``fatal``.

    Parameters
    ----------
    manager
        The core it acts through (``restart_crashed``, ``mark``, ``orphan_sessions``).
    fatal_after, fast_failure
        ``fatal_after`` failures in a row, each within ``fast_failure`` seconds
        of its start, mark an instance ``fatal``.
    backoff_base, backoff_max
        A crash is restarted ``backoff_base`` seconds after it was seen, doubled
        for each fast failure before it, at most ``backoff_max`` seconds.
    report
        Called with each :class:`Incident`, in order, on the thread that called :meth:`check`.
    """

    def __init__(
        self,
        manager: Manager,
        *,
        fatal_after: int = FATAL_AFTER,
        fast_failure: float = FAST_FAILURE,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        rotate_interval: float = ROTATE_INTERVAL,
        report: Callable[[Incident], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manager = manager
        self.fatal_after = fatal_after
        self.fast_failure = fast_failure
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.rotate_interval = rotate_interval
        self._report = report or (lambda _incident: None)
        self._clock = clock
        self._failures: dict[str, _Failures] = {}
        self._lock = threading.Lock()
        self._next_rotation = 0.0
        self._orphans: set[str] = set()

    def check(self, statuses: Mapping[str, InstanceStatus]) -> bool:
        """Act on one snapshot: restart what should run and is down once its backoff ran out; return whether it acted.

        Acting (a restart, a ``fatal`` mark) changes the host: the caller's snapshot is stale then.
        Cheap when nothing is down: no I/O but a console-log rotation pass every ``rotate_interval``.
        """
        now = self._clock()
        down = []
        with self._lock:
            for name, status in statuses.items():
                failures = self._failures.get(name)
                if status.desired == DESIRED_RUNNING and status.state in (State.CRASHED, State.EXITED):
                    if not status.is_running:
                        down.append((name, status))
                elif failures is not None:
                    failures.next_attempt = None  # up again, or no longer meant to run: no crash at hand
                    if failures.count and status.is_running and now - failures.started_at > self.fast_failure:
                        failures.count = 0
            for gone in set(self._failures) - set(statuses):
                del self._failures[gone]
        acted = False
        for name, status in down:
            # Someone holds its lock (a restart's gap, a user's start): not a crash to act on.
            if not self.manager.is_busy(name):
                acted = self._recover(name, status, now) or acted
        self._rotate(statuses)
        return acted

    def forget(self, name: str) -> None:
        """Start ``name``'s failure count over (a person started, stopped or restarted it)."""
        with self._lock:
            self._failures.pop(name, None)

    def failures(self, name: str) -> int:
        """Return how many fast failures in a row ``name`` has on record."""
        with self._lock:
            failures = self._failures.get(name)
            return failures.count if failures else 0

    def find_orphans(self) -> list[str]:
        """Report (once each) our sessions that lost their record; return them all.

        Nothing supervises such a session: the registry was deleted or restored.
        """
        try:
            orphans = set(self.manager.orphan_sessions())
        except SupervisorError as e:
            logger.warning("could not look for sessions without a record: %s", e)
            return sorted(self._orphans)
        for session in sorted(orphans - self._orphans):
            message = (
                f"session '{session}' runs without a record, so nothing supervises it (registry deleted?). "
                f"Take it back with 'supervisor adopt {session} --name NAME -r RECIPE'."
            )
            logger.warning("%s", message)
            self._report(Incident("orphan", session.removeprefix(SESSION_PREFIX), message))
        self._orphans = orphans
        return sorted(orphans)

    def _recover(self, name: str, status: InstanceStatus, now: float) -> bool:
        with self._lock:
            failures = self._failures.setdefault(name, _Failures())
            seen = failures.next_attempt is None  # a crash seen for the first time
            if seen:
                if failures.started_at:  # it died after a restart of ours
                    failures.count = 0 if now - failures.started_at > self.fast_failure else failures.count + 1
                delay = min(self.backoff_max, self.backoff_base * (2**failures.count))
                failures.next_attempt = now + delay
            fatal = seen and failures.count >= self.fatal_after
            if fatal:
                count = failures.count
                self._failures.pop(name, None)
            due = not fatal and now >= t.cast("float", failures.next_attempt)
            attempt = failures.count + 1
        if fatal:
            message = (
                f"instance '{name}' failed {count} times in a row (last exit code {status.exit_code}); "
                f"marked fatal. Fix it and run 'supervisor start {name}'."
            )
            logger.error("%s", message)
            try:
                self.manager.mark(name, fatal=True, last_error=message)
            except SupervisorError as e:
                logger.warning("could not mark %s fatal: %s", name, e)
                return False
            self._report(Incident("fatal", name, message, status))
            return True
        if seen:
            logger.warning(
                "instance %s is %s (exit code %s) but should run: starting it in %gs (attempt %d)",
                name,
                status.state,
                status.exit_code,
                delay,
                attempt,
            )
            # Listeners hear that the bot went away (and the crash is on record) before they hear it came back.
            self._report(Incident("down", name, f"instance '{name}' is {status.state}; restarting it.", status))
        if not due:
            return False
        with self._lock:
            failures.started_at = now
            failures.next_attempt = None
        try:
            result = self.manager.restart_crashed(name)
        except SupervisorError as e:
            logger.warning("restarting %s failed: %s", name, e)
            self._report(Incident("restart-failed", name, f"restarting '{name}' failed: {e}", status))
            return True
        if not result.changed:
            # Someone else (a restart, a user's stop) got there first: not a failure of the bot.
            self.forget(name)
            return True
        message = f"instance '{name}' was {status.state}; restarted it (restart #{attempt})."
        self._report(Incident("restarted", name, message, result.status))
        return True

    def _rotate(self, statuses: Mapping[str, InstanceStatus]) -> None:
        """Rotate console logs past their size limit, at most once per ``rotate_interval``."""
        now = time.monotonic()
        if now < self._next_rotation:
            return
        self._next_rotation = now + self.rotate_interval
        for name in statuses:
            self._rotate_one(name)

    def _rotate_one(self, name: str) -> None:
        try:
            self.manager.rotate_log(name)
        except (SupervisorError, OSError) as e:
            logger.debug("not rotating %s's console log: %s", name, e)


@dataclasses.dataclass(frozen=True)
class Change:
    """What :meth:`Probe.changes` found: everything may have changed, or these instances."""

    everything: bool = False
    names: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return self.everything or bool(self.names)


@dataclasses.dataclass
class _Watch:
    pid: int | None
    log: tuple[str, int] | None  # a bot coming up: its console log, and the size it had
    unsettled: bool  # a session without a live process (just launched, or just ended), or mid-action
    busy: bool  # looked down while someone held its lock (a restart's gap, not a crash)


class Probe:
    """Tells cheaply whether a status snapshot went stale, so it is derived again only then.

    Per look: one ``stat`` of the registry file, a ``kill(pid, 0)`` per live bot,
    a ``stat`` of the console log of each bot not yet ready; and every
    :data:`UNSETTLED_RECHECK` seconds, the names of bots whose session is up
    without a live process. Catches a crash, ``kill -9``, a start or stop from
    the CLI (it writes the registry), a ready line and an install finishing.
    Safe to use from several threads.
    """

    def __init__(self, manager: Manager, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.manager = manager
        self._clock = clock
        self._registry: tuple[int, int, int] | None = None
        self._watches: dict[str, _Watch] = {}
        self._next_unsettled = 0.0
        self._lock = threading.Lock()

    def registry_key(self) -> tuple[int, int, int] | None:
        """Return the registry file's identity (inode, size, mtime); every write changes it."""
        try:
            stat = os.stat(self.manager.registry_file)  # noqa: PTH116 - like _size: plain os calls, 4 looks a second
        except OSError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def watch_registry(self, key: tuple[int, int, int] | None) -> None:
        """Take ``key`` as the registry's identity of the last full look (take it before that look)."""
        with self._lock:
            self._registry = key

    def watch(self, statuses: Iterable[InstanceStatus]) -> None:
        """Take ``statuses`` as the current truth about their instances."""
        watches = {}
        for status in statuses:
            log = None
            if status.state in (State.STARTING, State.WAITING_LOGIN):
                path = str(self.manager.console_log(status.name))
                log = (path, _size(path))
            busy = (
                status.state in (State.CRASHED, State.EXITED)
                and status.desired == DESIRED_RUNNING
                and self.manager.is_busy(status.name)
            )
            unsettled = busy or (status.state == State.STARTING and status.pid is None)
            watches[status.name] = _Watch(status.pid if status.is_running else None, log, unsettled, busy)
        with self._lock:
            self._watches.update(watches)

    def forget(self, name: str) -> None:
        """Stop watching ``name`` (its record is gone)."""
        with self._lock:
            self._watches.pop(name, None)

    def is_busy(self, name: str) -> bool:
        """Return whether ``name`` looked down while an action held its lock (its state is in flux)."""
        with self._lock:
            watch = self._watches.get(name)
        return watch is not None and watch.busy

    def changes(self) -> Change:
        """Return what changed since the statuses given to :meth:`watch`."""
        with self._lock:
            registry = self._registry
            watches = list(self._watches.items())
        if self.registry_key() != registry:
            return Change(everything=True)
        names = set()
        now = self._clock()
        unsettled_due = now >= self._next_unsettled
        for name, watch in watches:
            stale = (
                (watch.pid is not None and not pid_alive(watch.pid))
                or (watch.log is not None and _size(watch.log[0]) != watch.log[1])
                or (watch.unsettled and unsettled_due)
            )
            if stale:
                names.add(name)
        if unsettled_due:
            self._next_unsettled = now + UNSETTLED_RECHECK
        return Change(names=frozenset(names))


def pid_alive(pid: int) -> bool:
    """Return whether process ``pid`` exists (one ``kill(pid, 0)``; a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process (a reused pid): the next full look sorts it out
    return True


def _size(path: str) -> int:
    try:
        # A str path and os.stat: no Path object per bot and look (four looks a second).
        return os.stat(path).st_size  # noqa: PTH116 - see the comment above
    except OSError:
        return -1
