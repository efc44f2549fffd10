"""The core both front ends (CLI and agent) call; returns result objects, never prints.

A facade over the core's jobs: :mod:`~supervisor.core.status` (one snapshot per look),
:mod:`~supervisor.core.launch` (start, readiness, stop), :mod:`~supervisor.core.adopt`
(foreign and orphan sessions), and install/update here. Must not import click or paho.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
import typing as t
from pathlib import Path

from supervisor.consoletext import check_console_text, parse_key
from supervisor.core import secrets
from supervisor.core import status as live
from supervisor.core.parts import Parts, session_name
from supervisor.core.recipe import (
    BUILTIN_PREFIX,
    Recipe,
    builtin_source,
    check_name,
    find_recipe,
    list_recipes,
    load_recipe,
    parse_settings,
    render,
)
from supervisor.core.registry import (
    DESIRED_RUNNING,
    INSTALL_FAILED,
    INSTALLED,
    INSTALLING,
    Instance,
    Registry,
)
from supervisor.core.sessions import KNOWN_BACKENDS, SessionBackend, SessionInfo
from supervisor.core.status import ExitRecord, InstanceStatus, Snapshot
from supervisor.errors import (
    BackendUnavailable,
    InstallError,
    InstanceError,
    InstanceExists,
    InstanceNotFound,
    InstanceNotReady,
    InstanceNotRunning,
    InstanceRunning,
    SecretError,
    SessionError,
    SupervisorError,
    UpdateRolledBack,
)
from supervisor.files import atomic_write
from supervisor.logfiles import clean_console, last_lines, read_from, rotate_log
from supervisor.paths import Paths, ensure_dir
from supervisor.states import ALIVE, State

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from supervisor.core import metrics
    from supervisor.core.adopt import ForeignSession
    from supervisor.core.launch import DEFAULT_STOP_TIMEOUT, ActionResult, check_strategy, strip_exec

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


ProgressFn = t.Callable[[str, "int | None", "int | None"], None]
LineFn = t.Callable[[str], None]


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
        """Seconds a session listing may be reused (0: every look asks the backend)."""
        return self._parts.session_cache_ttl

    @session_cache_ttl.setter
    def session_cache_ttl(self, seconds: float) -> None:
        self._parts.session_cache_ttl = seconds

    @property
    def commit_cache_ttl(self) -> float:
        """Seconds a checkout's HEAD commit may be reused (0: read at every look)."""
        return self._parts.commit_cache_ttl

    @commit_cache_ttl.setter
    def commit_cache_ttl(self, seconds: float) -> None:
        self._parts.commit_cache_ttl = seconds

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

    # -- private names install/update (and a few tests) use ---------------------------------------

    def _instance_lock(self, name: str, *, wait: float = 600.0) -> t.ContextManager[None]:
        return self._parts.instance_lock(name, wait=wait)

    def _values(self, instance: Instance, recipe: Recipe) -> dict[str, str]:
        return self._parts.values(instance, recipe)

    def _install_env(self, instance: Instance, recipe: Recipe) -> dict[str, str]:
        return self._parts.install_env(instance, recipe)

    def _session_exists(self, instance: Instance) -> bool:
        return self._parts.session_exists(instance)

    @property
    def _commit_cache(self) -> dict[str, tuple[float, str | None]]:
        return self._parts.commit_cache

    def _exit_record(self, name: str) -> ExitRecord | None:
        return live.read_exit_record(self.paths, name)

    def _write_run_script(self, instance: Instance, recipe: Recipe) -> Path:
        from supervisor.core import launch

        return launch.write_run_script(self._parts, instance, recipe)

    # -- install ----------------------------------------------------------------

    def _source_url(self, recipe: Recipe, repo: str | None) -> str:
        from supervisor.core import git as install

        url = repo or recipe.source.repo
        if url.startswith(BUILTIN_PREFIX):
            name = url.removeprefix(BUILTIN_PREFIX)
            folder = builtin_source(name)
            # The git origin made from it lives under $SUPERVISOR_HOME, nowhere else.
            origins = ensure_dir(self.paths.origins, 0o700)
            return install.ensure_builtin_origin(folder, origins / name)
        if "://" not in url and not url.startswith("git@"):
            local = Path(url).expanduser()
            if local.exists():
                return str(local.resolve())
        return url

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
        from supervisor.core import git as git_install

        check_name(name)
        if name in self.registry.all():
            raise InstanceExists(name)
        if backend not in KNOWN_BACKENDS:
            msg = f"backend '{backend}' is not known. Choose one of: {', '.join(KNOWN_BACKENDS)}."
            raise SupervisorError(msg)
        recipe = find_recipe(recipe_ref, self.paths.user_recipes)
        variables, env = parse_settings(recipe, settings)
        for key in secret_values or {}:
            self._check_secret_key(name, recipe, key)
        if not self.backend(backend).is_available():
            raise BackendUnavailable(backend)
        checkout = directory.expanduser().resolve() if directory else self.paths.default_checkout(name)
        if checkout.exists() and any(checkout.iterdir()):
            msg = f"directory '{checkout}' is not empty. Choose another --dir or empty it first."
            raise InstallError(msg)
        url = self._source_url(recipe, repo)
        record = Instance(
            name=name,
            recipe=recipe.name,
            recipe_path=None if recipe.builtin or recipe.path.parent == self.paths.user_recipes else str(recipe.path),
            backend=backend,
            session=session_name(name),
            checkout=str(checkout),
            repo=url,
            ref=ref or recipe.source.ref,
            vars=variables,
            env=env,
            lifecycle=INSTALLING,
        )
        self.registry.add(record)
        created_dir = not checkout.exists()
        try:
            with self._instance_lock(name):
                ensure_dir(self.paths.instance_dir(name))
                log = self.paths.install_log(name)
                installing = False
                try:
                    if on_line:
                        on_line(f"mirror {url}")
                        on_line(f"checkout {record.ref} -> {checkout}")
                    # The mirror's fetch and the clone run at once; the newest ref is checked out.
                    _, commit = git_install.checkout_latest(
                        self.paths.mirrors, url, checkout, record.ref, progress=progress
                    )
                    if (repo or recipe.source.repo).startswith(BUILTIN_PREFIX):
                        # git keeps only the executable bit: give shipped files their own modes back.
                        git_install.copy_file_modes(Path(url), checkout)
                    self._write_bot_config(record, recipe)
                    for key, value in (secret_values or {}).items():
                        secrets.write_secret(self.paths, name, key, value)
                    if install and recipe.install:
                        record = self.registry.update(name, commit=commit)
                        installing = True
                        self._run_install(record, recipe, log, on_line)
                    else:  # nothing to run: one registry write
                        record = self.registry.update(name, commit=commit, lifecycle=INSTALLED)
                except (InstallError, KeyboardInterrupt):
                    if installing:
                        raise  # a failed install step is recorded as install-failed, to retry with 'install'
                    self._undo_new(name, checkout, created_dir)
                    raise
                except BaseException:
                    # Anything else (a full disk, an unwritable registry...): leave nothing half-made.
                    self._undo_new(name, checkout, created_dir)
                    raise
        except KeyboardInterrupt:
            with contextlib.suppress(InstanceNotFound):
                self.registry.update(name, lifecycle=INSTALL_FAILED, last_error="interrupted")
            raise
        return self.status([name])[0]

    def _undo_new(self, name: str, checkout: Path, created_dir: bool) -> None:
        """Remove what a failed ``new`` made: files first (that frees space on a full disk), then the record."""
        if created_dir:
            shutil.rmtree(checkout, ignore_errors=True)
        shutil.rmtree(self.paths.instance_dir(name), ignore_errors=True)
        try:
            self.registry.remove(name)
        except InstanceNotFound:
            pass
        except SupervisorError:
            logger.warning("could not remove the record of the failed instance %s", name, exc_info=True)

    # -- secrets ----------------------------------------------------------------

    def _check_secret_key(self, name: str, recipe: Recipe, key: str) -> None:
        secrets.check_key(key)
        used = sorted(recipe.run.secrets.values())
        if key not in used:
            msg = (
                f"instance '{name}': recipe '{recipe.name}' uses no secret '{key}' "
                f"(its secrets: {', '.join(used) or 'none'}). Check the key."
            )
            raise SecretError(msg)

    def set_secret(self, name: str, key: str, value: bytes) -> Path:
        """Store one of the instance's secrets (mode 600, written atomically); the bot sees it at its next start.

        Raises
        ------
        InstanceNotFound, SecretError
            Unknown instance, a key the recipe does not use, or an unusable value.
        """
        record = self.registry.get(name)
        self._check_secret_key(name, self.recipe_for(record), key)
        value = secrets.clean_value(value, what=f"secret '{key}'")
        with self._instance_lock(name, wait=60):
            return secrets.write_secret(self.paths, name, key, value)

    def remove_secret(self, name: str, key: str) -> bool:
        """Delete one of the instance's secrets; return whether it existed."""
        self.registry.get(name)
        with self._instance_lock(name, wait=60):
            return secrets.remove_secret(self.paths, name, key)

    def secret_info(self, name: str) -> list[secrets.SecretInfo]:
        """Return the secrets the instance's recipe uses or it stores: keys and whether set, never values."""
        record = self.registry.get(name)
        return secrets.describe(self.paths, name, self.recipe_for(record))

    def _run_install(self, record: Instance, recipe: Recipe, log: Path, on_line: LineFn | None) -> None:
        from supervisor.core import steps as install_steps

        values = self._values(record, recipe)
        steps = [render(step, values) for step in recipe.install]
        if record.lifecycle != INSTALLING or record.last_error is not None:
            self.registry.update(record.name, lifecycle=INSTALLING, last_error=None)
        missing = secrets.missing(self.paths, record.name, recipe)
        if missing and steps:
            with contextlib.suppress(OSError), log.open("a", encoding="utf-8") as handle:
                for var, key in missing:
                    handle.write(f"==> secret '{key}' ({var}) is not set: the install steps run without it\n")
        try:
            install_steps.run_install_steps(
                steps, cwd=Path(record.checkout), env=self._install_env(record, recipe), log_path=log, on_line=on_line
            )
        except InstallError as e:
            self.registry.update(record.name, lifecycle=INSTALL_FAILED, last_error=str(e))
            raise
        except BaseException:
            self.registry.update(record.name, lifecycle=INSTALL_FAILED, last_error="install interrupted")
            raise
        self.registry.update(record.name, lifecycle=INSTALLED, last_error=None)

    def _write_bot_config(self, record: Instance, recipe: Recipe) -> None:
        """Write the recipe's ``mqtt.values`` (e.g. Hummingbot's ``instance_id``) into the bot's config file."""
        if not recipe.mqtt.config or not recipe.mqtt.values:
            return
        import yaml

        values = self._values(record, recipe)
        path = Path(record.checkout) / recipe.mqtt.config
        data: dict[str, t.Any] = {}
        if path.exists():
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                data = loaded
        for dotted, raw in recipe.mqtt.values.items():
            value: t.Any = raw
            if isinstance(raw, str):
                value = render(raw, values)
                if value.isdigit():
                    value = int(value)
            node = data
            *parents, leaf = str(dotted).split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        ensure_dir(path.parent)
        atomic_write(path, yaml.safe_dump(data, sort_keys=False), mode=0o644)

    def install(self, name: str, *, on_line: LineFn | None = None) -> InstanceStatus:
        """Run the recipe's install steps again (after a failure, or to rebuild).

        Raises
        ------
        InstanceRunning
            The bot is running; stop it first.
        InstallError
            A step failed; the instance is left ``install-failed``.
        """
        record = self.registry.get(name)
        if self._live_status(record).is_running:
            raise InstanceRunning(name, "reinstall")
        recipe = self.recipe_for(record)
        with self._instance_lock(name):
            self._run_install(record, recipe, self.paths.install_log(name), on_line)
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
        from supervisor.core import git as git_install

        record = self.registry.get(name)
        recipe = self.recipe_for(record)
        target = ref or record.ref
        checkout = Path(record.checkout)
        with self._instance_lock(name):
            mirror = git_install.ensure_mirror(self.paths.mirrors, record.repo, progress=progress)
            wanted = git_install.resolve_update(checkout, mirror, record.repo, target, progress=progress)
        old = git_install.current_commit(checkout)
        self._commit_cache.pop(record.checkout, None)
        if wanted == old and record.lifecycle == INSTALLED:
            if on_line:
                on_line(f"already at {target} ({wanted[:12]}): nothing to update")
            self.registry.update(name, ref=target)
            return self.status([name])[0]
        was_running = self._live_status(record).is_running
        if was_running:
            self.stop([name], timeout=stop_timeout)
        try:
            snapshot = self._snapshot_config(record, recipe)
        except OSError as e:
            if was_running:
                with contextlib.suppress(SupervisorError):
                    self.start([name])
            msg = (
                f"instance '{name}': could not copy its config files aside before the update ({e}). "
                "Nothing was changed. Free some disk space and try again."
            )
            raise InstallError(msg, step="snapshot") from e
        failure: SupervisorError | None = None
        new: str | None = None
        with self._instance_lock(name):
            try:
                _, new = git_install.fetch_and_checkout(checkout, mirror, record.repo, target, progress=progress)
                self._run_install(record, recipe, self.paths.install_log(name), on_line)
                self.registry.update(name, ref=target, commit=new)
            except SupervisorError as e:
                failure = e
                if old:
                    self._roll_back(record, recipe, old, f"update to {target} failed: {e}", on_line, snapshot)
        self._commit_cache.pop(record.checkout, None)
        # Start outside the lock: start takes the same per-instance lock.
        # The bot comes back as it was, with the strategy it was launched with.
        if was_running and failure is None:
            try:
                self._start_one(name)
                if not self._live_status(self.registry.get(name)).is_running:
                    msg = f"instance '{name}': the bot exited right after it came up."
                    raise InstanceError(msg)
            except SupervisorError as e:
                if not old:
                    raise
                raise self._undo_update(record, recipe, old, target, new, e, on_line, snapshot) from e
        elif was_running:
            with contextlib.suppress(SupervisorError):
                self._start_one(name)
        if failure is not None:
            raise failure
        return self.status([name])[0]

    def _undo_update(
        self,
        record: Instance,
        recipe: Recipe,
        old: str,
        target: str,
        new: str | None,
        error: SupervisorError,
        on_line: LineFn | None,
        snapshot: Path | None,
    ) -> UpdateRolledBack:
        """Stop a new commit that did not come up, put the old code and config back, and start it again."""
        name = record.name
        why = str(error).splitlines()[0]
        if on_line:
            on_line(f"the new commit did not come up ({why})")
        with contextlib.suppress(SupervisorError):
            self.stop([name], timeout=5.0)
        with self._instance_lock(name):
            reason = f"update to {target} rolled back: {why}"
            self._roll_back(record, recipe, old, reason, on_line, snapshot)
            self.registry.update(name, ref=record.ref)
        self._commit_cache.pop(record.checkout, None)
        try:
            self._start_one(name)
            again = f"started {old[:12]} again"
        except SupervisorError as e:
            again = f"starting {old[:12]} again failed too ({str(e).splitlines()[0]})"
        msg = (
            f"instance '{name}': update to {target} ({(new or '?')[:12]}) installed but did not come up ({why}); "
            f"rolled back code and config and {again}. See 'supervisor logs {name}'."
        )
        with contextlib.suppress(SupervisorError, OSError):
            self.registry.update(name, last_error=reason)  # start cleared it; 'status' should tell
        return UpdateRolledBack(msg, step="start")

    def _config_files(self, record: Instance, recipe: Recipe) -> list[str]:
        """Return the checkout-relative paths of the bot's config files that exist now."""
        checkout = Path(record.checkout)
        patterns = [*([recipe.mqtt.config] if recipe.mqtt.config else []), *recipe.config_files]
        found: set[str] = set()
        for pattern in patterns:
            if pattern.startswith(("/", "~")) or ".." in Path(pattern).parts:
                continue
            for path in checkout.glob(pattern):
                rel = path.relative_to(checkout)
                if rel.parts[0] != ".git" and (path.is_file() or path.is_symlink()):
                    found.add(str(rel))
        return sorted(found)

    def _snapshot_config(self, record: Instance, recipe: Recipe) -> Path | None:
        """Copy the bot's config files aside (mode 700 folder: they may hold keys); ``None`` if it has none."""
        folder = self.paths.config_snapshot(record.name)
        shutil.rmtree(folder, ignore_errors=True)
        if not recipe.config_files and not recipe.mqtt.config:
            return None
        files = folder / "files"
        ensure_dir(files, 0o700)
        folder.chmod(0o700)
        for rel in self._config_files(record, recipe):
            dest = files / rel
            ensure_dir(dest.parent, 0o700)
            shutil.copy2(Path(record.checkout) / rel, dest, follow_symlinks=False)
        return files

    def _restore_config(self, record: Instance, recipe: Recipe, files: Path) -> None:
        """Put the snapshot back: files it holds are restored, config files made since are removed."""
        checkout = Path(record.checkout)
        kept = {str(p.relative_to(files)) for p in files.rglob("*") if p.is_file() or p.is_symlink()}
        for rel in self._config_files(record, recipe):
            if rel not in kept:
                (checkout / rel).unlink(missing_ok=True)
        for rel in sorted(kept):
            dest = checkout / rel
            ensure_dir(dest.parent)
            if dest.is_symlink():
                dest.unlink()
            shutil.copy2(files / rel, dest, follow_symlinks=False)

    def _roll_back(
        self,
        record: Instance,
        recipe: Recipe,
        commit: str,
        reason: str,
        on_line: LineFn | None,
        snapshot: Path | None = None,
    ) -> None:
        """Put the previous commit (and config snapshot) back and reinstall it, so the instance stays usable."""
        from supervisor.core import git as git_install

        if on_line:
            on_line(f"rolling back to {commit[:12]}" + (" and the config files saved before" if snapshot else ""))
        try:
            git_install.checkout_commit(Path(record.checkout), commit)
            if snapshot is not None:
                self._restore_config(record, recipe, snapshot)
            self._run_install(record, recipe, self.paths.install_log(record.name), on_line)
            self.registry.update(record.name, commit=commit, last_error=reason)
        except (SupervisorError, OSError):
            logger.exception("rollback of %s to %s failed", record.name, commit)

    def remove(self, name: str, *, purge: bool = False, force: bool = False) -> Instance:
        """Forget an instance; with ``purge`` also delete its checkout and logs.

        Raises
        ------
        InstanceRunning
            The bot is running and ``force`` is not set.
        """
        record = self.registry.get(name)
        if self._live_status(record).is_running or self._session_exists(record):
            if not force:
                raise InstanceRunning(name, "remove")
            self.stop([name], timeout=5.0)
        with self._instance_lock(name, wait=30):
            if purge:
                # Files first: on a full disk that frees the space the registry needs to be rewritten.
                if not record.adopted:
                    shutil.rmtree(Path(record.checkout), ignore_errors=True)
                shutil.rmtree(self.paths.instance_dir(name), ignore_errors=True)
            return self.registry.remove(name)

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
        wait_ready: bool | None = None,
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
        ``wait_ready`` is the former name of ``wait``.

        Raises
        ------
        InstanceNotFound, InstanceError, SessionError, ReadyTimeout
        """
        from supervisor.core import launch

        if wait_ready is not None:
            wait = wait_ready
        return launch.start_many(self._parts, names, wait=wait, strategy=launch.check_strategy(strategy or {}))

    def _start_one(self, name: str, *, count_restart: bool = False, only_if_wanted: bool = False) -> ActionResult:
        from supervisor.core import launch

        # Restarts (crash or user) launch the bot with the strategy it was last given.
        return launch.start_many(
            self._parts, [name], count_restart=count_restart, only_if_wanted=only_if_wanted, strategy=None
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

    def restart(self, names: Sequence[str], *, timeout: float | None = None) -> list[ActionResult]:
        """Stop then start each instance, counting the restart.

        Raises
        ------
        InstanceNotFound, InstanceError, SessionError, ReadyTimeout
        """
        from supervisor.core import launch

        results = []
        for name in names:
            # One lock across both halves: the agent never sees the gap as a crash.
            with self._parts.instance_lock(name, wait=60):
                stopped = launch.stop_one(self._parts, name, timeout=timeout, desired=DESIRED_RUNNING)
                started = self._start_one(name, count_restart=True)
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

        Raises
        ------
        InstanceNotRunning
            The bot is not running.
        UnsafeConsoleText
            ``text`` holds a control character (line breaks, Ctrl keys, ESC...).
        """
        check_console_text(text, what=f"instance '{name}': the text to send")
        record, _ = self._running_record(name)
        self.backend(record.backend).send_line(record.session, text)

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

    def relay(self, name: str, command: str, values: t.Mapping[str, t.Any], *, capture: bool = False) -> str:
        """Type the console line for ``command`` and return what the bot printed after it (if ``capture``)."""
        line = self.console_line(name, command, values)
        record, status = self._running_record(name)
        if not status.is_ready:
            # A bot command typed into a login dialog would be taken as the password.
            raise InstanceNotReady(name, status.state)
        log = self.paths.console_log(name)
        offset = log.stat().st_size if log.exists() else 0
        self.backend(record.backend).send_line(record.session, line)
        if not capture:
            return ""
        time.sleep(self.recipe_for(record).console.reply_wait)
        return clean_console(read_from(log, offset), echo=line)

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
