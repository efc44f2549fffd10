"""Per-instance secrets: one file per key, mode 600 from creation, read by the run wrapper.

A value never goes on an argv, into the registry, or into a log. Imports only
:mod:`supervisor.errors`, :mod:`supervisor.paths` and :mod:`supervisor.core.recipe`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import sys
import typing as t
from pathlib import Path

from supervisor.core.recipe import SECRET_KEY_RE
from supervisor.errors import SecretError
from supervisor.files import atomic_write
from supervisor.paths import ensure_dir

if t.TYPE_CHECKING:
    from supervisor.core.recipe import Recipe
    from supervisor.paths import Paths

MAX_SECRET_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True)
class SecretInfo:
    """One secret as ``secret ls`` shows it: never its value."""

    key: str
    env: str | None
    """The environment variable the recipe exports it as (``None``: the recipe does not use it)."""
    is_set: bool

    def to_dict(self) -> dict[str, t.Any]:
        """Return the record as a JSON-able dict."""
        return dataclasses.asdict(self)


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid secret key, else raise :class:`SecretError`."""
    if not SECRET_KEY_RE.fullmatch(key):
        msg = f"secret key '{key}' is not valid. Use letters, digits, '-' and '_' (at most 64 characters)."
        raise SecretError(msg)
    return key


def clean_value(value: bytes, *, what: str) -> bytes:
    """Return ``value`` without trailing line breaks; refuse empty, oversized or NUL-holding values."""
    # The wrapper reads the file with bash's $(< file), which drops trailing line breaks too.
    value = value.rstrip(b"\r\n")
    if not value:
        msg = f"{what} is empty. Give the value on stdin or with --from-file PATH."
        raise SecretError(msg)
    if len(value) > MAX_SECRET_BYTES:
        msg = f"{what} is larger than {MAX_SECRET_BYTES} bytes. A secret is a password or a key, not a file."
        raise SecretError(msg)
    if b"\0" in value:
        msg = f"{what} holds a NUL byte, which no environment variable can carry. Remove it."
        raise SecretError(msg)
    return value


def read_value_file(path: Path, *, what: str) -> bytes:
    """Read a secret's value from ``path`` (``-`` is stdin), with a clear error when it cannot be read."""
    try:
        data = sys.stdin.buffer.read(MAX_SECRET_BYTES + 3) if str(path) == "-" else path.read_bytes()
    except OSError as e:
        msg = f"{what}: cannot read '{path}' ({e.strerror}). Check the path and its permissions."
        raise SecretError(msg) from e
    return clean_value(data, what=what)


def parse_secret_option(option: str) -> tuple[str, bytes]:
    """Parse ``new --secret KEY=@PATH`` and read the file; a value on the command line is refused."""
    key, sep, source = option.partition("=")
    if not sep or not source.startswith("@") or len(source) < 2:
        msg = (
            f"--secret '{key}=…' must be KEY=@PATH (a file holding the value, '@-' for stdin): "
            "a secret never goes on the command line."
        )
        raise SecretError(msg)
    check_key(key)
    return key, read_value_file(Path(source[1:]).expanduser(), what=f"secret '{key}'")


def _private_dir(path: Path) -> Path:
    ensure_dir(path, 0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        msg = f"secrets folder '{path}' can be read by others (mode {mode:o}). Run 'chmod 700 {path}' and try again."
        raise SecretError(msg)
    return path


def write_secret(paths: Paths, name: str, key: str, value: bytes) -> Path:
    """Store one secret atomically; the file is mode 600 from its creation (``atomic_write``), never widened."""
    check_key(key)
    _private_dir(paths.secrets_dir(name))
    target = paths.secret_file(name, key)
    atomic_write(target, value, mode=0o600)
    return target


def remove_secret(paths: Paths, name: str, key: str) -> bool:
    """Delete one secret; return whether it existed."""
    check_key(key)
    try:
        paths.secret_file(name, key).unlink()
    except FileNotFoundError:
        return False
    return True


def stored_keys(paths: Paths, name: str) -> list[str]:
    """Return the keys stored for instance ``name``."""
    folder = paths.secrets_dir(name)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and SECRET_KEY_RE.fullmatch(p.name))


def describe(paths: Paths, name: str, recipe: Recipe) -> list[SecretInfo]:
    """Return every secret the recipe uses or the instance stores, with whether it is set."""
    stored = set(stored_keys(paths, name))
    by_key = {key: env for env, key in recipe.run.secrets.items()}
    return [SecretInfo(key, by_key.get(key), key in stored) for key in sorted(stored | set(by_key))]


def missing(paths: Paths, name: str, recipe: Recipe) -> list[tuple[str, str]]:
    """Return ``(env, key)`` of each secret the recipe needs that is not stored."""
    return [(env, key) for env, key in recipe.run.secrets.items() if not paths.secret_file(name, key).is_file()]


def environment(paths: Paths, name: str, recipe: Recipe) -> dict[str, str]:
    """Return the recipe's secrets that are stored, as environment values (for install steps)."""
    env: dict[str, str] = {}
    for var, key in recipe.run.secrets.items():
        with contextlib.suppress(FileNotFoundError):
            env[var] = os.fsdecode(paths.secret_file(name, key).read_bytes())
    return env
