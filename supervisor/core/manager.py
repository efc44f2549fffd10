"""The core both front ends (CLI and agent) call; returns result objects, never prints.

A facade over the core's jobs: :mod:`~supervisor.core.status` (one snapshot per look),
:mod:`~supervisor.core.launch` (start, readiness, stop), :mod:`~supervisor.core.adopt`
(foreign and orphan sessions), :mod:`~supervisor.core.lifecycle` (new, install, update with
rollback, remove). Must not import click or paho.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import typing as t
from pathlib import Path

from supervisor.consoletext import check_console_text, parse_key
from supervisor.core import console, secrets
from supervisor.core import status as live
from supervisor.core.console import Typed
from supervisor.core.parts import Parts, session_name
from supervisor.core.recipe import Recipe, list_recipes, load_recipe, render
from supervisor.core.registry import DESIRED_RUNNING, Instance, Registry
from supervisor.core.sessions import SessionBackend, SessionInfo
from supervisor.core.status import ExitRecord, InstanceStatus, Snapshot
from supervisor.errors import (
    InstanceError,
    InstanceNotFound,
    InstanceNotReady,
    InstanceNotRunning,
    SessionError,
    SupervisorError,
)
from supervisor.logfiles import clean_console, last_lines, rotate_log
from supervisor.paths import Paths
from supervisor.states import ALIVE, State

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from supervisor.core import metrics
    from supervisor.core.adopt import ForeignSession
    from supervisor.core.disk import DiskUsage, SharedItem
    from supervisor.core.git import ProgressFn
    from supervisor.core.launch import DEFAULT_STOP_TIMEOUT, ActionResult, check_file_name, check_strategy, strip_exec
    from supervisor.core.steps import LineFn

__all__ = [
    "ALIVE_STATES",
    "CRASHED",
    "DEFAULT_STOP_TIMEOUT",
    "EXITED",
    "FATAL",
    "RUNNING",
    "STARTING",
    "STOPPED",
    "WAITING_LOGIN",
    "ActionResult",
    "ExitRecord",
    "ForeignSession",
    "InstanceStatus",
    "Manager",
    "RecipeInfo",
    "Snapshot",
    "check_file_name",
    "check_strategy",
    "session_name",
    "strip_exec",
]

logger = logging.getLogger(__name__)

# Live states, derived at every look (never stored).
RUNNING = State.RUNNING
STARTING = State.STARTING
WAITING_LOGIN = State.WAITING_LOGIN
ALIVE_STATES = tuple(ALIVE)
STOPPED = State.STOPPED
EXITED = State.EXITED
CRASHED = State.CRASHED
FATAL = State.FATAL

_LAZY = {
    "ActionResult": "supervisor.core.launch",
    "DEFAULT_STOP_TIMEOUT": "supervisor.core.launch",
    "check_file_name": "supervisor.core.launch",
    "check_strategy": "supervisor.core.launch",
    "strip_exec": "supervisor.core.launch",
    "ForeignSession": "supervisor.core.adopt",
}


def __getattr__(name: str) -> t.Any:
    """Hand out what launch and adopt define, importing them only then (a plain ``ls`` needs neither)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


@dataclasses.dataclass(frozen=True)
class RecipeInfo:
    """A recipe as ``supervisor recipes`` lists it."""

    name: str
    description: str
    source: str
    path: str
    builtin: bool
    plugin: bool
    settable: list[str]

    def to_dict(self) -> dict[str, t.Any]:
        """Return the record as a JSON-able dict."""
        return dataclasses.asdict(self)


