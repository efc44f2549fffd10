"""An instance's life on disk: create (clone, config, secrets, install), reinstall, update with rollback, remove.

:class:`~supervisor.core.manager.Manager` delegates here; starts and stops go through
:mod:`~supervisor.core.launch`. GitPython, PyYAML and the install steps load only when a call needs them.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import typing as t
from pathlib import Path

from supervisor.core import launch, secrets
from supervisor.core import status as live
from supervisor.core.parts import session_name
from supervisor.core.recipe import (
    BUILTIN_PREFIX,
    Recipe,
    builtin_source,
    check_name,
    find_recipe,
    parse_settings,
    render,
)
from supervisor.core.registry import INSTALL_FAILED, INSTALLED, INSTALLING, Instance
from supervisor.core.sessions import KNOWN_BACKENDS
from supervisor.errors import (
    BackendUnavailable,
    InstallError,
    InstanceError,
    InstanceExists,
    InstanceNotFound,
    InstanceRunning,
    SecretError,
    SupervisorError,
    UpdateRolledBack,
)
from supervisor.files import atomic_write
from supervisor.paths import ensure_dir

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from supervisor.core.git import ProgressFn
    from supervisor.core.parts import Parts
    from supervisor.core.steps import LineFn

logger = logging.getLogger(__name__)


def _live_status(parts: Parts, record: Instance) -> live.InstanceStatus:
    return live.take(parts, [record.name], records={record.name: record}).status(record.name)


def _start_again(parts: Parts, name: str) -> launch.ActionResult:
    """Start ``name`` with the strategy it was last launched with (as a restart does)."""
    return launch.start_many(parts, [name], strategy=None)[0]


# -- new -------------------------------------------------------------------------------------------


def source_url(parts: Parts, recipe: Recipe, repo: str | None) -> str:
    """Return the URL to clone from: ``repo`` or the recipe's, a built-in source made a git origin first."""
    from supervisor.core import git as install

    url = repo or recipe.source.repo
    if url.startswith(BUILTIN_PREFIX):
        name = url.removeprefix(BUILTIN_PREFIX)
        folder = builtin_source(name)
        # The git origin made from it lives under $SUPERVISOR_HOME, nowhere else.
        origins = ensure_dir(parts.paths.origins, 0o700)
        return install.ensure_builtin_origin(folder, origins / name)
    if "://" not in url and not url.startswith("git@"):
        local = Path(url).expanduser()
        if local.exists():
            return str(local.resolve())
    return url


def new(
    parts: Parts,
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
) -> Instance:
    """Clone a checkout for a new instance, store its secrets, install it, and record it; return the record.

    Raises
    ------
    InvalidName, RecipeError, InstanceExists
        Before anything touches disk.
    InstallError
        Clone failures leave nothing behind; install-step failures leave the
        instance recorded as ``install-failed``.
    """
    from supervisor.core import git as git_install

    paths = parts.paths
    check_name(name)
    if name in parts.registry.all():
        raise InstanceExists(name)
    if backend not in KNOWN_BACKENDS:
        msg = f"backend '{backend}' is not known. Choose one of: {', '.join(KNOWN_BACKENDS)}."
        raise SupervisorError(msg)
    recipe = find_recipe(recipe_ref, paths.user_recipes)
    variables, env = parse_settings(recipe, settings)
    for key in secret_values or {}:
        check_secret_key(name, recipe, key)
    if not parts.backend(backend).is_available():
        raise BackendUnavailable(backend)
    checkout = directory.expanduser().resolve() if directory else paths.default_checkout(name)
    if checkout.exists() and any(checkout.iterdir()):
        msg = f"directory '{checkout}' is not empty. Choose another --dir or empty it first."
        raise InstallError(msg)
    url = source_url(parts, recipe, repo)
    record = Instance(
        name=name,
        recipe=recipe.name,
        recipe_path=None if recipe.builtin or recipe.path.parent == paths.user_recipes else str(recipe.path),
        backend=backend,
        session=session_name(name),
        checkout=str(checkout),
        repo=url,
        ref=ref or recipe.source.ref,
        vars=variables,
        env=env,
        lifecycle=INSTALLING,
    )
    parts.registry.add(record)
    created_dir = not checkout.exists()
    try:
        with parts.instance_lock(name):
            ensure_dir(paths.instance_dir(name))
            log = paths.install_log(name)
            installing = False
            try:
                if on_line:
                    on_line(f"mirror {url}")
                    on_line(f"checkout {record.ref} -> {checkout}")
                # The mirror's fetch and the clone run at once; the newest ref is checked out.
                _, commit = git_install.checkout_latest(paths.mirrors, url, checkout, record.ref, progress=progress)
                if (repo or recipe.source.repo).startswith(BUILTIN_PREFIX):
                    # git keeps only the executable bit: give shipped files their own modes back.
                    git_install.copy_file_modes(Path(url), checkout)
                write_bot_config(parts, record, recipe)
                for key, value in (secret_values or {}).items():
                    secrets.write_secret(paths, name, key, value)
                if install and recipe.install:
                    record = parts.registry.update(name, commit=commit)
                    installing = True
                    run_install(parts, record, recipe, log, on_line)
                else:  # nothing to run: one registry write
                    record = parts.registry.update(name, commit=commit, lifecycle=INSTALLED)
            except (InstallError, KeyboardInterrupt):
                if installing:
                    raise  # a failed install step is recorded as install-failed, to retry with 'install'
                _undo_new(parts, name, checkout, created_dir)
                raise
            except BaseException:
                # Anything else (a full disk, an unwritable registry...): leave nothing half-made.
                _undo_new(parts, name, checkout, created_dir)
                raise
    except KeyboardInterrupt:
        with contextlib.suppress(InstanceNotFound):
            parts.registry.update(name, lifecycle=INSTALL_FAILED, last_error="interrupted")
        raise
    return record


