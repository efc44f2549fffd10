"""The core both front ends (CLI and agent) call; returns result objects, never prints.

Composes recipes, the registry, git installs, session backends and process
metrics. Must not import click or paho.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
import typing as t
from pathlib import Path

from supervisor.consoletext import check_console_text, parse_key
from supervisor.core import metrics, readiness, secrets
from supervisor.core.recipe import (
    BUILTIN_PREFIX,
    STRATEGY_VARS,
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
    DESIRED_STOPPED,
    INSTALL_FAILED,
    INSTALLED,
    INSTALLING,
    Instance,
    Registry,
)
from supervisor.core.sessions import KNOWN_BACKENDS, SessionBackend, SessionInfo, get_backend
from supervisor.errors import (
    BackendUnavailable,
    InstallError,
    InstanceBusy,
    InstanceError,
    InstanceExists,
    InstanceNotFound,
    InstanceNotReady,
    InstanceNotRunning,
    InstanceRunning,
    ReadyTimeout,
    RegistryWriteError,
    SecretError,
    SecretMissing,
    SessionError,
    SupervisorError,
    UpdateRolledBack,
)
from supervisor.files import atomic_write
from supervisor.logfiles import clean_console, last_lines, read_chunk, read_from, rotate_log
from supervisor.paths import SESSION_PREFIX, Paths, ensure_dir
from supervisor.states import State

if t.TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

logger = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 30.0

# Live states, derived at every look (never stored).
RUNNING = State.RUNNING
STARTING = State.STARTING
WAITING_LOGIN = State.WAITING_LOGIN
ALIVE_STATES = (RUNNING, STARTING, WAITING_LOGIN)
STOPPED = State.STOPPED
EXITED = State.EXITED
CRASHED = State.CRASHED
FATAL = State.FATAL

ProgressFn = t.Callable[[str, "int | None", "int | None"], None]
LineFn = t.Callable[[str], None]


def session_name(name: str) -> str:
    """Return the session name of instance ``name``; every listing filters on this prefix."""
    return f"{SESSION_PREFIX}{name}"


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

    @property
    def is_running(self) -> bool:
        """Whether the bot's process is alive (``running``, or ``starting``/``waiting-login`` with a process)."""
        return self.state in ALIVE_STATES and self.pid is not None

    @property
    def is_ready(self) -> bool:
        """Whether the bot is up: its ready line was seen (or, without a ready pattern, its process is alive)."""
        return self.state == RUNNING

    def to_dict(self) -> dict[str, t.Any]:
        """Return the ``ls --json`` record."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ActionResult:
    """What one start, stop or restart did."""

    name: str
    action: str
    changed: bool
    message: str
    step: str | None = None
    status: InstanceStatus | None = None
    ok: bool = True
    warning: str | None = None
    """Something the user should know although the action succeeded (e.g. it could not be recorded)."""

    def to_dict(self) -> dict[str, t.Any]:
        """Return the result as a JSON-able dict."""
        data = dataclasses.asdict(self)
        data["status"] = self.status.to_dict() if self.status else None
        return data


@dataclasses.dataclass(frozen=True)
class ForeignSession:
    """A session without a record: someone else's that runs something that looks like a bot, or an orphan.

    An orphan (``state`` ``"orphan"``) is a ``sup-`` session on our own server
    whose record is gone (a deleted or restored registry); it is listed whatever
    it runs, so it can be adopted again.
    """

    session: str
    backend: str
    server: str
    pid: int | None
    command: str
    cwd: str | None
    recipe: str | None
    state: str = "foreign"

    def to_dict(self) -> dict[str, t.Any]:
        """Return the record as a JSON-able dict."""
        return dataclasses.asdict(self)


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


@dataclasses.dataclass(frozen=True)
class _Launch:
    """A session just started, waiting for its bot to be ready."""

    name: str
    backend: str
    session: str
    log: Path
    offset: int
    pattern: re.Pattern[str] | None
    deadline: float
    timeout: float
    login: re.Pattern[str] | None = None
    joined: bool = False
    """The bot was already starting (launched earlier); this start only waits for it."""


@dataclasses.dataclass(frozen=True)
class ExitRecord:
    """What the wrapper wrote when the bot exited."""

    code: int
    when: float


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
        self.paths = paths
        self.registry = registry or Registry(paths.registry, paths.registry_lock)
        self._backends: dict[str, SessionBackend] = dict(backends or {})
        self.sampler = sampler or metrics.Sampler()
        self.extra_recipes = list(extra_recipes)
        self._recipes: dict[tuple[str, str | None], tuple[Recipe, float]] = {}
        self._held = threading.local()
        self.session_cache_ttl = 0.0
        """Seconds a session listing may be reused (the agent sets this; actions clear it)."""
        self._session_cache: dict[str, tuple[float, dict[str, SessionInfo]]] = {}
        self.commit_cache_ttl = 0.0
        """Seconds a checkout's HEAD commit may be reused (the agent sets this; update clears it)."""
        self._commit_cache: dict[str, tuple[float, str | None]] = {}

    # -- collaborators -----------------------------------------------------

    def backend(self, name: str) -> SessionBackend:
        """Return the session backend called ``name``."""
        if name not in self._backends:
            self._backends[name] = get_backend(name, self.paths)
        return self._backends[name]

    def recipe_for(self, instance: Instance) -> Recipe:
        """Return the recipe an instance was created from (cached while its file is unchanged)."""
        key = (instance.recipe, instance.recipe_path)
        cached = self._recipes.get(key)
        if cached is not None:
            recipe, mtime = cached
            with contextlib.suppress(OSError):
                if recipe.path.stat().st_mtime == mtime:
                    return recipe
        if instance.recipe_path and Path(instance.recipe_path).is_file():
            recipe = load_recipe(Path(instance.recipe_path))
        else:
            recipe = find_recipe(instance.recipe, self.paths.user_recipes)
        with contextlib.suppress(OSError):
            self._recipes[key] = (recipe, recipe.path.stat().st_mtime)
        return recipe

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

    # -- locks ---------------------------------------------------------------

    @contextlib.contextmanager
    def _instance_lock(self, name: str, *, wait: float = 600.0) -> Iterator[None]:
        """Hold the per-instance lock so two processes never install or start one instance at once.

        Re-entrant within one thread (``restart`` holds it across stop and
        start); other threads and processes wait, since ``flock`` locks belong
        to each open file.
        """
        held: set[str] = self._held.__dict__.setdefault("names", set())
        if name in held:
            yield
            return
        path = self.paths.instance_lock(name)
        ensure_dir(path.parent)
        with path.open("a") as handle:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        msg = (
                            f"instance '{name}' is busy: another supervisor process is changing it. Try again shortly."
                        )
                        raise InstanceBusy(msg) from None
                    time.sleep(0.05)
            held.add(name)
            try:
                yield
            finally:
                held.discard(name)
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _is_locked(self, name: str) -> bool:
        path = self.paths.instance_lock(name)
        if not path.exists():
            return False
        with path.open("a") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return False

    # -- variables -------------------------------------------------------------

    def _values(self, instance: Instance, recipe: Recipe) -> dict[str, str]:
        builtins = {"name": instance.name, "checkout": instance.checkout, "home": str(self.paths.home)}
        values = {**recipe.vars, **instance.vars}
        # A variable's value may use the built-in ones (``venvs: '{home}/venvs'``).
        values = {key: render(value, builtins) for key, value in values.items()}
        values.update(builtins)
        values.setdefault("python", sys.executable)
        if not values["python"]:
            values["python"] = sys.executable
        return values

    def _install_env(self, instance: Instance, recipe: Recipe) -> dict[str, str]:
        values = self._values(instance, recipe)
        env = dict(os.environ)
        env.update({k: render(v, values) for k, v in recipe.run.env.items()})
        env.update(instance.env)
        env.update(secrets.environment(self.paths, instance.name, recipe))
        env["SUPERVISOR_INSTANCE"] = instance.name
        return env

    # -- install ----------------------------------------------------------------

    def _source_url(self, recipe: Recipe, repo: str | None) -> str:
        from supervisor.core import install

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
        from supervisor.core import install as git_install

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
                    mirror = git_install.ensure_mirror(self.paths.mirrors, url, progress=progress)
                    if on_line:
                        on_line(f"checkout {record.ref} -> {checkout}")
                    commit = git_install.clone_checkout(mirror, url, checkout, record.ref, progress=progress)
                    if (repo or recipe.source.repo).startswith(BUILTIN_PREFIX):
                        # git keeps only the executable bit: give shipped files their own modes back.
                        git_install.copy_file_modes(Path(url), checkout)
                    self._write_bot_config(record, recipe)
                    for key, value in (secret_values or {}).items():
                        secrets.write_secret(self.paths, name, key, value)
                    record = self.registry.update(name, commit=commit)
                    if install:
                        installing = True
                        self._run_install(record, recipe, log, on_line)
                    else:
                        record = self.registry.update(name, lifecycle=INSTALLED)
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
        from supervisor.core import install as git_install

        values = self._values(record, recipe)
        steps = [render(step, values) for step in recipe.install]
        self.registry.update(record.name, lifecycle=INSTALLING, last_error=None)
        missing = secrets.missing(self.paths, record.name, recipe)
        if missing and steps:
            with contextlib.suppress(OSError), log.open("a", encoding="utf-8") as handle:
                for var, key in missing:
                    handle.write(f"==> secret '{key}' ({var}) is not set: the install steps run without it\n")
        try:
            git_install.run_install_steps(
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
        from supervisor.core import install as git_install

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
        from supervisor.core import install as git_install

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

    def _exit_record(self, name: str) -> ExitRecord | None:
        try:
            code, _, when = self.paths.exit_file(name).read_text().strip().partition(" ")
            return ExitRecord(int(code), float(when or 0))
        except (OSError, ValueError):
            return None

    def _sessions(self, backends: t.Iterable[str]) -> dict[str, dict[str, SessionInfo]]:
        found: dict[str, dict[str, SessionInfo]] = {}
        now = time.monotonic()
        for name in set(backends):
            cached = self._session_cache.get(name)
            if cached is not None and now - cached[0] < self.session_cache_ttl:
                found[name] = cached[1]
                continue
            backend = self.backend(name)
            found[name] = backend.list_sessions() if backend.is_available() else {}
            if self.session_cache_ttl:
                self._session_cache[name] = (now, found[name])
        return found

    def forget_sessions(self) -> None:
        """Drop cached session listings (after anything that starts or ends a session)."""
        self._session_cache.clear()

    def _session_exists(self, instance: Instance) -> bool:
        backend = self.backend(instance.backend)
        return backend.is_available() and backend.has_session(instance.session)

    def _session_backend(self, record: Instance) -> SessionBackend:
        """Return the backend holding the record's session; raise if there is no session to use."""
        if not self._session_exists(record):
            raise InstanceNotRunning(record.name, self._live_status(record).state)
        return self.backend(record.backend)

    def _derive(
        self, instance: Instance, info: SessionInfo | None, sample: metrics.ProcessSample | None
    ) -> InstanceStatus:
        exit_record = self._exit_record(instance.name)
        alive = bool(sample and sample.alive)
        exit_code: int | None = None
        if instance.lifecycle == INSTALLING:
            state = INSTALLING if self._is_locked(instance.name) else INSTALL_FAILED
        elif instance.lifecycle == INSTALL_FAILED:
            state = INSTALL_FAILED
        elif alive:
            state = self._ready_state(instance)
        elif info is not None and not instance.adopted and instance.desired == DESIRED_RUNNING:
            state = STARTING
        elif instance.fatal:
            state = FATAL
        elif instance.desired == DESIRED_STOPPED:
            state = STOPPED
        else:
            if exit_record is not None and (
                instance.started_at is None or exit_record.when >= int(instance.started_at)
            ):
                exit_code = exit_record.code
            # No exit record of this run: the bot did not end by itself (its session was killed).
            state = EXITED if exit_code == 0 else CRASHED
        uptime = None
        if alive and sample is not None and sample.create_time:
            uptime = max(0.0, time.time() - sample.create_time)
        return InstanceStatus(
            name=instance.name,
            recipe=instance.recipe,
            backend=instance.backend,
            session=instance.session,
            state=state,
            desired=instance.desired,
            pid=sample.pid if alive and sample else None,
            cpu_percent=sample.cpu_percent if alive and sample else None,
            rss=sample.rss if alive and sample else None,
            uptime=uptime,
            restarts=instance.restarts,
            checkout=instance.checkout,
            repo=instance.repo,
            ref=instance.ref,
            commit=self._commit(instance),
            exit_code=exit_code,
            plugin=self._plugin(instance),
            adopted=instance.adopted,
            last_error=instance.last_error,
        )

    def _ready_state(self, instance: Instance) -> str:
        """Return ``running``, ``starting`` or ``waiting-login`` for a bot whose process is alive.

        Only the console output since the last launch counts. Adopted bots, recipes
        without a ready pattern, and launches from before readiness was tracked
        are ``running`` as soon as their process is.
        """
        if instance.adopted:
            return RUNNING
        try:
            run = self.recipe_for(instance).run
        except SupervisorError:
            return RUNNING
        if not run.ready:
            return RUNNING
        log = self.paths.console_log(instance.name)
        seen = readiness.observe(
            self.paths.readiness_file(instance.name),
            lambda offset: read_chunk(log, offset),
            re.compile(run.ready),
            re.compile(run.login) if run.login else None,
        )
        if seen is None or seen.ready:
            return RUNNING
        return WAITING_LOGIN if seen.login else STARTING

    def _plugin(self, instance: Instance) -> bool:
        try:
            return self.recipe_for(instance).mqtt.plugin
        except SupervisorError:
            return False

    def _commit(self, instance: Instance) -> str | None:
        from supervisor.core import install as git_install

        now = time.monotonic()
        cached = self._commit_cache.get(instance.checkout)
        if cached is not None and now - cached[0] < self.commit_cache_ttl:
            return cached[1] or instance.commit
        commit = git_install.current_commit(Path(instance.checkout))
        if self.commit_cache_ttl:
            self._commit_cache[instance.checkout] = (now, commit)
        return commit or instance.commit

    def _match(self, instance: Instance) -> str | None:
        """Return the pattern that finds an adopted bot inside the user's shell (``None``: the shell's oldest child)."""
        if not instance.adopted:
            return None
        try:
            return self.recipe_for(instance).detect
        except SupervisorError:
            return None

    def _sample(self, instance: Instance) -> tuple[SessionInfo | None, metrics.ProcessSample]:
        info = self._sessions([instance.backend])[instance.backend].get(instance.session)
        pid = info.pid if info else None
        table = self.sampler.table(roots=[pid] if pid else [])
        return info, self.sampler.sample(pid, table, match=self._match(instance))

    def _live_status(self, instance: Instance) -> InstanceStatus:
        info, sample = self._sample(instance)
        return self._derive(instance, info, sample)

    def status(
        self, names: Sequence[str] | None = None, *, sessions: dict[str, dict[str, SessionInfo]] | None = None
    ) -> list[InstanceStatus]:
        """Return the live status of ``names`` (all instances when ``None``).

        One session query per backend in use, one process-table pass, then a
        psutil sample per instance: no subprocess per instance.

        Raises
        ------
        InstanceNotFound
            A named instance is not recorded.
        """
        records = self.registry.all()
        if names:
            missing = [n for n in names if n not in records]
            if missing:
                raise InstanceNotFound(missing[0])
            selected = [records[n] for n in names]
        else:
            selected = [records[n] for n in sorted(records)]
        if sessions is None:
            sessions = self._sessions(r.backend for r in selected)
        infos = {r.name: sessions.get(r.backend, {}).get(r.session) for r in selected}
        roots = {n: (i.pid if i else None) for n, i in infos.items()}
        # Only our sessions' process trees are read, however busy the host is.
        table = self.sampler.table(roots=[pid for pid in roots.values() if pid])
        samples = self.sampler.sample_many(roots, table, matches={r.name: self._match(r) for r in selected})
        return [self._derive(r, infos[r.name], samples.get(r.name)) for r in selected]

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

    # -- start / stop -------------------------------------------------------------

    def _strategy_args(self, instance: Instance, recipe: Recipe) -> str:
        """Return the recipe's ``run.strategy_args`` for the recorded strategy, shell-quoted ("" without one)."""
        if not recipe.run.strategy_args or not instance.strategy:
            return ""
        values = {k: shlex.quote(v) for k, v in instance.strategy.items() if k in STRATEGY_VARS and v}
        if not values:
            return ""
        return render(recipe.run.strategy_args, values, optional_groups=True).strip()

    def _write_run_script(self, instance: Instance, recipe: Recipe) -> Path:
        values = self._values(instance, recipe)
        command = strip_exec(render(recipe.run.command, values))
        extra = self._strategy_args(instance, recipe)
        if extra:
            command = f"{command} {extra}"
        exit_file = self.paths.exit_file(instance.name)
        lines = [
            "#!/usr/bin/env bash",
            f"# Written by bot-supervisor for instance {instance.name!r} at every start; edits are lost.",
            f"cd -- {shlex.quote(instance.checkout)} || exit 97",
            f"export SUPERVISOR_INSTANCE={shlex.quote(instance.name)}",
        ]
        env = {k: render(v, values) for k, v in recipe.run.env.items()}
        env.update(instance.env)
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        for var, key in recipe.run.secrets.items():
            # Read by bash itself ($(< file) forks no program): the value is never on an argv.
            path = shlex.quote(str(self.paths.secret_file(instance.name, key)))
            missing = shlex.quote(
                f"bot-supervisor: secret '{key}' ({var}) is not set. Run: supervisor secret set {instance.name} {key}"
            )
            lines.append(f'if [ -r {path} ]; then export {var}="$(< {path})"; else echo {missing} >&2; rc=96; fi')
        if recipe.run.prelude:
            prelude = render(recipe.run.prelude, values)
            failed = "{ echo 'bot-supervisor: prelude failed' >&2; rc=98; }"
            lines.append(f'if [ -z "${{rc:-}}" ]; then {prelude} || {failed}; fi')
        lines += [
            f'if [ -z "${{rc:-}}" ]; then {command}; rc=$?; fi',
            (
                f'printf \'%s %s\\n\' "$rc" "$(date +%s)" > {shlex.quote(str(exit_file))}.tmp'
                f" && mv -f -- {shlex.quote(str(exit_file))}.tmp {shlex.quote(str(exit_file))}"
            ),
            'exit "$rc"',
        ]
        script = self.paths.run_script(instance.name)
        ensure_dir(script.parent)
        atomic_write(script, "\n".join(lines) + "\n", mode=0o755, sync=False)
        return script

    def start(
        self, names: Sequence[str], *, wait_ready: bool = True, strategy: t.Mapping[str, str | None] | None = None
    ) -> list[ActionResult]:
        """Start each instance in its session; a running one is left alone.

        All sessions are started first, then one loop waits for every bot's
        readiness pattern, so starting 100 bots costs about as much as the
        slowest of them. With several names, a bot that fails to come up is
        reported in its result (``ok`` false); with one name, it raises.

        ``strategy`` (``script``/``conf``) launches the bot with that strategy
        through the recipe's ``run.strategy_args``, and is recorded so a crash
        restart runs it again; without it the bot starts with none.

        Raises
        ------
        InstanceNotFound, InstanceError, SessionError, ReadyTimeout
        """
        return self._start_many(names, wait_ready=wait_ready, strategy=check_strategy(strategy or {}))

    def _start_one(
        self, name: str, *, wait_ready: bool = True, count_restart: bool = False, only_if_wanted: bool = False
    ) -> ActionResult:
        # Restarts (crash or user) launch the bot with the strategy it was last given.
        return self._start_many(
            [name], wait_ready=wait_ready, count_restart=count_restart, only_if_wanted=only_if_wanted, strategy=None
        )[0]

    def _start_many(
        self,
        names: Sequence[str],
        *,
        wait_ready: bool = True,
        count_restart: bool = False,
        only_if_wanted: bool = False,
        strategy: dict[str, str] | None = None,
    ) -> list[ActionResult]:
        """Start ``names``; ``strategy`` None keeps each record's strategy, a dict (maybe empty) replaces it."""
        names = list(dict.fromkeys(names))
        done: dict[str, ActionResult] = {}
        already_running: set[str] = set()
        launched: list[_Launch] = []
        with contextlib.ExitStack() as locks:
            for name in sorted(names):  # a fixed order: two batch starts never deadlock
                locks.enter_context(self._instance_lock(name, wait=60))
            records = self.registry.all()
            for name in names:
                if name not in records:
                    raise InstanceNotFound(name)
            # A bot launched without its record would run unsupervised, meant to be stopped: write first.
            self.registry.check_writable()
            listing = self._sessions(records[name].backend for name in names)
            current = {s.name: s for s in self.status(names, sessions=listing)}
            for name in names:
                record = records[name]
                if only_if_wanted and (record.desired != DESIRED_RUNNING or record.fatal):
                    # Checked under the lock: a user's stop that raced the agent always wins.
                    message = f"instance '{name}' is no longer meant to run; left alone."
                    done[name] = ActionResult(name, "start", False, message)
                    continue
                if record.lifecycle != INSTALLED:
                    msg = (
                        f"instance '{name}' cannot start: it is {record.lifecycle}. "
                        f"Run 'supervisor install {name}' first (see {self.paths.install_log(name)})."
                    )
                    raise InstanceError(msg)
                if current[name].is_running:
                    already_running.add(name)
                    joined = self._join_start(record, current[name]) if wait_ready else None
                    if joined is not None:
                        launched.append(joined)
                        continue
                    message = f"instance '{name}' is already {current[name].state} (pid {current[name].pid})."
                    done[name] = ActionResult(name, "start", False, message)
                    continue
                missing = secrets.missing(self.paths, name, self.recipe_for(record))
                if missing:
                    raise SecretMissing(name, missing)
                if strategy is not None:
                    record = dataclasses.replace(record, strategy=strategy or None)
                launched.append(self._launch(record, listing.get(record.backend, {})))
            now = time.time()
            try:
                with self.registry.transaction() as instances:
                    for name in already_running:
                        instances[name].desired = DESIRED_RUNNING
                    for launch in launched:
                        if launch.joined:
                            continue  # launched earlier: its record already says so
                        record = instances[launch.name]
                        record.session = launch.session
                        record.desired = DESIRED_RUNNING
                        record.started_at = now
                        record.fatal = False
                        record.last_error = None
                        record.restarts += 1 if count_restart else 0
                        if strategy is not None:
                            record.strategy = strategy or None
            except SupervisorError:
                # The record could not be kept after all (the disk filled meanwhile): undo the launches.
                for launch in launched:
                    if launch.joined:
                        continue  # launched earlier, not by this start: not ours to undo
                    with contextlib.suppress(SupervisorError):
                        self.backend(launch.backend).kill_session(launch.session)
                raise
        self.forget_sessions()
        failures, logins = self._wait_ready(launched) if wait_ready else ({}, set())
        if failures:
            with self.registry.transaction() as instances:
                for name, error in failures.items():
                    instances[name].last_error = str(error).splitlines()[0]
            if len(names) == 1:
                raise failures[names[0]]
        statuses = {s.name: s for s in self.status(names)}
        results = []
        for name in names:
            if name in done:
                results.append(dataclasses.replace(done[name], status=statuses[name]))
            elif name in failures:
                results.append(ActionResult(name, "start", True, str(failures[name]), status=statuses[name], ok=False))
            else:
                launch = next(item for item in launched if item.name == name)
                message = f"started '{name}' in {launch.backend} session '{launch.session}'."
                if launch.joined:
                    message = f"instance '{name}' was already starting; it is up now."
                if name in logins:
                    message += f" It waits at its login dialog: log in with 'supervisor attach {name}'."
                results.append(ActionResult(name, "start", not launch.joined, message, status=statuses[name]))
        return results

    def _join_start(self, record: Instance, status: InstanceStatus) -> _Launch | None:
        """Return a wait for a bot that is still ``starting`` (launched earlier), or ``None``."""
        if status.state != STARTING:
            return None
        run = self.recipe_for(record).run
        seen = readiness.load(self.paths.readiness_file(record.name))
        if not run.ready or seen is None:
            return None
        return _Launch(
            record.name,
            record.backend,
            record.session,
            self.paths.console_log(record.name),
            seen.offset,
            re.compile(run.ready),
            time.monotonic() + run.ready_timeout,
            run.ready_timeout,
            login=re.compile(run.login) if run.login else None,
            joined=True,
        )

    def _launch(self, record: Instance, existing: t.Mapping[str, SessionInfo]) -> _Launch:
        """Start one instance's session (the caller holds its lock and records the start).

        ``existing`` is the backend's listing taken under the lock: a leftover
        session of ours (a wrapper whose bot is gone) is ended first.
        """
        recipe = self.recipe_for(record)
        backend = self.backend(record.backend)
        if not backend.is_available():
            raise BackendUnavailable(record.backend)
        session = session_name(record.name)
        if session in existing:
            backend.kill_session(session)
        script = self._write_run_script(record, recipe)
        self.paths.exit_file(record.name).unlink(missing_ok=True)
        log = self.paths.console_log(record.name)
        rotate_log(log)
        offset = log.stat().st_size if log.exists() else 0
        readiness.reset(self.paths.readiness_file(record.name), offset)
        backend.new_session(session, ["bash", str(script)], cwd=Path(record.checkout), log_path=log)
        pattern = re.compile(recipe.run.ready) if recipe.run.ready else None
        timeout = recipe.run.ready_timeout if pattern else 10.0
        login = re.compile(recipe.run.login) if recipe.run.login else None
        return _Launch(
            record.name, record.backend, session, log, offset, pattern, time.monotonic() + timeout, timeout, login
        )

    def _wait_ready(self, launched: Sequence[_Launch]) -> tuple[dict[str, SupervisorError], set[str]]:
        """Wait until every launched bot printed its readiness pattern (or, without one, has a process).

        One session query per backend and a few file reads per round; no
        process-table scans. Returns the bots that died or timed out, and those
        that stopped at their login dialog (their recipe's ``run.login``).
        """
        waiting = {launch.name: launch for launch in launched}
        texts = {launch.name: "" for launch in launched}
        positions = {launch.name: launch.offset for launch in launched}
        failures: dict[str, SupervisorError] = {}
        logins: set[str] = set()
        sessions: dict[str, dict[str, SessionInfo]] = {}
        listed_at = 0.0
        while waiting:
            # Ready lines come from the logs; the session listing (to notice deaths) can lag a little.
            if time.monotonic() - listed_at > 0.25 or not sessions:
                self.forget_sessions()
                sessions = self._sessions({launch.backend for launch in waiting.values()})
                listed_at = time.monotonic()
            for name, launch in list(waiting.items()):
                chunk, positions[name] = read_chunk(launch.log, positions[name])
                texts[name] = (texts[name] + chunk)[-65536:]
                info = sessions.get(launch.backend, {}).get(launch.session)
                if launch.pattern is not None:
                    ready = launch.pattern.search(texts[name]) is not None
                else:
                    ready = info is not None and metrics.bot_process(info.pid) is not None
                if ready:
                    if launch.pattern is not None:
                        readiness.mark_ready(self.paths.readiness_file(name))
                    del waiting[name]
                elif launch.login is not None and launch.login.search(texts[name]):
                    # A person has to log in: waiting for that is not start's job.
                    logins.add(name)
                    del waiting[name]
                elif info is None:
                    exit_record = self._exit_record(name)
                    code = f" with exit code {exit_record.code}" if exit_record else ""
                    tail = "\n".join(clean_console(texts[name]).splitlines()[-15:])
                    msg = f"instance '{name}': the bot exited during start{code}. Last output:\n{tail}"
                    failures[name] = InstanceError(msg)
                    del waiting[name]
                elif time.monotonic() > launch.deadline:
                    what = f"print /{launch.pattern.pattern}/" if launch.pattern else "start a process"
                    msg = (
                        f"instance '{name}' did not {what} within {launch.timeout:g}s. "
                        f"It is left running; check 'supervisor tail {name}'."
                    )
                    failures[name] = ReadyTimeout(msg)
                    del waiting[name]
            if waiting:
                time.sleep(0.02)
        return failures, logins

    def stop(self, names: Sequence[str], *, timeout: float | None = None) -> list[ActionResult]:
        """Stop each instance gracefully: console quit lines (or the recipe's ``run.stop``), then SIGTERM, then SIGKILL.

        ``timeout`` is the grace before SIGTERM; ``None`` means the recipe's
        ``run.stop.grace``, or 30 s after console quit lines.

        The user's intent is recorded first (``desired = stopped``), so the
        agent never restarts a bot the user stopped.
        """
        names = list(dict.fromkeys(names))
        if len(names) <= 1:
            return [self._stop_one(name, timeout=timeout) for name in names]
        # Each stop mostly waits (quit delays, the bot shutting down): do them side by side.
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
            futures = [pool.submit(self._stop_one, name, timeout=timeout) for name in names]
            return [future.result() for future in futures]

    def _stop_one(self, name: str, *, timeout: float | None = None, desired: str = DESIRED_STOPPED) -> ActionResult:
        with self._instance_lock(name, wait=60):
            self.forget_sessions()
            # The intent is recorded first when it can be; stopping never depends on it (a full disk).
            unrecorded = self._record_stop(name, desired)
            record = self.registry.get(name)
            backend = self.backend(record.backend)
            info, sample = self._sample(record)
            if info is None or not sample.alive:
                if info is not None and not record.adopted:
                    backend.kill_session(record.session)
                if unrecorded is not None:
                    unrecorded = self._record_stop(name, desired)
                return ActionResult(
                    name,
                    "stop",
                    False,
                    f"instance '{name}' is not running.",
                    step="already-stopped",
                    warning=unrecorded,
                )
            recipe = self.recipe_for(record)
            step = self._quit(record, recipe, backend, sample, timeout)
            if step in _GRACEFUL_STEPS and sample.root_pid and sample.root_pid != sample.pid:
                # The bot left on its own: let the wrapper record its exit code before the session goes.
                metrics.wait_gone([sample.root_pid], 3.0)
            if info is not None and not record.adopted:
                with contextlib.suppress(SessionError):
                    backend.kill_session(record.session)
            self.forget_sessions()
            if unrecorded is not None:
                unrecorded = self._record_stop(name, desired)
        status = self.status([name])[0]
        how = {
            "console": "by its console quit sequence",
            "stop-command": "by its stop command",
            "stop-signal": f"by its stop signal ({recipe.run.stop.signal if recipe.run.stop else '?'})",
            "sigterm": "with SIGTERM",
            "sigkill": "with SIGKILL",
        }
        message = f"stopped '{name}' {how.get(step, step)}."
        return ActionResult(name, "stop", True, message, step=step, status=status, warning=unrecorded)

    def _record_stop(self, name: str, desired: str) -> str | None:
        """Record a stop; return a warning instead of raising when the registry cannot be written."""
        try:
            self.registry.update(name, desired=desired, stopped_at=time.time())
        except RegistryWriteError as e:
            return (
                f"the stop of '{name}' could not be recorded ({e}) "
                f"Until it is, the agent may start it again: free space, then run 'supervisor stop {name}' again."
            )
        return None

    def _quit(
        self,
        record: Instance,
        recipe: Recipe,
        backend: SessionBackend,
        sample: metrics.ProcessSample,
        timeout: float | None,
    ) -> str:
        assert sample.pid is not None
        watched = [sample.pid]
        if recipe.run.stop is not None:
            # Headless: nobody reads the console, so typed quit lines would only wait out the timeout.
            step = self._graceful_stop(
                record, recipe, sample.pid, recipe.run.stop.grace if timeout is None else timeout
            )
            if step is not None:
                return step
        elif recipe.console.quit:
            deadline = time.monotonic() + (DEFAULT_STOP_TIMEOUT if timeout is None else timeout)
            try:
                for i, line in enumerate(recipe.console.quit):
                    backend.send_line(record.session, line)
                    if i < len(recipe.console.quit) - 1:
                        time.sleep(recipe.console.quit_delay)
                        if not metrics.is_alive(sample.pid):
                            break
            except SessionError as e:
                logger.warning("typing the quit sequence into %s failed: %s", record.session, e)
            if not metrics.wait_gone(watched, max(0.0, deadline - time.monotonic())):
                return "console"
        # An adopted session's root is the user's own shell: signal only the bot's tree there.
        target = sample.pid if record.adopted else (sample.root_pid or sample.pid)
        return metrics.terminate_tree(target, timeout=5.0)

    def _graceful_stop(self, record: Instance, recipe: Recipe, pid: int, grace: float) -> str | None:
        """Send the recipe's stop signal to the bot's process, or run its stop command; wait ``grace`` seconds.

        Returns the step that ended the bot, or ``None`` when it is still alive.
        """
        spec = recipe.run.stop
        assert spec is not None
        deadline = time.monotonic() + grace
        if spec.signal is not None:
            # The bot itself (the wrapper's child), not the wrapper shell: that is who winds down.
            metrics.signal_process(pid, getattr(signal, spec.signal))
            step = "stop-signal"
        else:
            assert spec.command is not None
            self._run_stop_command(record, recipe, spec.command, grace)
            step = "stop-command"
        if metrics.wait_gone([pid], max(0.0, deadline - time.monotonic())):
            return None
        return step

    def _run_stop_command(self, record: Instance, recipe: Recipe, command: str, timeout: float) -> None:
        """Run ``run.stop.command`` in the checkout with the run environment; its output goes to the console log."""
        from supervisor import _proc

        values = self._values(record, recipe)
        line = render(command, values)
        if recipe.run.prelude:
            line = f"{render(recipe.run.prelude, values)} && {line}"
        log = self.paths.console_log(record.name)
        try:
            with log.open("ab") as handle:
                handle.write(f"==> bot-supervisor: stop command: {render(command, values)}\n".encode())
                handle.flush()
                done = _proc.run(
                    ["bash", "-c", line],
                    cwd=Path(record.checkout),
                    env=self._install_env(record, recipe),
                    timeout=max(timeout, 1.0),
                    stdout=handle,
                    stderr=_proc.STDOUT,
                )
            if done.returncode != 0:
                logger.warning("stop command of %s exited with %s", record.name, done.returncode)
        except _proc.TimeoutExpired:
            logger.warning("stop command of %s did not finish within %ss", record.name, timeout)
        except OSError as e:
            logger.warning("stop command of %s could not run: %s", record.name, e)

    def restart(self, names: Sequence[str], *, timeout: float | None = None) -> list[ActionResult]:
        """Stop then start each instance, counting the restart."""
        results = []
        for name in names:
            # One lock across both halves: the agent never sees the gap as a crash.
            with self._instance_lock(name, wait=60):
                stopped = self._stop_one(name, timeout=timeout, desired=DESIRED_RUNNING)
                started = self._start_one(name, count_restart=True)
            how = f" (stopped: {stopped.step})" if stopped.changed else ""
            results.append(
                ActionResult(
                    name, "restart", True, f"restarted '{name}'{how}.", step=stopped.step, status=started.status
                )
            )
        return results

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

    # -- adoption -----------------------------------------------------------------

    def foreign_sessions(self) -> list[ForeignSession]:
        """Return sessions without a record: others' that run something a recipe recognises, and our orphans."""
        records = self.registry.all()
        ours = {(r.backend, r.session) for r in records.values()}
        # A recorded instance's own session name is never an orphan (it may be starting right now).
        named = {session_name(name) for name in records}
        recipes = [r for r in list_recipes(self.paths.user_recipes) if r.detect]
        found: list[ForeignSession] = []
        servers: list[tuple[str, str, SessionBackend]] = [("tmux", self.paths.tmux_socket, self.backend("tmux"))]
        if self.paths.tmux_socket != "default":
            from supervisor.core.sessions.tmux import TmuxBackend

            servers.append(("tmux", "default", TmuxBackend(socket_name="default")))
        servers.append(("screen", os.environ.get("SCREENDIR", "default"), self.backend("screen")))
        for backend_name, server, backend in servers:
            if not backend.is_available():
                continue
            listed = backend.list_sessions()
            table = self.sampler.table(roots=[i.pid for i in listed.values() if i.pid])
            ours_here = self.paths.tmux_socket if backend_name == "tmux" else os.environ.get("SCREENDIR", "default")
            for session, info in listed.items():
                if server == ours_here and (backend_name, session) in ours:
                    continue
                if server == ours_here and session in named:
                    continue
                orphan = server == ours_here and session.startswith(SESSION_PREFIX)
                sample = self.sampler.sample(info.pid, table)
                command = " ".join(sample.cmdline or ())
                match = next((r.name for r in recipes if r.detect and re.search(r.detect, command)), None)
                if match is None and not orphan:
                    continue
                state = "orphan" if orphan else "foreign"
                found.append(
                    ForeignSession(session, backend_name, server, sample.pid, command, sample.cwd, match, state)
                )
        return found

    def orphan_sessions(self) -> list[str]:
        """Return our ``sup-`` sessions (tmux and screen) that no record names: one listing per backend."""
        records = self.registry.all()
        ours = {(r.backend, r.session) for r in records.values()}
        named = {session_name(name) for name in records}
        listing = self._sessions(KNOWN_BACKENDS)
        return sorted(
            session
            for backend, sessions in listing.items()
            for session in sessions
            if session.startswith(SESSION_PREFIX) and (backend, session) not in ours and session not in named
        )

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
        check_name(name)
        candidates = [f for f in self.foreign_sessions() if f.session == session]
        if not candidates:
            msg = f"session '{session}' not found among sessions that look like bots. Run 'supervisor ls' to see them."
            raise SessionError(msg)
        found = candidates[0]
        if found.backend == "tmux" and found.server != self.paths.tmux_socket:
            msg = (
                f"session '{session}' is on the tmux server '{found.server}', not ours ('{self.paths.tmux_socket}'). "
                f"Set SUPERVISOR_TMUX_SOCKET={found.server} to manage that server's bots."
            )
            raise SessionError(msg)
        if not (recipe_ref or found.recipe):
            msg = f"session '{session}': no recipe recognises what it runs. Name one with -r RECIPE."
            raise SessionError(msg)
        recipe = find_recipe(recipe_ref or found.recipe or "", self.paths.user_recipes)
        from supervisor.core import install as git_install

        checkout = Path(found.cwd or ".")
        record = Instance(
            name=name,
            recipe=recipe.name,
            recipe_path=None if recipe.builtin else str(recipe.path),
            backend=found.backend,
            session=session,
            checkout=str(checkout),
            repo=str(checkout),
            ref=git_install.describe_ref(checkout) or "",
            lifecycle=INSTALLED,
            desired=DESIRED_RUNNING,
            # An orphan runs our own wrapper in our own session: it becomes an ordinary instance again.
            adopted=found.state != "orphan",
            commit=git_install.current_commit(checkout),
            started_at=time.time(),
        )
        self.registry.add(record)
        return self.status([name])[0]

    # -- records (what the agent reads without reaching into the registry) -------
    # The same API as branch `core`'s Manager (H1): on a merge conflict, keep that one.

    def use_caches(self, *, sessions: float = 0.0, commits: float = 0.0) -> None:
        """Let looks reuse a session listing for ``sessions`` seconds and a HEAD commit for ``commits``."""
        self.session_cache_ttl = sessions
        self.commit_cache_ttl = commits

    def has(self, name: str) -> bool:
        """Return whether an instance called ``name`` is recorded."""
        return name in self.registry.all()

    def records(self) -> dict[str, Instance]:
        """Return every stored record by name."""
        return self.registry.all()

    def record(self, name: str) -> Instance:
        """Return the stored record of ``name``.

        Raises
        ------
        InstanceNotFound
        """
        return self.registry.get(name)

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
        return self._is_locked(name)

    @property
    def audit_log(self) -> Path:
        """Where the agent appends its audit records."""
        return self.paths.audit_log

    @property
    def registry_file(self) -> Path:
        """The registry's file: watch it to hear of any record change."""
        return self.paths.registry

    # -- supervision helpers (the agent) ---------------------------------------

    def mark(self, name: str, **changes: t.Any) -> Instance:
        """Change stored fields of an instance (the agent records restarts and ``fatal``)."""
        return self.registry.update(name, **changes)

    def restart_crashed(self, name: str) -> ActionResult:
        """Start an instance the agent found dead while it should run, counting the restart."""
        return self._start_one(name, count_restart=True, only_if_wanted=True)


_GRACEFUL_STEPS = ("console", "stop-command", "stop-signal")
_STRATEGY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_strategy(values: t.Mapping[str, t.Any]) -> dict[str, str]:
    """Return the ``script``/``conf`` of a start request that are set, checked to be plain file names.

    They reach a shell command line (quoted) and the bot's config folder, so
    only a file name is accepted: no path, no leading dash or dot.

    Raises
    ------
    InstanceError
        When a value is not a string or not a plain file name.
    """
    found: dict[str, str] = {}
    for key in STRATEGY_VARS:
        value = values.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not _STRATEGY_NAME_RE.fullmatch(value):
            msg = (
                f"{key} {str(value)[:80]!r}: must be a file name (letters, digits, '.', '_', '-'; "
                "at most 128, not starting with '.' or '-'). Give the name of a file in the bot's folder."
            )
            raise InstanceError(msg)
        found[key] = value
    return found


# ``exec CMD``, but not ``exec >log`` / ``exec 2>&1`` (redirections only) nor ``exec -a NAME`` (options).
_LEADING_EXEC_RE = re.compile(r"\s*exec\s+(?![-<>&]|\d+[<>])")


def strip_exec(command: str) -> str:
    """Drop a leading ``exec`` so the bot runs as the wrapper's child and its exit code is recorded."""
    match = _LEADING_EXEC_RE.match(command)
    return command[match.end() :] if match else command
