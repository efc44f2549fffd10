"""Instance records: a versioned JSON file, written atomically under a lock.

Concurrent ``supervisor`` processes never lose a record: every change is a
read-modify-write under an exclusive ``fcntl`` lock, and the file is replaced
with ``os.replace`` so a reader never sees half a file. Imports only
:mod:`supervisor.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
import time
import typing as t
from pathlib import Path

from supervisor.errors import InstanceExists, InstanceNotFound, SupervisorError

if t.TYPE_CHECKING:
    from collections.abc import Iterator

SCHEMA_VERSION = 1

# Lifecycle states stored in the record; live states (running, crashed...) are derived.
INSTALLING = "installing"
INSTALL_FAILED = "install-failed"
INSTALLED = "installed"
DESIRED_RUNNING = "running"
DESIRED_STOPPED = "stopped"


@dataclasses.dataclass
class Instance:
    """One configured bot: where its checkout is and how it should run."""

    name: str
    recipe: str
    backend: str
    session: str
    checkout: str
    repo: str
    ref: str
    recipe_path: str | None = None
    vars: dict[str, str] = dataclasses.field(default_factory=dict)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    lifecycle: str = INSTALLING
    desired: str = DESIRED_STOPPED
    restarts: int = 0
    created: float = dataclasses.field(default_factory=time.time)
    started_at: float | None = None
    stopped_at: float | None = None
    commit: str | None = None
    adopted: bool = False
    fatal: bool = False
    last_error: str | None = None

    def to_dict(self) -> dict[str, t.Any]:
        """Return the record as stored."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: t.Mapping[str, t.Any]) -> Instance:
        """Build from a stored record, ignoring fields a newer version added."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Registry:
    """The instance records of one ``SUPERVISOR_HOME``."""

    def __init__(self, path: Path, lock_path: Path | None = None) -> None:
        self.path = path
        self.lock_path = lock_path or path.with_suffix(".lock")
        self._cache: tuple[tuple[int, int, int], dict[str, Instance]] | None = None

    def _read(self) -> dict[str, Instance]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            msg = (
                f"registry '{self.path}': not valid JSON ({e.msg} at line {e.lineno}). "
                "Restore it from a backup or fix it by hand."
            )
            raise SupervisorError(msg) from e
        version = data.get("version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            msg = (
                f"registry '{self.path}': schema version {version!r} is not supported "
                f"(this supervisor reads version {SCHEMA_VERSION}). Upgrade bot-supervisor."
            )
            raise SupervisorError(msg)
        return {name: Instance.from_dict(rec) for name, rec in data.get("instances", {}).items()}

    def _write(self, instances: t.Mapping[str, Instance]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": SCHEMA_VERSION,
            "instances": {name: instances[name].to_dict() for name in sorted(instances)},
        }
        fd, tmp = tempfile.mkstemp(prefix=".registry-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            Path(tmp).replace(self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Instance]]:
        """Yield the records under an exclusive lock and write them back if the block succeeds."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                instances = self._read()
                yield instances
                self._write(instances)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def all(self) -> dict[str, Instance]:
        """Return every record (a consistent snapshot; no lock needed to read).

        Parsed once per version of the file: every write replaces it, so inode,
        size and mtime tell a new version. The records returned are shared:
        change them only through :meth:`update` or :meth:`transaction`.
        """
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._cache is not None and self._cache[0] == key:
            return dict(self._cache[1])
        records = self._read()
        self._cache = (key, records)
        return dict(records)

    def get(self, name: str) -> Instance:
        """Return the record of ``name`` or raise :class:`InstanceNotFound`."""
        try:
            return self.all()[name]
        except KeyError:
            raise InstanceNotFound(name) from None

    def add(self, instance: Instance) -> None:
        """Record a new instance; raise :class:`InstanceExists` if the name is taken."""
        with self.transaction() as instances:
            if instance.name in instances:
                raise InstanceExists(instance.name)
            instances[instance.name] = instance

    def update(self, name: str, **changes: t.Any) -> Instance:
        """Change fields of one record and return the new record."""
        with self.transaction() as instances:
            if name not in instances:
                raise InstanceNotFound(name)
            record = dataclasses.replace(instances[name], **changes)
            instances[name] = record
            return record

    def remove(self, name: str) -> Instance:
        """Delete one record and return it."""
        with self.transaction() as instances:
            try:
                return instances.pop(name)
            except KeyError:
                raise InstanceNotFound(name) from None