def _undo_new(parts: Parts, name: str, checkout: Path, created_dir: bool) -> None:
    """Remove what a failed ``new`` made: files first (that frees space on a full disk), then the record."""
    if created_dir:
        shutil.rmtree(checkout, ignore_errors=True)
    shutil.rmtree(parts.paths.instance_dir(name), ignore_errors=True)
    try:
        parts.registry.remove(name)
    except InstanceNotFound:
        pass
    except SupervisorError:
        logger.warning("could not remove the record of the failed instance %s", name, exc_info=True)


# -- secrets ---------------------------------------------------------------------------------------


def check_secret_key(name: str, recipe: Recipe, key: str) -> None:
    """Check that ``key`` is a well-formed secret key that the instance's recipe uses.

    Raises
    ------
    SecretError
    """
    secrets.check_key(key)
    used = sorted(recipe.run.secrets.values())
    if key not in used:
        msg = (
            f"instance '{name}': recipe '{recipe.name}' uses no secret '{key}' "
            f"(its secrets: {', '.join(used) or 'none'}). Check the key."
        )
        raise SecretError(msg)


def set_secret(parts: Parts, name: str, key: str, value: bytes) -> Path:
    """Store one of the instance's secrets (mode 600, written atomically); the bot sees it at its next start.

    Raises
    ------
    InstanceNotFound, SecretError
        Unknown instance, a key the recipe does not use, or an unusable value.
    """
    record = parts.registry.get(name)
    check_secret_key(name, parts.recipe_for(record), key)
    value = secrets.clean_value(value, what=f"secret '{key}'")
    with parts.instance_lock(name, wait=60):
        return secrets.write_secret(parts.paths, name, key, value)


def remove_secret(parts: Parts, name: str, key: str) -> bool:
    """Delete one of the instance's secrets; return whether it existed."""
    parts.registry.get(name)
    with parts.instance_lock(name, wait=60):
        return secrets.remove_secret(parts.paths, name, key)


# -- install ---------------------------------------------------------------------------------------


def run_install(parts: Parts, record: Instance, recipe: Recipe, log: Path, on_line: LineFn | None) -> None:
    """Run the recipe's install steps in the checkout; record ``installed``, or ``install-failed`` and raise.

    Raises
    ------
    InstallError
        A step failed.
    """
    from supervisor.core import steps as install_steps

    values = parts.values(record, recipe)
    steps = [render(step, values) for step in recipe.install]
    if record.lifecycle != INSTALLING or record.last_error is not None:
        parts.registry.update(record.name, lifecycle=INSTALLING, last_error=None)
    missing = secrets.missing(parts.paths, record.name, recipe)
    if missing and steps:
        with contextlib.suppress(OSError), log.open("a", encoding="utf-8") as handle:
            for var, key in missing:
                handle.write(f"==> secret '{key}' ({var}) is not set: the install steps run without it\n")
    try:
        install_steps.run_install_steps(
            steps,
            cwd=Path(record.checkout),
            env=parts.install_env(record, recipe),
            log_path=log,
            on_line=on_line,
            instance=record.name,
        )
    except InstallError as e:
        parts.registry.update(record.name, lifecycle=INSTALL_FAILED, last_error=str(e))
        raise
    except BaseException:
        parts.registry.update(record.name, lifecycle=INSTALL_FAILED, last_error="install interrupted")
        raise
    parts.registry.update(record.name, lifecycle=INSTALLED, last_error=None)


