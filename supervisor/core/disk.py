"""Disk held by instances, and the shared things no instance uses any more (``supervisor gc``).

Shared things are the recipes' venvs (:mod:`~supervisor.core.sharedenv`), build
cache entries (:mod:`~supervisor.core.buildcache`) and the git mirrors. A venv
is used when an instance's checkout links to it, a build entry when a checkout
holds its outputs, a mirror when an instance's repository is mirrored there or
a checkout borrows its objects (``clone --shared``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import typing as t
from pathlib import Path

from supervisor.core import buildcache, sharedenv
from supervisor.core.recipe import render
from supervisor.core.registry import INSTALLING
from supervisor.errors import SupervisorError

if t.TYPE_CHECKING:
    from collections.abc import Iterable

    from supervisor.core.parts import Parts
    from supervisor.core.registry import Instance

KINDS = ("venv", "build", "mirror")


@dataclasses.dataclass(frozen=True)
class SharedItem:
    """A venv, build cache entry or mirror that no instance uses."""

    kind: str
    path: str
    bytes: int
    complete: bool
    """False for a leftover of an interrupted build (no completion mark)."""

    def to_dict(self) -> dict[str, t.Any]:
        """Return the record as a JSON-able dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DiskUsage:
    """The disk one instance holds: its own files, and files it shares (hard links into the build cache)."""

    own: int
    shared: int

    def to_dict(self) -> dict[str, int]:
        """Return the record as a JSON-able dict."""
        return dataclasses.asdict(self)


def tree_bytes(path: Path) -> tuple[int, int]:
    """Return ``(bytes of files with one link, bytes of files with several)`` under ``path``; symlinks not followed."""
    own = shared = 0
    for folder, dirs, files in os.walk(path, onerror=lambda _: None):
        for name in files + [d for d in dirs if Path(folder, d).is_symlink()]:
            with contextlib.suppress(OSError):
                info = os.lstat(Path(folder, name))
                size = info.st_blocks * 512
                if info.st_nlink > 1 and not Path(folder, name).is_symlink():
                    shared += size
                else:
                    own += size
    return own, shared


def instance_usage(parts: Parts, record: Instance) -> DiskUsage:
    """Return the disk an instance holds: its checkout (not an adopted one) and its folder of logs and state."""
    own = shared = 0
    places = [parts.paths.instance_dir(record.name)]
    checkout = Path(record.checkout)
    if not record.adopted and not checkout.is_relative_to(places[0]):
        places.append(checkout)
    for place in places:
        mine, theirs = tree_bytes(place)
        own, shared = own + mine, shared + theirs
    return DiskUsage(own, shared)


def _roots(parts: Parts, var: str, default: str) -> set[Path]:
    """Return the folders the recipes of the instances keep ``var`` (``venvs``, ``builds``) in."""
    found = {Path(render(default, {"home": str(parts.paths.home)}))}
    for record in parts.registry.all().values():
        try:
            recipe = parts.recipe_for(record)
        except SupervisorError:
            continue
        value = parts.values(record, recipe).get(var)
        if value:
            found.add(Path(value).expanduser())
    return found


def _is_busy(lock: Path) -> bool:
    """Whether some process holds the ``flock`` on ``lock`` (a build is under way)."""
    if not lock.exists():
        return False
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def _used(parts: Parts) -> set[Path]:
    """Return every shared path some instance's checkout uses."""
    used: set[Path] = set()
    from supervisor.core import git

    for record in parts.registry.all().values():
        used.add(git.mirror_path(parts.paths.mirrors, record.repo).resolve())
        checkout = Path(record.checkout)
        with contextlib.suppress(OSError):
            for entry in checkout.iterdir():
                if entry.is_symlink():
                    used.add(entry.resolve())
        with contextlib.suppress(OSError):
            used.add(Path((checkout / ".git" / buildcache.USAGE_FILE).read_text().strip()).resolve())
        with contextlib.suppress(OSError):
            for line in (checkout / ".git" / "objects" / "info" / "alternates").read_text().splitlines():
                # <mirror>/objects: the mirror is the parent
                used.add(Path(line.strip()).resolve().parent)
    return used


def _candidates(parts: Parts) -> Iterable[tuple[str, Path, bool]]:
    """Yield ``(kind, path, complete)`` of every shared thing on disk that no build is making now."""
    for kind, var, default, mark in (
        ("venv", "venvs", "{home}/venvs", sharedenv.COMPLETE),
        ("build", "builds", "{home}/builds", buildcache.COMPLETE),
    ):
        for root in sorted(_roots(parts, var, default)):
            if not root.is_dir():
                continue
            for entry in sorted(root.iterdir()):
                if not entry.is_dir() or entry.is_symlink():
                    continue
                complete = (entry / mark).is_file()
                name = entry.name.split(".tmp-")[0].lstrip(".")
                if not complete and _is_busy(root / f".{name}.lock"):
                    continue  # being built right now
                yield kind, entry, complete
    mirrors = parts.paths.mirrors
    if mirrors.is_dir():
        for entry in sorted(mirrors.iterdir()):
            if entry.is_dir() and entry.name.endswith(".git") and not _is_busy(entry.with_name(entry.name + ".lock")):
                yield "mirror", entry, (entry / "HEAD").is_file()


def find_unused(parts: Parts) -> list[SharedItem]:
    """Return the venvs, build entries and mirrors that no instance uses, with their sizes.

    Raises
    ------
    SupervisorError
        An install is under way (what it is about to use cannot be known).
    """
    installing = [
        r.name for r in parts.registry.all().values() if r.lifecycle == INSTALLING and parts.is_locked(r.name)
    ]
    if installing:
        msg = f"instance '{installing[0]}' is being installed now. Run 'supervisor gc' again when it is done."
        raise SupervisorError(msg)
    used = _used(parts)
    items = []
    for kind, path, complete in _candidates(parts):
        if path.resolve() in used:
            continue
        own, shared = tree_bytes(path)
        items.append(SharedItem(kind, str(path), own + shared, complete))
    return items


def remove(items: Iterable[SharedItem]) -> int:
    """Delete ``items``; return the bytes freed (as measured when they were found)."""
    freed = 0
    for item in items:
        shutil.rmtree(item.path, ignore_errors=True)
        if not Path(item.path).exists():
            freed += item.bytes
    return freed
