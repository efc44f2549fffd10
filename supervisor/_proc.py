"""The one place that starts subprocesses (besides libtmux's own funnel).

Imports nothing of ours but :mod:`supervisor.errors`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import typing as t
from pathlib import Path

logger = logging.getLogger(__name__)

TimeoutExpired = subprocess.TimeoutExpired
STDOUT = subprocess.STDOUT


def run(
    argv: t.Sequence[str],
    *,
    cwd: Path | None = None,
    env: t.Mapping[str, str] | None = None,
    timeout: float | None = 30.0,
    check: bool = False,
    stdin: int | None = subprocess.DEVNULL,
    stdout: t.IO[t.Any] | int | None = subprocess.PIPE,
    stderr: t.IO[t.Any] | int | None = subprocess.PIPE,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion and return its result (text mode)."""
    logger.debug("run %s (cwd=%s)", list(argv), cwd)
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        timeout=timeout,
        check=check,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=True,
        errors="replace",
    )


def spawn(
    argv: t.Sequence[str],
    *,
    cwd: Path | None = None,
    env: t.Mapping[str, str] | None = None,
    stdout: t.IO[t.Any] | int | None = None,
    stderr: t.IO[t.Any] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` without waiting (used for streaming install output)."""
    logger.debug("spawn %s (cwd=%s)", list(argv), cwd)
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


def exec_replace(argv: t.Sequence[str], env: t.Mapping[str, str] | None = None) -> t.NoReturn:
    """Replace this process with ``argv`` (``attach`` hands the terminal over)."""
    if env is None:
        os.execvp(argv[0], list(argv))
    os.execvpe(argv[0], list(argv), dict(env))