def write_bot_config(parts: Parts, record: Instance, recipe: Recipe) -> None:
    """Write the recipe's ``mqtt.values`` (e.g. Hummingbot's ``instance_id``) into the bot's config file."""
    if not recipe.mqtt.config or not recipe.mqtt.values:
        return
    import yaml

    values = parts.values(record, recipe)
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


def install(parts: Parts, name: str, *, on_line: LineFn | None = None) -> None:
    """Run the recipe's install steps again (after a failure, or to rebuild).

    Raises
    ------
    InstanceRunning
        The bot is running; stop it first.
    InstallError
        A step failed; the instance is left ``install-failed``.
    """
    record = parts.registry.get(name)
    if _live_status(parts, record).is_running:
        raise InstanceRunning(name, "reinstall")
    recipe = parts.recipe_for(record)
    with parts.instance_lock(name):
        run_install(parts, record, recipe, parts.paths.install_log(name), on_line)


# -- update and rollback ---------------------------------------------------------------------------


def update(
    parts: Parts,
    name: str,
    *,
    ref: str | None = None,
    progress: ProgressFn | None = None,
    on_line: LineFn | None = None,
    stop_timeout: float | None = None,
) -> None:
    """Fetch and resolve ``ref``; if it is new, stop, check it out, reinstall, and start again if it was running.

    See :meth:`~supervisor.core.manager.Manager.update`.

    Raises
    ------
    InstallError
        The ref is unknown, the work tree is dirty, or the install failed
        (rolled back).
    UpdateRolledBack
        The new commit installed but did not come up; the old one runs again.
    """
    from supervisor.core import git as git_install

    record = parts.registry.get(name)
    recipe = parts.recipe_for(record)
    target = ref or record.ref
    checkout = Path(record.checkout)
    with parts.instance_lock(name):
        mirror = git_install.ensure_mirror(parts.paths.mirrors, record.repo, progress=progress)
        wanted = git_install.resolve_update(checkout, mirror, record.repo, target, progress=progress)
    old = git_install.current_commit(checkout)
    parts.forget_commit(record.checkout)
    if wanted == old and record.lifecycle == INSTALLED:
        if on_line:
            on_line(f"already at {target} ({wanted[:12]}): nothing to update")
        parts.registry.update(name, ref=target)
        return
    was_running = _live_status(parts, record).is_running
    if was_running:
        launch.stop_one(parts, name, timeout=stop_timeout)
    try:
        snapshot = _snapshot_config(parts, record, recipe)
    except OSError as e:
        if was_running:
            with contextlib.suppress(SupervisorError):
                _start_again(parts, name)  # with the strategy it ran, as every other restart here
        msg = (
            f"instance '{name}': could not copy its config files aside before the update ({e}). "
            "Nothing was changed. Free some disk space and try again."
        )
        raise InstallError(msg, step="snapshot") from e
    failure: SupervisorError | None = None
    rolled_back = False
    new: str | None = None
    with parts.instance_lock(name):
        try:
            _, new = git_install.fetch_and_checkout(checkout, mirror, record.repo, target, progress=progress)
            run_install(parts, record, recipe, parts.paths.install_log(name), on_line)
            parts.registry.update(name, ref=target, commit=new)
        except SupervisorError as e:
            failure = e
            if old:
                reason = f"update to {target} failed and was rolled back: {one_line(e)}"
                rolled_back = _roll_back(parts, record, recipe, old, reason, on_line, snapshot)
    parts.forget_commit(record.checkout)
    restarted = False
    # Start outside the lock: start takes the same per-instance lock.
    # The bot comes back as it was, with the strategy it was launched with.
    if was_running and failure is None:
        try:
            _start_again(parts, name)
            if not _live_status(parts, parts.registry.get(name)).is_running:
                msg = f"instance '{name}': the bot exited right after it came up."
                raise InstanceError(msg)
        except SupervisorError as e:
            if not old:
                raise
            raise _undo_update(parts, record, recipe, old, target, new, e, on_line, snapshot) from e
    elif was_running:
        with contextlib.suppress(SupervisorError):
            restarted = _start_again(parts, name).ok
    if failure is not None and rolled_back and old:
        again = (" and started it again" if restarted else "; starting it again failed") if was_running else ""
        msg = (
            f"instance '{name}': update to {target} failed ({one_line(failure)}); rolled back code and config "
            f"to {old[:12]}{again}. See the log at {parts.paths.install_log(name)}."
        )
        with contextlib.suppress(SupervisorError, OSError):
            # The restart cleared it: 'status' should tell what happened.
            parts.registry.update(
                name, last_error=f"update to {target} failed and was rolled back: {one_line(failure)}"
            )
        step = failure.step if isinstance(failure, InstallError) else None
        tail = failure.log_tail if isinstance(failure, InstallError) else ""
        raise UpdateRolledBack(msg, step=step, log_tail=tail) from failure
    if failure is not None:
        raise failure


