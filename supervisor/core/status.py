"""Live status: one :class:`Snapshot` per look, and the state derivation as a pure function.

A look lists each backend in use once, reads our sessions' process trees once, and samples
each bot; everything a caller needs afterwards (records, sessions, samples, statuses) is in
the snapshot, so no step of one request asks tmux or ``/proc`` twice.
"""

from __future__ import annotations

import dataclasses
import re
import time
import typing as t

from supervisor.core import readiness
from supervisor.core.registry import DESIRED_RUNNING, DESIRED_STOPPED, INSTALL_FAILED, INSTALLING, Instance
from supervisor.errors import InstanceNotFound, SupervisorError
from supervisor.logfiles import read_chunk
from supervisor.states import ALIVE, State

if t.TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from supervisor.core.metrics import ProcessSample, ProcessTable
    from supervisor.core.parts import Parts
    from supervisor.core.sessions import SessionInfo
    from supervisor.paths import Paths

Listing = dict[str, dict[str, "SessionInfo"]]
"""Sessions by backend name, then by session name."""


@dataclasses.dataclass(frozen=True)
class InstanceStatus:
    """One instance as ``ls`` shows it: record plus live process figures."""

    name: str
    recipe: str
    backend: str
    session: str
    state: str
    desired: str
    pid: int | None
    cpu_percent: float | None
    rss: int | None
    uptime: float | None
    restarts: int
    checkout: str
    repo: str
    ref: str
    commit: str | None
    exit_code: int | None
    plugin: bool
    adopted: bool
    last_error: str | None
    strategy: dict[str, str] | None = None
    """The recorded strategy (``script``/``conf``) the bot is launched with (``start --strategy``, a remote start)."""

    @property
    def is_running(self) -> bool:
        """Whether the bot's process is alive (``running``, or ``starting``/``waiting-login`` with a process)."""
        return self.state in ALIVE and self.pid is not None

    @property
    def is_ready(self) -> bool:
        """Whether the bot is up: its ready line was seen (or, without a ready pattern, its process is alive)."""
        return self.state == State.RUNNING

    def to_dict(self) -> dict[str, t.Any]:
        """Return the ``ls --json`` record (every field is a scalar: a flat copy, not ``asdict``'s deep one)."""
        data = {name: getattr(self, name) for name in _STATUS_FIELDS}
        data["strategy"] = dict(self.strategy) if self.strategy else None
        return data


_STATUS_FIELDS = tuple(f.name for f in dataclasses.fields(InstanceStatus))


@dataclasses.dataclass(frozen=True)
class ExitRecord:
    """What the wrapper wrote when the bot exited."""

    code: int
    when: float


def read_exit_record(paths: Paths, name: str) -> ExitRecord | None:
    """Return the exit record ``run.sh`` left for ``name``, or ``None``."""
    try:
        code, _, when = paths.exit_file(name).read_text().strip().partition(" ")
        return ExitRecord(int(code), float(when or 0))
    except (OSError, ValueError):
        return None


BOT_PID_FILE = "bot.pid"


def bot_pid_file(paths: Paths, name: str) -> Path:
    """Return where ``run.sh`` records the pid of the subshell that runs (or is) the bot."""
    return paths.instance_dir(name) / BOT_PID_FILE


def read_bot_record(paths: Paths, name: str) -> tuple[int, bool] | None:
    """Return what ``run.sh`` recorded of its bot: ``(pid, group)``, or ``None`` when it recorded nothing.

    ``pid`` 0 means the wrapper runs no bot at the moment (not yet, or no more). ``group`` is
    true when the pid is a subshell running a compound command (its oldest child is the bot,
    or the subshell itself once an ``exec`` in the command replaced it).
    ``None`` (no file) is a session launched before wrappers recorded their bot.
    """
    try:
        text = bot_pid_file(paths, name).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return (0, False)
    pid, _, kind = text.strip().partition(" ")
    try:
        return (int(pid), kind == "group")
    except ValueError:
        return (0, False)  # empty (no bot now) or caught while being written


