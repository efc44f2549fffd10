"""File helpers every writer shares: one advisory lock and one atomic replace."""

from __future__ import annotations

import contextlib
import fcntl
import os
import typing as t
from pathlib import Path

if t.TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block; wait for it if taken."""
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def atomic_write(path: Path, data: str | bytes, *, mode: int | None = None, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old file or the new one, never a part.

    The temporary file is made by ``mkstemp`` in the same folder, so it is mode 600 from its
    creation; ``mode`` is applied before any byte is written (a secret is never readable by others,
    even for a moment). With ``sync`` the data reaches the disk before the rename. On any failure
    the temporary file is removed and the error is raised; ``path`` is left as it was.
    """
    import tempfile  # only writers pay for it (it pulls in random, shutil...): `ls` never writes

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
