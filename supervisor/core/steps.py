"""Recipe install steps: each one run with ``bash -c``, logged, timed out, and reported when it fails.

Of ours it imports only ``_proc`` and ``errors``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import time
import typing as t
from pathlib import Path

from supervisor import _proc
from supervisor.errors import InstallError

if t.TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

LineFn = t.Callable[[str], None]
"""Receives one human line per install event, such as ``"[2/3] ./compile"``."""

_KILL_GRACE = 5.0


def run_install_steps(
    steps: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    on_line: LineFn | None = None,
    step_timeout: float | None = None,
    instance: str | None = None,
) -> None:
    """Run each step with ``bash -c`` in ``cwd``, appending its output to ``log_path``.

    ``env`` is the complete environment of every step. Each step gets a header
    line in the log, and ``on_line`` hears ``"[i/n] step"`` before it starts.
    ``instance`` names the instance in the hints of the errors.

    Raises
    ------
    InstallError
        When a step exits non-zero, times out (its process group is killed) or
        cannot start; ``step`` and ``log_tail`` are filled in.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    total = len(steps)
    again = f"supervisor install {instance or 'NAME'}"
    for index, step in enumerate(steps, start=1):
        label = f"[{index}/{total}] {step}"
        if on_line is not None:
            on_line(label)
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        with log_path.open("ab") as log:
            log.write(f"==> {label}  ({stamp})\n".encode())
            log.flush()
            started = time.monotonic()
            try:
                process = _proc.spawn(["bash", "-c", step], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
            except OSError as e:
                log.write(f"<== could not start: {e}\n".encode())
                msg = (
                    f"install step {index}/{total} '{step}' could not start ({e}). "
                    f"Check that bash is installed and {cwd} is a folder."
                )
                raise InstallError(msg, step=step, log_tail=log_tail(log_path)) from e
            rc = _wait_step(process, step_timeout)
            took = time.monotonic() - started
            status = "timeout" if rc is None else rc
            log.write(f"<== exit {status} after {took:.1f}s\n".encode())
        if rc is None:
            msg = (
                f"install step {index}/{total} '{step}' timed out after "
                f"{step_timeout:g}s and was killed. See the log at {log_path}; "
                f"fix the cause or raise the timeout, and run '{again}'."
            )
            raise InstallError(msg, step=step, log_tail=log_tail(log_path))
        if rc != 0:
            msg = (
                f"install step {index}/{total} '{step}' failed with exit code {rc}. "
                f"See the log at {log_path}; "
                f"fix the cause and run '{again}'."
            )
            raise InstallError(msg, step=step, log_tail=log_tail(log_path))


def _wait_step(process: subprocess.Popen[bytes], timeout: float | None) -> int | None:
    """Wait for a step; on timeout (``None``) or Ctrl-C kill its process group."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return None
    except BaseException:
        _kill_group(process)
        raise


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the step's process group: SIGTERM, a grace period, then SIGKILL."""
    # spawn() starts a new session, so the step's pid is also its process group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(_KILL_GRACE)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def log_tail(path: Path, lines: int = 20) -> str:
    """Return the last ``lines`` lines of the file at ``path`` ("" if it is missing)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max(65536, 512 * lines)))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