class Manager:
    """Install, start, stop, list and talk to instances."""

    def __init__(
        self,
        paths: Paths,
        registry: Registry | None = None,
        backends: t.Mapping[str, SessionBackend] | None = None,
        sampler: metrics.Sampler | None = None,
        extra_recipes: Sequence[Path] = (),
    ) -> None:
        self._parts = Parts(paths, registry, backends, sampler, extra_recipes)
        self.paths = paths
        self.registry = self._parts.registry
        self.extra_recipes = self._parts.extra_recipes

    # -- collaborators and settings ----------------------------------------------------------

    @property
    def sampler(self) -> metrics.Sampler:
        """The process sampler; one per Manager, so a long-lived one reports CPU as deltas."""
        return self._parts.sampler

    @property
    def session_cache_ttl(self) -> float:
        """Seconds a session listing may be reused (0: every look asks the backend); see :meth:`use_caches`."""
        return self._parts.session_cache_ttl

    @property
    def commit_cache_ttl(self) -> float:
        """Seconds a checkout's HEAD commit may be reused (0: read at every look); see :meth:`use_caches`."""
        return self._parts.commit_cache_ttl

    def use_caches(self, *, sessions: float = 0.0, commits: float = 0.0) -> None:
        """Let looks reuse a session listing for ``sessions`` seconds and a HEAD commit for ``commits``.

        For a long-lived caller (the agent); every action that starts or ends a
        session drops the listing, and an update drops the commit.
        """
        self._parts.session_cache_ttl = sessions
        self._parts.commit_cache_ttl = commits

    def backend(self, name: str) -> SessionBackend:
        """Return the session backend called ``name``."""
        return self._parts.backend(name)

    def recipe_for(self, instance: Instance) -> Recipe:
        """Return the recipe an instance was created from (cached while its file is unchanged)."""
        return self._parts.recipe_for(instance)

    def recipes(self) -> list[RecipeInfo]:
        """Return every known recipe: built-in, the user's, and any given with ``-r PATH``."""
        found = list_recipes(self.paths.user_recipes)
        names = {r.name for r in found}
        for path in self.extra_recipes:
            recipe = load_recipe(path)
            if recipe.name not in names:
                found.append(recipe)
        return [
            RecipeInfo(
                name=r.name,
                description=r.description,
                source=r.source.repo,
                path=str(r.path),
                builtin=r.builtin,
                plugin=r.mqtt.plugin,
                settable=r.settable(),
            )
            for r in found
        ]

    # -- records (what the agent and the CLI read without reaching into the registry) ----------

    def names(self) -> list[str]:
        """Return the names of every recorded instance, sorted."""
        return sorted(self.registry.all())

    def has(self, name: str) -> bool:
        """Return whether an instance called ``name`` is recorded."""
        return name in self.registry.all()

    def record(self, name: str) -> Instance:
        """Return the stored record of ``name``.

        Raises
        ------
        InstanceNotFound
        """
        return self.registry.get(name)

    def records(self) -> dict[str, Instance]:
        """Return every stored record by name."""
        return self.registry.all()

    def recipe(self, name: str) -> Recipe:
        """Return the recipe of instance ``name``.

        Raises
        ------
        InstanceNotFound, RecipeError
        """
        return self.recipe_for(self.registry.get(name))

    def ready_timeout(self, name: str, default: float = 60.0) -> float:
        """Return how long ``name``'s bot may take to print its ready line (``default`` if unknown)."""
        try:
            return self.recipe(name).run.ready_timeout
        except SupervisorError:
            return default

    def console_log(self, name: str) -> Path:
        """Return where the console log of ``name`` is (it may not exist yet); no check, no rotation."""
        return self.paths.console_log(name)

    def rotate_log(self, name: str) -> None:
        """Rotate the console log of ``name`` if it grew too large."""
        rotate_log(self.paths.console_log(name))

    def is_busy(self, name: str) -> bool:
        """Return whether someone holds ``name``'s lock: an install, start, stop or restart is under way."""
        return self._parts.is_locked(name)

    @property
    def audit_log(self) -> Path:
        """Where the agent appends its audit records."""
        return self.paths.audit_log

    @property
    def registry_file(self) -> Path:
        """The registry's file: watch it to hear of any record change."""
        return self.paths.registry

    def exit_file(self, name: str) -> Path:
        """Return the file ``run.sh`` writes when ``name``'s bot exits: watch it to hear of the exit at once."""
        return self.paths.exit_file(name)

    def mark(self, name: str, **changes: t.Any) -> Instance:
        """Change stored fields of an instance (the agent records restarts and ``fatal``)."""
        return self.registry.update(name, **changes)

    # -- private names a few tests use ----------------------------------------------------------

    def _exit_record(self, name: str) -> ExitRecord | None:
        return live.read_exit_record(self.paths, name)

    def _write_run_script(self, instance: Instance, recipe: Recipe) -> Path:
        from supervisor.core import launch

        return launch.write_run_script(self._parts, instance, recipe)

    # -- install, update, remove (supervisor.core.lifecycle) ------------------------------------

    def new(
        self,
        name: str,
        recipe_ref: str,
        *,
        repo: str | None = None,
        ref: str | None = None,
        backend: str = "tmux",
        directory: Path | None = None,
        install: bool = True,
        settings: Sequence[str] = (),
        secret_values: t.Mapping[str, bytes] | None = None,
        progress: ProgressFn | None = None,
        on_line: LineFn | None = None,
    ) -> InstanceStatus:
        """Clone a checkout for a new instance, store its secrets, install it, and record it.

        Raises
        ------
        InvalidName, RecipeError, InstanceExists
            Before anything touches disk.
        InstallError
            Clone failures leave nothing behind; install-step failures leave the
            instance recorded as ``install-failed``.
        """
        from supervisor.core import lifecycle

        lifecycle.new(
            self._parts,
            name,
            recipe_ref,
            repo=repo,
            ref=ref,
            backend=backend,
            directory=directory,
            install=install,
            settings=settings,
            secret_values=secret_values,
            progress=progress,
            on_line=on_line,
        )
        return self.status([name])[0]

    def set_secret(self, name: str, key: str, value: bytes) -> Path:
        """Store one of the instance's secrets (mode 600, written atomically); the bot sees it at its next start.

        Raises
        ------
        InstanceNotFound, SecretError
            Unknown instance, a key the recipe does not use, or an unusable value.
        """
        from supervisor.core import lifecycle

        return lifecycle.set_secret(self._parts, name, key, value)

    def remove_secret(self, name: str, key: str) -> bool:
        """Delete one of the instance's secrets; return whether it existed."""
        from supervisor.core import lifecycle

        return lifecycle.remove_secret(self._parts, name, key)

    def secret_info(self, name: str) -> list[secrets.SecretInfo]:
        """Return the secrets the instance's recipe uses or it stores: keys and whether set, never values."""
        record = self.registry.get(name)
        return secrets.describe(self.paths, name, self.recipe_for(record))

    # -- disk -------------------------------------------------------------------

    def disk_usage(self, names: Sequence[str]) -> dict[str, DiskUsage]:
        """Return the disk each instance holds (its checkout and folder; a slow walk of every file).

        Raises
        ------
        InstanceNotFound
        """
        from supervisor.core import disk

        return {name: disk.instance_usage(self._parts, self.registry.get(name)) for name in names}

    def unused_shared(self) -> list[SharedItem]:
        """Return the shared venvs, build cache entries and git mirrors no instance uses.

        Raises
        ------
        SupervisorError
            An install is under way.
        """
        from supervisor.core import disk

        return disk.find_unused(self._parts)

    def remove_shared(self, items: Sequence[SharedItem]) -> int:
        """Delete shared things :meth:`unused_shared` returned; return the bytes freed."""
        from supervisor.core import disk

        return disk.remove(items)

    def install(self, name: str, *, on_line: LineFn | None = None) -> InstanceStatus:
        """Run the recipe's install steps again (after a failure, or to rebuild).

        Raises
        ------
        InstanceRunning
            The bot is running; stop it first.
        InstallError
            A step failed; the instance is left ``install-failed``.
        """
        from supervisor.core import lifecycle

        lifecycle.install(self._parts, name, on_line=on_line)
        return self.status([name])[0]

    def update(
        self,
        name: str,
        *,
        ref: str | None = None,
        progress: ProgressFn | None = None,
        on_line: LineFn | None = None,
        stop_timeout: float | None = None,
    ) -> InstanceStatus:
        """Fetch and resolve ``ref``; if it is new, stop, check it out, reinstall, and start again if it was running.

        Nothing is stopped until the ref is known to exist and differ from
        what is checked out. The bot's config files (``mqtt.config`` and
        ``config_files``) are copied aside first. If the install fails, or the
        new commit does not reach ready when started, the previous commit and
        the copied config are put back, reinstalled, and started if the bot
        was running; the error is raised.

        Raises
        ------
        InstallError
            The ref is unknown, the work tree is dirty, or the install failed
            (rolled back).
        UpdateRolledBack
            The new commit installed but did not come up; the old one runs again.
        """
        from supervisor.core import lifecycle

        lifecycle.update(self._parts, name, ref=ref, progress=progress, on_line=on_line, stop_timeout=stop_timeout)
        return self.status([name])[0]

    def remove(self, name: str, *, purge: bool = False, force: bool = False) -> Instance:
        """Forget an instance; with ``purge`` also delete its checkout and logs.

        Raises
        ------
        InstanceRunning
            The bot is running and ``force`` is not set.
        """
        from supervisor.core import lifecycle

        return lifecycle.remove(self._parts, name, purge=purge, force=force)

    # -- live state ---------------------------------------------------------------

    def snapshot(self, names: Sequence[str] | None = None) -> Snapshot:
        """Take one look at ``names`` (all instances when ``None``): records, sessions, processes, statuses.

        One session query per backend in use, one read of our sessions'
        process trees, then a psutil sample per bot: no subprocess per instance.

        Raises
        ------
        InstanceNotFound
            A named instance is not recorded.
        """
        return live.take(self._parts, names)

    def status(
        self, names: Sequence[str] | None = None, *, sessions: dict[str, dict[str, SessionInfo]] | None = None
    ) -> list[InstanceStatus]:
        """Return the live status of ``names`` (all instances when ``None``), from one :meth:`snapshot`.

        Raises
        ------
        InstanceNotFound
            A named instance is not recorded.
        """
        return list(live.take(self._parts, names, sessions=sessions))

    def _live_status(self, record: Instance) -> InstanceStatus:
        return live.take(self._parts, [record.name], records={record.name: record}).status(record.name)

    def _session_backend(self, record: Instance) -> SessionBackend:
        """Return the backend holding the record's session; raise if there is no session to use."""
        if not self._parts.session_exists(record):
            raise InstanceNotRunning(record.name, self._live_status(record).state)
        return self.backend(record.backend)

    def forget_sessions(self) -> None:
        """Drop cached session listings (after anything that starts or ends a session)."""
        self._parts.forget_sessions()

    def resolve(self, names: Sequence[str], *, all_instances: bool = False) -> list[str]:
        """Return the instance names an action applies to (all of them with ``all_instances``)."""
        if all_instances:
            return sorted(self.registry.all())
        if not names:
            msg = "no instance named. Give one or more NAMEs, or --all."
            raise SupervisorError(msg)
        records = self.registry.all()
        for name in names:
            if name not in records:
                raise InstanceNotFound(name)
        return list(dict.fromkeys(names))

    # -- start / stop ---------------------------------------------------------------------------

    def start(
        self,
        names: Sequence[str],
        *,
        wait: bool = True,
        strategy: t.Mapping[str, str | None] | None = None,
    ) -> list[ActionResult]:
        """Start each instance in its session; a running one is left alone.

        All sessions are launched first (tmux: one command line for many),
        then one loop waits for all of them. With ``wait`` it waits for each
        bot's readiness pattern, so starting 100 bots costs about as much as
        the slowest of them; without it, only until each bot's process is
        alive (the bot is ``starting`` until its ready line shows). With
        several names, a bot that fails to come up is reported in its result
        (``ok`` false); with one name, it raises.

        ``strategy`` (``script``/``conf``) launches the bot with that strategy
        through the recipe's ``run.strategy_args``, and is recorded so a crash
        restart runs it again; without it the bot starts with none.

        Raises
        ------
        InstanceNotFound, InstanceError, SessionError, ReadyTimeout
        """
        from supervisor.core import launch

        return launch.start_many(self._parts, names, wait=wait, strategy=launch.check_strategy(strategy or {}))

    def check_takes_strategy(self, names: Sequence[str]) -> None:
        """Refuse a strategy for an instance whose recipe has no ``run.strategy_args`` (it would be dropped).

        Raises
        ------
        InstanceNotFound, InstanceError
        """
        for name in names:
            record = self.registry.get(name)
            recipe = self._parts.recipe_for(record)
            if not recipe.run.strategy_args:
                msg = (
                    f"instance '{name}': recipe '{recipe.name}' has no run.strategy_args, so it cannot be launched "
                    "with a strategy. Start it without one, or add run.strategy_args to the recipe."
                )
                raise InstanceError(msg)

    def _start_one(
        self,
        name: str,
        *,
        count_restart: bool = False,
        only_if_wanted: bool = False,
        strategy: dict[str, str] | None = None,
    ) -> ActionResult:
        from supervisor.core import launch

        # Restarts (crash or user) launch the bot with the strategy it was last given, unless told another.
        return launch.start_many(
            self._parts, [name], count_restart=count_restart, only_if_wanted=only_if_wanted, strategy=strategy
        )[0]

    def stop(self, names: Sequence[str], *, timeout: float | None = None) -> list[ActionResult]:
        """Stop each instance gracefully: console quit lines (or the recipe's ``run.stop``), then SIGTERM, then SIGKILL.

        ``timeout`` is the grace before SIGTERM; ``None`` means the recipe's
        ``run.stop.grace``, or 30 s after console quit lines.

        The user's intent is recorded first (``desired = stopped``), so the
        agent never restarts a bot the user stopped.

        Raises
        ------
        InstanceNotFound, SessionError
        """
        from supervisor.core import launch

        names = list(dict.fromkeys(names))
        if len(names) <= 1:
            return [launch.stop_one(self._parts, name, timeout=timeout) for name in names]
        import concurrent.futures

        # Each stop mostly waits (quit delays, the bot shutting down): do them side by side.
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
            futures = [pool.submit(launch.stop_one, self._parts, name, timeout=timeout) for name in names]
            return [future.result() for future in futures]

    def restart(
        self,
        names: Sequence[str],
        *,
        timeout: float | None = None,
        strategy: t.Mapping[str, str | None] | None = None,
    ) -> list[ActionResult]:
        """Stop then start each instance, counting the restart.

        The bot comes back with the strategy it was last launched with, or with
        ``strategy`` (``script``/``conf``) when given, which is then recorded.

        Raises
        ------
        InstanceNotFound, InstanceError, SessionError, ReadyTimeout
        """
        from supervisor.core import launch

        checked = launch.check_strategy(strategy) if strategy else None
        results = []
        for name in names:
            # One lock across both halves: the agent never sees the gap as a crash.
            with self._parts.instance_lock(name, wait=60):
                stopped = launch.stop_one(self._parts, name, timeout=timeout, desired=DESIRED_RUNNING)
                started = self._start_one(name, count_restart=True, strategy=checked)
            how = f" (stopped: {stopped.step})" if stopped.changed else ""
            results.append(
                launch.ActionResult(
                    name, "restart", True, f"restarted '{name}'{how}.", step=stopped.step, status=started.status
                )
            )
        return results

    def restart_crashed(self, name: str) -> ActionResult:
        """Start an instance the agent found dead while it should run, counting the restart."""
        return self._start_one(name, count_restart=True, only_if_wanted=True)

    # -- console ----------------------------------------------------------------

    def _running_record(self, name: str) -> tuple[Instance, InstanceStatus]:
        record = self.registry.get(name)
        status = self._live_status(record)
        if not status.is_running:
            raise InstanceNotRunning(name, status.state)
        return record, status

    def send(self, name: str, text: str) -> None:
        """Type one line into the bot's console, literally, then Enter.

        It waits while another process types a command and reads its answer.

        Raises
        ------
        InstanceNotRunning
            The bot is not running.
        UnsafeConsoleText
            ``text`` holds a control character (line breaks, Ctrl keys, ESC...).
        """
        check_console_text(text, what=f"instance '{name}': the text to send")
        record, _ = self._running_record(name)
        self._type(record, text, capture=False)

    def send_keys(self, name: str, keys: Sequence[str]) -> None:
        """Press ``keys`` (names such as ``C-c``, ``Enter``, ``Escape``, ``Up``) in the bot's console.

        Raises
        ------
        InstanceNotRunning
            The bot is not running.
        SessionError
            A key name is not known (nothing is pressed then).
        """
        names = [parse_key(key) for key in keys]
        if not names:
            msg = f"instance '{name}': no key named. Give key names such as C-c, Enter, Escape or Up."
            raise SessionError(msg)
        record, _ = self._running_record(name)
        self.backend(record.backend).send_keys(record.session, names)

    def tail(self, name: str, lines: int = 50) -> str:
        """Return the bot's current screen (last ``lines`` lines).

        Raises
        ------
        InstanceNotRunning
            There is no session to read.
        """
        record = self.registry.get(name)
        return self._session_backend(record).capture(record.session, lines)

    def log_path(self, name: str) -> Path:
        """Return the console log file of an instance (after rotating it if it grew too large)."""
        self.registry.get(name)
        path = self.paths.console_log(name)
        rotate_log(path)
        return path

    def bot_log_path(self, name: str) -> Path | None:
        """Return the newest of the bot's own log files (the recipe's ``log_files``), or ``None``.

        Raises
        ------
        InstanceNotFound
        """
        record = self.registry.get(name)
        checkout = Path(record.checkout)
        found: list[tuple[float, Path]] = []
        for pattern in self.recipe_for(record).log_files:
            for path in checkout.glob(pattern):
                with contextlib.suppress(OSError):
                    if path.is_file():
                        found.append((path.stat().st_mtime, path))
        return max(found)[1] if found else None

    def log_lines(self, name: str, lines: int = 50) -> str:
        """Return the last ``lines`` lines of the bot's console log, terminal escapes removed ("" before any output)."""
        path = self.log_path(name)
        if not path.exists():
            return ""
        return "\n".join(clean_console(line) for line in last_lines(path, lines))

    def attach_command(self, name: str) -> tuple[list[str], dict[str, str] | None]:
        """Return the argv that attaches the terminal to the bot's session."""
        record = self.registry.get(name)
        return self._session_backend(record).attach_command(record.session)

    def attach(self, name: str) -> t.NoReturn:
        """Replace this process with the multiplexer's attach command for ``name``."""
        from supervisor import _proc

        argv, env = self.attach_command(name)
        _proc.exec_replace(argv, env)

    def console_line(self, name: str, command: str, values: t.Mapping[str, t.Any]) -> str:
        """Render the recipe's console line for a bot-level ``command`` (e.g. ``start --script x.py``).

        Raises
        ------
        InstanceError
            The recipe has no console equivalent for ``command``.
        UnsafeConsoleText
            A value (named in the message) or the whole line holds a control character.
        """
        recipe = self.recipe_for(self.registry.get(name))
        template = recipe.console.commands.get(command)
        if template is None:
            msg = f"instance '{name}': recipe '{recipe.name}' has no console command for '{command}'."
            raise InstanceError(msg)
        rendered = {k: "" if v is None else str(v) for k, v in values.items()}
        for key, value in rendered.items():
            check_console_text(value, what=f"instance '{name}': field '{key}'")
        line = render(template, rendered, optional_groups=True).strip()
        return check_console_text(line, what=f"instance '{name}': the console line for '{command}'")

    def relay(self, name: str, command: str, values: t.Mapping[str, t.Any], *, capture: bool = False) -> Typed:
        """Type the console line for ``command`` and return what the bot printed after it (if ``capture``).

        The console is held (across processes) from typing to the end of the
        answer, and a line typed before must have been answered first, so no
        other command's output mixes in. The answer ends when the recipe's
        ``answer.end`` (or its prompt) shows again, at the latest after
        ``reply_wait`` seconds (``complete`` then says it did not).

        Raises
        ------
        ConsoleBusy
            The bot has not answered a line typed before within ``reply_wait``.
        """
        line = self.console_line(name, command, values)
        record, status = self._running_record(name)
        if not status.is_ready:
            # A bot command typed into a login dialog would be taken as the password.
            raise InstanceNotReady(name, status.state)
        typed = self._type(record, line, capture=capture)
        return dataclasses.replace(typed, text=clean_console(typed.text, echo=line))

    def _type(self, record: Instance, line: str, *, capture: bool) -> Typed:
        return console.type_line(
            record.name,
            line,
            lambda: self.backend(record.backend).send_line(record.session, line),
            log=self.paths.console_log(record.name),
            lock=self.paths.console_lock(record.name),
            pending_file=self.paths.console_pending(record.name),
            console=self.recipe_for(record).console,
            capture=capture,
        )

    # -- adoption -------------------------------------------------------------------------------

    def foreign_sessions(self) -> list[ForeignSession]:
        """Return sessions without a record: others' that run something a recipe recognises, and our orphans."""
        from supervisor.core import adopt

        return adopt.foreign_sessions(self._parts)

    def orphan_sessions(self) -> list[str]:
        """Return our ``sup-`` sessions (tmux and screen) that no record names: one listing per backend."""
        from supervisor.core import adopt

        return adopt.orphan_sessions(self._parts)

    def adopt(self, session: str, name: str, recipe_ref: str | None = None) -> InstanceStatus:
        """Record a bot running in someone else's session as an instance, without touching it.

        An orphan (a ``sup-`` session of ours whose record is gone) is recorded
        as an ordinary instance again, since it runs our own wrapper.

        Raises
        ------
        SessionError
            No such session among :meth:`foreign_sessions`, or it is on a
            tmux server other than ours (it cannot be addressed later).
        """
        from supervisor.core import adopt

        adopt.adopt(self._parts, session, name, recipe_ref)
        return self.status([name])[0]