# -- the derivation (pure) -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Facts:
    """What one look found about an instance: everything :func:`derive_state` decides from."""

    lifecycle: str
    """The stored ``lifecycle``: ``installing``, ``install-failed`` or ``installed``."""
    install_running: bool = False
    """The instance's lock is held (asked only while ``lifecycle`` says ``installing``)."""
    alive: bool = False
    """The bot's process is alive."""
    has_session: bool = False
    """Its session exists."""
    adopted: bool = False
    desired: str = DESIRED_STOPPED
    fatal: bool = False
    exit_code: int | None = None
    """The exit code ``run.sh`` recorded for this launch, if any."""
    console: State = State.RUNNING
    """What the console showed since launch (see :func:`console_state`); used while ``alive``."""


def derive_state(facts: Facts) -> State:
    """Return the live state of an instance from what a look found.

    Installing without a lock holder means the install died; a session
    without a live bot that should run is still starting (its wrapper has
    not forked the bot yet); a dead bot that should run is ``exited`` when it
    recorded exit code 0 and ``crashed`` otherwise (no record: its session was
    killed).
    """
    if facts.lifecycle == INSTALLING:
        return State.INSTALLING if facts.install_running else State.INSTALL_FAILED
    if facts.lifecycle == INSTALL_FAILED:
        return State.INSTALL_FAILED
    if facts.alive:
        return facts.console
    if facts.has_session and not facts.adopted and facts.desired == DESIRED_RUNNING:
        return State.STARTING
    if facts.fatal:
        return State.FATAL
    if facts.desired == DESIRED_STOPPED:
        return State.STOPPED
    return State.EXITED if facts.exit_code == 0 else State.CRASHED


def console_state(*, adopted: bool, has_ready_pattern: bool, seen: readiness.Seen | None) -> State:
    """Return ``running``, ``starting`` or ``waiting-login`` for a bot whose process is alive.

    Adopted bots, recipes without a ready pattern, and launches from before
    readiness was tracked (``seen`` is ``None``) are ``running`` as soon as
    their process is.
    """
    if adopted or not has_ready_pattern or seen is None or seen.ready:
        return State.RUNNING
    return State.WAITING_LOGIN if seen.login else State.STARTING


def this_run_exit_code(started_at: float | None, record: ExitRecord | None) -> int | None:
    """Return the recorded exit code if it belongs to the launch at ``started_at`` (a stale one does not)."""
    if record is None or (started_at is not None and record.when < int(started_at)):
        return None
    return record.code


