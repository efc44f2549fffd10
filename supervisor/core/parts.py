"""The collaborators every job of the core shares: paths, records, session backends, recipes, the sampler.

:class:`~supervisor.core.manager.Manager` builds one :class:`Parts` and hands it to
``status``, ``launch``, ``adopt`` and ``lifecycle``. It also owns the per-instance lock and the short-lived
caches (session listings, HEAD commits). psutil and GitPython load only when a call needs them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
import time
import typing as t
from pathlib import Path

from supervisor.core import secrets
from supervisor.core.recipe import Recipe, find_recipe, load_recipe, render
from supervisor.core.registry import Instance, Registry
from supervisor.core.sessions import SessionBackend, SessionInfo, get_backend
from supervisor.errors import InstanceBusy, SupervisorError
from supervisor.paths import SESSION_PREFIX, Paths, ensure_dir

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from supervisor.core import metrics


def session_name(name: str) -> str:
    """Return the session name of instance ``name``; every listing filters on this prefix."""
    return f"{SESSION_PREFIX}{name}"


class Parts:
    """What the core's jobs share; one per :class:`~supervisor.core.manager.Manager`."""

    def __init__(
        self,
        paths: Paths,
        registry: Registry | None = None,
        backends: t.Mapping[str, SessionBackend] | None = None,
        sampler: metrics.Sampler | None = None,
        extra_recipes: Iterable[Path] = (),
    ) -> None:
        self.paths = paths
        self.registry = registry or Registry(paths.registry, paths.registry_lock)
        self._backends: dict[str, SessionBackend] = dict(backends or {})
        self._sampler = sampler
        self.extra_recipes = list(extra_recipes)
        self._recipes: dict[tuple[str, str | None], tuple[Recipe, float]] = {}
        self._held = threading.local()
        self.session_cache_ttl = 0.0
        """Seconds a session listing may be reused (a long-lived agent sets this; actions clear it)."""
        self._session_cache: dict[str, tuple[float, dict[str, SessionInfo]]] = {}
        self.commit_cache_ttl = 0.0
        """Seconds a checkout's HEAD commit may be reused (update clears it)."""
        self.commit_cache: dict[str, tuple[float, str | None, str | None]] = {}
        """HEAD commits by checkout, with when they were read."""

    @property
    def sampler(self) -> metrics.Sampler:
        """The process sampler (made on first use: it is what imports psutil)."""
        if self._sampler is None:
            from supervisor.core import metrics

            self._sampler = metrics.Sampler()
        return self._sampler

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

    # -- variables and environment ----------------------------------------------------------

    def values(self, instance: Instance, recipe: Recipe) -> dict[str, str]:
        """Return the variables a recipe's templates are rendered with for ``instance``."""
        builtins = {"name": instance.name, "checkout": instance.checkout, "home": str(self.paths.home)}
        values = {**recipe.vars, **instance.vars}
        # A variable's value may use the built-in ones (``venvs: '{home}/venvs'``).
        values = {key: render(value, builtins) for key, value in values.items()}
        values.update(builtins)
        values.setdefault("python", sys.executable)
        if not values["python"]:
            values["python"] = sys.executable
        return values

    def install_env(self, instance: Instance, recipe: Recipe) -> dict[str, str]:
        """Return the environment install steps and the stop command run with (secrets included)."""
        values = self.values(instance, recipe)
        env = dict(os.environ)
        env.update({k: render(v, values) for k, v in recipe.run.env.items()})
        env.update(instance.env)
        env.update(secrets.environment(self.paths, instance.name, recipe))
        env["SUPERVISOR_INSTANCE"] = instance.name
        return env

    # -- the per-instance lock ----------------------------------------------------------------

    @contextlib.contextmanager
    def instance_lock(self, name: str, *, wait: float = 600.0) -> Iterator[None]:
        """Hold the per-instance lock so two processes never install or start one instance at once.

        Re-entrant within one thread (``restart`` holds it across stop and
        start); other threads and processes wait, since ``flock`` locks belong
        to each open file.

        Raises
        ------
        InstanceBusy
            Another process held it for longer than ``wait`` seconds.
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

    def is_locked(self, name: str) -> bool:
        """Return whether some process holds the instance's lock (an install or start is under way)."""
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

    # -- sessions -------------------------------------------------------------------------------

    def sessions(self, backends: Iterable[str]) -> dict[str, dict[str, SessionInfo]]:
        """Return the session listing of each backend named: one query each (or a cached one)."""
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

    def session_exists(self, instance: Instance) -> bool:
        """Return whether the instance's session is there (asked afresh)."""
        backend = self.backend(instance.backend)
        return backend.is_available() and backend.has_session(instance.session)

    # -- what the record does not say ---------------------------------------------------------

    def commit(self, instance: Instance) -> str | None:
        """Return the checkout's HEAD commit (cached for ``commit_cache_ttl``), else the recorded one."""
        from supervisor.core import git

        now = time.monotonic()
        cached = self.commit_cache.get(instance.checkout)
        # An update or rollback records its commit: a cached HEAD read before that is not reused,
        # whichever process moved the checkout (the agent answers `ls` after a CLI `update`).
        if cached is not None and now - cached[0] < self.commit_cache_ttl and cached[2] == instance.commit:
            return cached[1] or instance.commit
        commit = git.current_commit(Path(instance.checkout))
        if self.commit_cache_ttl:
            self.commit_cache[instance.checkout] = (now, commit, instance.commit)
        return commit or instance.commit

    def forget_commit(self, checkout: str) -> None:
        """Drop the cached HEAD of ``checkout`` (after anything that moves it)."""
        self.commit_cache.pop(checkout, None)

    def plugin(self, instance: Instance) -> bool:
        """Return whether the instance's bot speaks the Hummingbot MQTT protocol itself."""
        try:
            return self.recipe_for(instance).mqtt.plugin
        except SupervisorError:
            return False

    def match(self, instance: Instance) -> str | None:
        """Return the pattern that finds an adopted bot inside the user's shell (``None``: the shell's oldest child)."""
        if not instance.adopted:
            return None
        try:
            return self.recipe_for(instance).detect
        except SupervisorError:
            return None
