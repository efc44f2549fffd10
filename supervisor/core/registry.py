"""Instance records: a versioned JSON file, written atomically under a lock.

Concurrent ``supervisor`` processes never lose a record: every change is a
read-modify-write under an exclusive ``fcntl`` lock, and the file is replaced
with ``os.replace`` so a reader never sees half a file. Imports only
:mod:`supervisor.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import typing as t
from pathlib import Path

from supervisor.errors import InstanceExists, InstanceNotFound, RegistryWriteError, SupervisorError
from supervisor.files import atomic_write, locked
from supervisor.states import State

if t.TYPE_CHECKING:
    from collections.abc import Iterator

SCHEMA_VERSION = 1

# Lifecycle states stored in the record; live states (running, crashed...) are derived.
INSTALLING = State.INSTALLING.value
INSTALL_FAILED = State.INSTALL_FAILED.value
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
    strategy: dict[str, str] | None = None
    """The strategy (``script``/``conf``) the bot was last launched or started with; a crash restart reuses it."""

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

    def _broken(self, what: str) -> SupervisorError:
        msg = f"registry '{self.path}': {what}. Restore it from a backup or fix it by hand."
        return SupervisorError(msg)

    def _read(self) -> dict[str, Instance]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            msg = f"registry '{self.path}': cannot be read ({e.strerror}). Check its permissions."
            raise SupervisorError(msg) from e
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            what = f"not UTF-8 text (byte {e.start})"
            raise self._broken(what) from e
        except json.JSONDecodeError as e:
            what = f"not valid JSON ({e.msg} at line {e.lineno})"
            raise self._broken(what) from e
        except RecursionError as e:
            what = "nested too deeply to be a registry"
            raise self._broken(what) from e
        if not isinstance(data, dict):
            what = f"a JSON {type(data).__name__}, not an object"
            raise self._broken(what)
        version = data.get("version")
        if version != SCHEMA_VERSION:
            msg = (
                f"registry '{self.path}': schema version {version!r} is not supported "
                f"(this supervisor reads version {SCHEMA_VERSION}). Upgrade bot-supervisor."
            )
            raise SupervisorError(msg)
        instances = data.get("instances", {})
        if not isinstance(instances, dict):
            what = f"'instances' is a {type(instances).__name__}, not an object of records by name"
            raise self._broken(what)
        return {name: self._record(name, rec) for name, rec in instances.items()}

    def _record(self, name: str, data: object) -> Instance:
        """Build one stored record, or say which record is broken and how."""
        if not isinstance(data, dict):
            msg = f"the record of instance '{name}' is a {type(data).__name__}, not an object"
            raise self._broken(msg)
        fields = {f.name: f for f in dataclasses.fields(Instance)}
        required = [
            n
            for n, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in data]
        if missing:
            msg = f"the record of instance '{name}' lacks {', '.join(repr(m) for m in missing)}"
            raise self._broken(msg)
        wrong = [n for n in required if not isinstance(data[n], str)]
        if data.get("name") != name:
            wrong.insert(0, "name")
        if wrong:
            fields_text = ", ".join(repr(w) for w in dict.fromkeys(wrong))
            msg = f"the record of instance '{name}' has a wrong {fields_text}"
            raise self._broken(msg)
        return Instance.from_dict(data)

    def _write(self, instances: t.Mapping[str, Instance]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": SCHEMA_VERSION,
            "instances": {name: instances[name].to_dict() for name in sorted(instances)},
        }
        try:
            atomic_write(self.path, json.dumps(payload, indent=1))
        except OSError as e:
            raise RegistryWriteError(self.path, e) from e

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Instance]]:
        """Yield the records under an exclusive lock and write them back if the block succeeds."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with locked(self.lock_path):
            instances = self._read()
            yield instances
            self._write(instances)

    def check_writable(self) -> None:
        """Write the records back unchanged, proving a change could be recorded now.

        Raises
        ------
        RegistryWriteError
            The file cannot be replaced (disk full, read-only, permissions).
        """
        with self.transaction():
            pass

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
