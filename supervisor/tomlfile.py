"""Reading TOML settings files, with one-line errors naming the file.

Imports nothing above ``errors``; the one place that reads TOML (``tomllib``).
"""

from __future__ import annotations

import tomllib
import typing as t

if t.TYPE_CHECKING:
    from pathlib import Path

    from supervisor.errors import SupervisorError

__all__ = ["load_toml", "tomllib"]


def load_toml(path: Path, error: type[SupervisorError], *, missing: str) -> dict[str, t.Any]:
    """Parse the TOML file at ``path``.

    Raises
    ------
    SupervisorError
        ``error``, naming the file, when it is missing (followed by the ``missing`` hint),
        unreadable or not valid TOML.
    """
    where = f"config file '{path}'"
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as e:
        msg = f"{where}: not found. {missing}"
        raise error(msg) from e
    except OSError as e:
        msg = f"{where}: cannot be read ({e.strerror}). Check its permissions."
        raise error(msg) from e
    except tomllib.TOMLDecodeError as e:
        msg = f"{where}: invalid TOML ({e}). Fix the syntax."
        raise error(msg) from e
