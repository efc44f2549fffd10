"""Keep every core busy for a bounded time, to run the test suite as a loaded CI machine would.

Usage: ``python scripts/burn.py --seconds N [--workers K]``. One busy process per core (or K); each
stops by itself at the deadline, and SIGTERM/SIGINT to the parent ends them all at once.
Prints one line with the worker pids when they are running, and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time


def _spin(deadline: float) -> None:
    """Burn one core until ``deadline`` (monotonic), checking the clock only now and then."""
    x = 0
    while time.monotonic() < deadline:
        for i in range(20_000):
            x ^= i * i
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    """Start the workers, wait for them, and stop them early on SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, required=True, help="how long to burn (each worker stops by itself)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="busy processes (default: one per core)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 4 * 3600:
        parser.error("--seconds must be more than 0 and at most 14400 (4 hours)")
    if not 0 < args.workers <= 256:
        parser.error("--workers must be between 1 and 256")
    deadline = time.monotonic() + args.seconds
    workers: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        sys.exit(0)

    # Handlers first: a stop that comes while the workers are being made still ends those made so far.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _spin(deadline)
        workers.append(pid)
    print(f"burn: {len(workers)} worker(s) for {args.seconds:g} s: {' '.join(map(str, workers))}", flush=True)
    for pid in workers:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
