"""Crash policy and change detection: what the agent's supervision does, without MQTT.

:class:`Watchdog` restarts crashed bots that should run (backoff, then ``fatal``),
which also brings them back after a reboot, rotates console logs and finds
sessions that lost their record; it reports through a callback. :class:`Probe`
tells cheaply whether a status snapshot went stale. Imports no ``paho``.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import select
import struct
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
    from supervisor.core.registry import Instance

logger = logging.getLogger(__name__)

BACKOFF_BASE = 1.0
BACKOFF_MAX = 60.0
FATAL_AFTER = 5
FAST_FAILURE = 30.0
ROTATE_INTERVAL = 10.0
"""Seconds between two passes that rotate console logs grown past their limit."""
UNSETTLED_RECHECK = 0.25
"""Seconds between looks at a bot whose session is up but whose process is not (coming up, or just gone)."""

_DOWN = (State.CRASHED, State.EXITED)

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
        down = [
            (name, status)
            for name, status in statuses.items()
            if status.state in _DOWN and status.desired == DESIRED_RUNNING and not status.is_running
        ]
        with self._lock:
            for name, failures in list(self._failures.items()):
                status = statuses.get(name)
                if status is None:
                    del self._failures[name]
                elif status.state not in _DOWN or status.desired != DESIRED_RUNNING:
                    failures.next_attempt = None  # up again, or no longer meant to run: no crash at hand
                    if failures.count and status.is_running and now - failures.started_at > self.fast_failure:
                        failures.count = 0
        acted = False
        for name, status in down:
            # Someone holds its lock (a restart's gap, a user's start): not a crash to act on.
            if not self.manager.is_busy(name):
                acted = self._recover(name, status, now) or acted
        self._rotate(statuses)
        return acted

    def next_attempt(self) -> float | None:
        """Return when (on the watchdog's clock) the earliest restart at hand may go, or ``None``."""
        with self._lock:
            return min((f.next_attempt for f in self._failures.values() if f.next_attempt is not None), default=None)

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


class Probe:
    """Tells cheaply whether a status snapshot went stale, so it is derived again only then.

    Per look: one ``stat`` of the registry file, one ``poll`` over a pidfd per
    live bot (Linux 5.3+; ``kill(pid, 0)`` per bot elsewhere), a ``stat`` of the
    console log of each bot not yet ready, and every :data:`UNSETTLED_RECHECK`
    seconds the names of bots whose session is up without a live process.
    Catches a crash, ``kill -9``, a start or stop from the CLI (it writes the
    registry), a ready line and an install finishing. Safe to use from several
    threads; :meth:`close` releases the pidfds.
    """

    def __init__(self, manager: Manager, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.manager = manager
        self._clock = clock
        self._registry: tuple[int, int, int] | None = None
        self._records: Mapping[str, Instance] | None = None
        self._pids: dict[str, tuple[int, int | None]] = {}  # name -> (pid, its pidfd or None: kill-polled)
        self._fd_names: dict[int, str] = {}
        self._poller = select.poll()
        self._logs: dict[str, tuple[str, int]] = {}  # bots coming up: console log and the size it had
        self._unsettled: set[str] = set()  # a session without a live process (just launched or ended), or mid-action
        self._busy: set[str] = set()  # looked down while someone held its lock (a restart's gap, not a crash)
        self._next_unsettled = 0.0
        self._lock = threading.Lock()
        # What wait() blocks on: the pidfds, inotify on the registry's folder, and a pipe that interrupt() writes.
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller.register(self._wake_read, select.POLLIN)
        self._inotify = Inotify.open()
        self._registry_wd: int | None = None
        if self._inotify is not None:
            self._poller.register(self._inotify.fd, select.POLLIN)
            folder = manager.registry_file.parent
            mask = Inotify.CLOSE_WRITE | Inotify.MOVED_TO | Inotify.CREATE | Inotify.DELETE
            self._registry_wd = self._inotify.add(str(folder), mask) if folder.is_dir() else None

    def wait(self, timeout: float) -> None:
        """Block until something may have changed (a watched bot ended, the registry was written) or ``timeout``.

        Without pidfds or inotify, or while a bot comes up, it returns at
        least every :data:`UNSETTLED_RECHECK` seconds, for :meth:`changes` to
        poll. :meth:`interrupt` wakes it at once.
        """
        with self._lock:
            polling = (
                self._registry_wd is None
                or bool(self._logs or self._unsettled)
                or any(fd is None for _pid, fd in self._pids.values())
            )
        deadline = time.monotonic() + (min(timeout, UNSETTLED_RECHECK) if polling else timeout)
        registry_name = self.manager.registry_file.name
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            ready = {fd for fd, _ in self._poller.poll(remaining * 1000)}
            if self._wake_read in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_read, 4096)
                return
            if self._inotify is not None and self._inotify.fd in ready:
                if any(wd == self._registry_wd and name == registry_name for wd, _m, name in self._inotify.read()):
                    return
                ready.discard(self._inotify.fd)
            if ready:
                return  # a pidfd: a bot ended

    def interrupt(self) -> None:
        """Wake :meth:`wait` now."""
        with contextlib.suppress(OSError):  # full (a wake is pending anyway), or closed
            os.write(self._wake_write, b"!")

    def registry_key(self) -> tuple[int, int, int] | None:
        """Return the registry file's identity (inode, size, mtime); every write changes it."""
        try:
            stat = os.stat(self.manager.registry_file)  # noqa: PTH116 - like _size: plain os calls, 4 looks a second
        except OSError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def registry_changed(self) -> bool:
        """Return whether the registry was written since it was last seen (one ``stat``)."""
        with self._lock:
            seen = self._registry
        return self.registry_key() != seen

    def watch_registry(self) -> None:
        """Take the registry as it is now as seen; call it just before a full look."""
        key = self.registry_key()
        try:
            records: Mapping[str, Instance] | None = self.manager.records()
        except SupervisorError:
            records = None  # unreadable: any later version is a change of everything
        with self._lock:
            self._registry, self._records = key, records

    def watch(self, statuses: Iterable[InstanceStatus]) -> None:
        """Take ``statuses`` as the current truth about their instances."""
        for status in statuses:
            name = status.name
            log = None
            if status.state in (State.STARTING, State.WAITING_LOGIN):
                path = str(self.manager.console_log(name))
                log = (path, _size(path))
            busy = status.state in _DOWN and status.desired == DESIRED_RUNNING and self.manager.is_busy(name)
            unsettled = busy or (status.state == State.STARTING and status.pid is None)
            with self._lock:
                self._follow_pid(name, status.pid if status.is_running else None)
                if log is None:
                    self._logs.pop(name, None)
                else:
                    self._logs[name] = log
                for flag, names in ((unsettled, self._unsettled), (busy, self._busy)):
                    if flag:
                        names.add(name)
                    else:
                        names.discard(name)

    def _follow_pid(self, name: str, pid: int | None) -> None:
        followed = self._pids.get(name)
        if followed is not None and followed[0] == pid:
            return
        self._unfollow_pid(name)
        if pid is None:
            return
        try:
            fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            fd = None  # gone already: kill(pid, 0) says so at the next look
        except (OSError, AttributeError):
            fd = None  # no pidfds here (old kernel, other OS, out of descriptors): kill(pid, 0) per look
        if fd is not None:
            self._poller.register(fd, select.POLLIN)
            self._fd_names[fd] = name
            self.interrupt()  # a wait() under way polls the old set: let it start over with this one
        self._pids[name] = (pid, fd)

    def _unfollow_pid(self, name: str) -> None:
        followed = self._pids.pop(name, None)
        if followed is not None and followed[1] is not None:
            self._poller.unregister(followed[1])
            del self._fd_names[followed[1]]
            os.close(followed[1])

    def forget(self, name: str) -> None:
        """Stop watching ``name`` (its record is gone)."""
        with self._lock:
            self._unfollow_pid(name)
            self._logs.pop(name, None)
            self._unsettled.discard(name)
            self._busy.discard(name)

    def close(self) -> None:
        """Stop watching everything and close the descriptors."""
        with self._lock:
            for name in list(self._pids):
                self._unfollow_pid(name)
            if self._inotify is not None:
                self._inotify.close()
                self._inotify = None
                self._registry_wd = None
            if self._wake_write >= 0:
                os.close(self._wake_read)
                os.close(self._wake_write)
                self._wake_read = self._wake_write = -1

    def is_busy(self, name: str) -> bool:
        """Return whether ``name`` looked down while an action held its lock (its state is in flux)."""
        with self._lock:
            return name in self._busy

    def changes(self) -> Change:
        """Return what changed since the statuses given to :meth:`watch` and the registry to :meth:`watch_registry`.

        A new registry version names the instances whose records differ (a CLI
        start, stop, new, rm), so only those are derived again.
        """
        with self._lock:
            registry, before = self._registry, self._records
            names = {self._fd_names[fd] for fd, _ in self._poller.poll(0) if fd in self._fd_names}
            for name in names:  # reported once; until watched again, kill(pid, 0) says it is gone
                pid = self._pids[name][0]
                self._unfollow_pid(name)
                self._pids[name] = (pid, None)
            if self._inotify is not None:
                self._inotify.read()  # drained: the registry's identity is compared below anyway
            polled = [(name, pid) for name, (pid, fd) in self._pids.items() if fd is None]
            logs = list(self._logs.items())
            now = self._clock()
            if now >= self._next_unsettled:
                names |= self._unsettled
                self._next_unsettled = now + UNSETTLED_RECHECK
        names.update(name for name, pid in polled if not pid_alive(pid))
        names.update(name for name, (path, size) in logs if _size(path) != size)
        key = self.registry_key()
        if key != registry:
            try:
                records = self.manager.records()
            except SupervisorError:
                return Change(everything=True)  # the full look reports it
            with self._lock:
                self._registry, self._records = key, records
            if before is None:
                return Change(everything=True)
            names |= {name for name in before.keys() | records.keys() if before.get(name) != records.get(name)}
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


class Inotify:
    """Linux inotify through the C library (no dependency): watch files, read which ones changed.

    :meth:`open` returns ``None`` where inotify is missing; callers then poll with ``stat``.
    """

    MODIFY = 0x002
    CLOSE_WRITE = 0x008
    MOVED_TO = 0x080
    CREATE = 0x100
    DELETE = 0x200
    IGNORED = 0x8000
    _EVENT = struct.Struct("iIII")

    def __init__(self, libc: t.Any, fd: int) -> None:
        self._libc = libc
        self.fd = fd

    @classmethod
    def open(cls) -> Inotify | None:
        """Return a new instance, or ``None`` without inotify."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            return None
        return None if fd < 0 else cls(libc, fd)

    def add(self, path: str, mask: int) -> int | None:
        """Watch ``path`` for the events in ``mask``; return the watch descriptor (``None`` if it cannot be watched)."""
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        return None if wd < 0 else int(wd)

    def remove(self, wd: int) -> None:
        """Stop a watch (no error if the kernel dropped it already)."""
        self._libc.inotify_rm_watch(self.fd, wd)

    def read(self) -> list[tuple[int, int, str]]:
        """Return the pending events as ``(wd, mask, name)`` (``name`` set for a watched folder's entries)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        events = []
        offset = 0
        while offset + self._EVENT.size <= len(data):
            wd, mask, _cookie, length = self._EVENT.unpack_from(data, offset)
            offset += self._EVENT.size
            name = data[offset : offset + length].split(b"\0", 1)[0].decode(errors="replace")
            offset += length
            events.append((wd, mask, name))
        return events

    def close(self) -> None:
        """Close the descriptor (and with it every watch)."""
        os.close(self.fd)