def one_line(error: BaseException, limit: int = 400) -> str:
    """Return an error as one line; a first line that ends with ':' gets the last lines it introduces."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = lines[0]
    if text.endswith(":"):
        text = f"{text} {' / '.join(lines[1:][-3:]) or '(nothing)'}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _undo_update(
    parts: Parts,
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
    why = one_line(error)
    if on_line:
        on_line(f"the new commit did not come up ({why})")
    with contextlib.suppress(SupervisorError):
        launch.stop_one(parts, name, timeout=5.0)
    with parts.instance_lock(name):
        reason = f"update to {target} rolled back: {why}"
        _roll_back(parts, record, recipe, old, reason, on_line, snapshot)
        parts.registry.update(name, ref=record.ref)
    parts.forget_commit(record.checkout)
    try:
        _start_again(parts, name)
        again = f"started {old[:12]} again"
    except SupervisorError as e:
        again = f"starting {old[:12]} again failed too ({one_line(e)})"
    msg = (
        f"instance '{name}': update to {target} ({(new or '?')[:12]}) installed but did not come up ({why}); "
        f"rolled back code and config and {again}. See 'supervisor logs {name}'."
    )
    with contextlib.suppress(SupervisorError, OSError):
        parts.registry.update(name, last_error=reason)  # start cleared it; 'status' should tell
    return UpdateRolledBack(msg, step="start")


def _config_files(record: Instance, recipe: Recipe) -> list[str]:
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


def _snapshot_config(parts: Parts, record: Instance, recipe: Recipe) -> Path | None:
    """Copy the bot's config files aside (mode 700 folder: they may hold keys); ``None`` if it has none."""
    folder = parts.paths.config_snapshot(record.name)
    shutil.rmtree(folder, ignore_errors=True)
    if not recipe.config_files and not recipe.mqtt.config:
        return None
    files = folder / "files"
    ensure_dir(files, 0o700)
    folder.chmod(0o700)
    for rel in _config_files(record, recipe):
        dest = files / rel
        ensure_dir(dest.parent, 0o700)
        shutil.copy2(Path(record.checkout) / rel, dest, follow_symlinks=False)
    return files


def _restore_config(record: Instance, recipe: Recipe, files: Path) -> None:
    """Put the snapshot back: files it holds are restored, config files made since are removed."""
    checkout = Path(record.checkout)
    kept = {str(p.relative_to(files)) for p in files.rglob("*") if p.is_file() or p.is_symlink()}
    for rel in _config_files(record, recipe):
        if rel not in kept:
            (checkout / rel).unlink(missing_ok=True)
    for rel in sorted(kept):
        dest = checkout / rel
        ensure_dir(dest.parent)
        if dest.is_symlink():
            dest.unlink()
        shutil.copy2(files / rel, dest, follow_symlinks=False)


def _roll_back(
    parts: Parts,
    record: Instance,
    recipe: Recipe,
    commit: str,
    reason: str,
    on_line: LineFn | None,
    snapshot: Path | None = None,
) -> bool:
    """Put the previous commit (and config snapshot) back and reinstall it; return whether that worked."""
    from supervisor.core import git as git_install

    if on_line:
        on_line(f"rolling back to {commit[:12]}" + (" and the config files saved before" if snapshot else ""))
    try:
        git_install.checkout_commit(Path(record.checkout), commit)
        if snapshot is not None:
            _restore_config(record, recipe, snapshot)
        run_install(parts, record, recipe, parts.paths.install_log(record.name), on_line)
        parts.registry.update(record.name, commit=commit, last_error=reason)
    except (SupervisorError, OSError):
        logger.exception("rollback of %s to %s failed", record.name, commit)
        return False
    return True


# -- remove ----------------------------------------------------------------------------------------


def remove(parts: Parts, name: str, *, purge: bool = False, force: bool = False) -> Instance:
    """Forget an instance; with ``purge`` also delete its checkout and logs; return the record removed.

    Raises
    ------
    InstanceRunning
        The bot is running and ``force`` is not set.
    """
    record = parts.registry.get(name)
    if _live_status(parts, record).is_running or parts.session_exists(record):
        if not force:
            raise InstanceRunning(name, "remove")
        launch.stop_one(parts, name, timeout=5.0)
    with parts.instance_lock(name, wait=30):
        if purge:
            # Files first: on a full disk that frees the space the registry needs to be rewritten.
            if not record.adopted:
                shutil.rmtree(Path(record.checkout), ignore_errors=True)
            shutil.rmtree(parts.paths.instance_dir(name), ignore_errors=True)
        return parts.registry.remove(name)