# -- one look ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One look at some instances: their records, the session listings, the process table, the samples.

    ``statuses`` keeps the order asked for (by name when all were asked for).
    """

    taken: float
    """When the look was taken (epoch seconds)."""
    records: dict[str, Instance]
    sessions: Listing
    table: ProcessTable | None
    samples: dict[str, ProcessSample]
    statuses: dict[str, InstanceStatus]

    def __iter__(self) -> t.Iterator[InstanceStatus]:
        return iter(self.statuses.values())

    def __len__(self) -> int:
        return len(self.statuses)

    def status(self, name: str) -> InstanceStatus:
        """Return the status of ``name``.

        Raises
        ------
        InstanceNotFound
            ``name`` was not part of this look.
        """
        try:
            return self.statuses[name]
        except KeyError:
            raise InstanceNotFound(name) from None

    def session(self, name: str) -> SessionInfo | None:
        """Return the session of instance ``name`` as listed, or ``None``."""
        record = self.records[name]
        return self.sessions.get(record.backend, {}).get(record.session)


def take(
    parts: Parts,
    names: Sequence[str] | None = None,
    *,
    records: t.Mapping[str, Instance] | None = None,
    sessions: Listing | None = None,
) -> Snapshot:
    """Take one look at ``names`` (all instances when ``None``).

    One session query per backend in use (unless ``sessions`` is given), one
    read of our sessions' process trees, then a psutil sample per bot.

    Raises
    ------
    InstanceNotFound
        A named instance is not recorded.
    """
    everything = parts.registry.all() if records is None else records
    if names:
        missing = [n for n in names if n not in everything]
        if missing:
            raise InstanceNotFound(missing[0])
        selected = {n: everything[n] for n in dict.fromkeys(names)}
    else:
        selected = {n: everything[n] for n in sorted(everything)}
    if sessions is None:
        sessions = parts.sessions(r.backend for r in selected.values())
    infos = {n: sessions.get(r.backend, {}).get(r.session) for n, r in selected.items()}
    roots = {n: (i.pid if i else None) for n, i in infos.items()}
    table: ProcessTable | None = None
    samples: dict[str, ProcessSample] = {}
    if any(roots.values()):
        # Only our sessions' process trees are read, however busy the host is.
        sampler = parts.sampler
        # Read before the table: a pid recorded then and gone from the table is a bot that just ended.
        bots = {n: read_bot_record(parts.paths, n) for n, r in selected.items() if roots[n] and not r.adopted}
        table = sampler.table(roots=[pid for pid in roots.values() if pid])
        matches = {n: parts.match(r) for n, r in selected.items()}
        samples = sampler.sample_many(roots, table, matches=matches, bots=bots)
    if records is None:
        selected = _with_current_intent(selected, parts.registry.all())
    statuses = {n: describe(parts, r, infos[n], samples.get(n)) for n, r in selected.items()}
    return Snapshot(time.time(), selected, sessions, table, samples, statuses)


def _with_current_intent(selected: dict[str, Instance], now: t.Mapping[str, Instance]) -> dict[str, Instance]:
    """Return ``selected`` with the intent recorded since it was read (``desired``, ``fatal``, ``started_at``).

    A stop or a start records its intent before it acts, so the processes just sampled are judged
    by the intent as it is now: a bot stopped while its sessions were read is never ``starting``.
    A record whose session changed meanwhile is left as it was read.
    """
    current = {}
    for name, record in selected.items():
        fresh = now.get(name)
        if fresh is not None and (fresh.session, fresh.backend) == (record.session, record.backend):
            intent = (fresh.desired, fresh.fatal, fresh.started_at)
            if intent != (record.desired, record.fatal, record.started_at):
                record = dataclasses.replace(
                    record, desired=fresh.desired, fatal=fresh.fatal, started_at=fresh.started_at
                )
        current[name] = record
    return current


def describe(
    parts: Parts, instance: Instance, info: SessionInfo | None, sample: ProcessSample | None
) -> InstanceStatus:
    """Return the status of one instance from its record, its session and its sample."""
    alive = bool(sample and sample.alive)
    installed = instance.lifecycle not in (INSTALLING, INSTALL_FAILED)
    exit_code = None
    if installed and not alive:
        exit_code = this_run_exit_code(instance.started_at, read_exit_record(parts.paths, instance.name))
    facts = Facts(
        lifecycle=instance.lifecycle,
        install_running=instance.lifecycle == INSTALLING and parts.is_locked(instance.name),
        alive=alive,
        has_session=info is not None,
        adopted=instance.adopted,
        desired=instance.desired,
        fatal=instance.fatal,
        exit_code=exit_code,
        console=_console(parts, instance) if installed and alive else State.RUNNING,
    )
    state = derive_state(facts)
    live = sample if alive else None
    uptime = None
    if live is not None and live.create_time:
        uptime = max(0.0, time.time() - live.create_time)
    return InstanceStatus(
        name=instance.name,
        recipe=instance.recipe,
        backend=instance.backend,
        session=instance.session,
        state=state,
        desired=instance.desired,
        pid=live.pid if live else None,
        cpu_percent=live.cpu_percent if live else None,
        rss=live.rss if live else None,
        uptime=uptime,
        restarts=instance.restarts,
        checkout=instance.checkout,
        repo=instance.repo,
        ref=instance.ref,
        commit=parts.commit(instance),
        exit_code=exit_code if state in (State.EXITED, State.CRASHED) else None,
        plugin=parts.plugin(instance),
        adopted=instance.adopted,
        last_error=instance.last_error,
        strategy=dict(instance.strategy) if instance.strategy else None,
    )


def _console(parts: Parts, instance: Instance) -> State:
    """Read the console output since the last look and tell whether the bot is ready (or at its login)."""
    if instance.adopted:
        return State.RUNNING
    try:
        run = parts.recipe_for(instance).run
    except SupervisorError:
        return State.RUNNING
    if not run.ready:
        return State.RUNNING
    log = parts.paths.console_log(instance.name)
    seen = readiness.observe(
        parts.paths.readiness_file(instance.name),
        lambda offset: read_chunk(log, offset),
        re.compile(run.ready),
        re.compile(run.login) if run.login else None,
    )
    return console_state(adopted=False, has_ready_pattern=True, seen=seen)
