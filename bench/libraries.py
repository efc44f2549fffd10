"""What the hand-written hot paths save over the libraries beside them (README: "Why some paths skip a library").

Run: ``.venv/bin/python bench/libraries.py [--instances 200]``. Builds its own temp git checkouts and a
tmux server on a private socket (both removed at the end), and prints medians of repeated runs:

* HEAD of N checkouts: ``core.git.current_commit`` (reads ``.git/HEAD`` and refs) vs GitPython's
  ``Repo(path).head.commit.hexsha``, plus GitPython's import in a fresh interpreter;
* the process table ``ls`` reads: ``core.metrics._proc_infos`` (``/proc/<pid>/stat``) vs psutil's
  ``process_iter`` with the same fields, over every process of the machine;
* the tmux listing: ``TmuxBackend.list_sessions`` (one ``list-panes -a``) vs libtmux's ``Server.panes``
  (also one call), plus libtmux's import in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import git
import libtmux
import psutil

from supervisor.core import git as core_git
from supervisor.core import metrics
from supervisor.core.sessions.tmux import TmuxBackend


def median_ms(fn: t.Callable[[], object], repeat: int) -> float:
    """Return the median wall time of ``fn`` in milliseconds over ``repeat`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def import_ms(module: str, repeat: int = 7) -> float:
    """Return the median time to import ``module`` in a fresh interpreter, in milliseconds."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    runs = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(repeat)
    ]
    return statistics.median(runs) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200, help="checkouts and tmux sessions to read")
    parser.add_argument("--repeat", type=int, default=9, help="timed runs per figure")
    args = parser.parse_args()
    n = args.instances
    rows: list[tuple[str, float, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-libraries-") as tmp:
        origin = Path(tmp) / "origin"
        repo = git.Repo.init(origin, initial_branch="main")
        (origin / "bot.py").write_text("print('hi')\n")
        repo.index.add(["bot.py"])
        repo.index.commit("initial")
        repo.close()
        checkouts = []
        for i in range(n):
            dest = Path(tmp) / f"c{i}"
            subprocess.run(["git", "clone", "-q", "--shared", str(origin), str(dest)], check=True)
            checkouts.append(dest)

        def raw_heads() -> None:
            for path in checkouts:
                core_git.current_commit(path)

        def gitpython_heads() -> None:
            for path in checkouts:
                with git.Repo(path) as r:
                    r.head.commit.hexsha  # noqa: B018 - the read is the point

        rows.append(
            (
                f"HEAD of {n} checkouts",
                median_ms(raw_heads, args.repeat),
                median_ms(gitpython_heads, args.repeat),
                f"+ import git {import_ms('git'):.0f} ms",
            )
        )

    attrs = ["pid", "ppid", "name", "create_time", "status"]
    count = len(psutil.pids())
    rows.append(
        (
            f"process table, {count} processes",
            median_ms(lambda: metrics._proc_infos(None), args.repeat),
            median_ms(lambda: [p.info for p in psutil.process_iter(attrs)], args.repeat),
            "psutil loads in both",
        )
    )

    socket = f"bench-libraries-{time.monotonic_ns()}"
    backend = TmuxBackend(socket)
    server = libtmux.Server(socket_name=socket)
    try:
        for i in range(n):
            subprocess.run(["tmux", "-L", socket, "new-session", "-d", "-s", f"s{i}", "sleep 600"], check=True)

        def libtmux_sessions() -> None:
            # libtmux at its cheapest: one `list-panes -a` for every pane object, not a call per session.
            first: dict[str | None, str | None] = {}
            for pane in server.panes:
                first.setdefault(pane.session_name, pane.pane_pid)

        rows.append(
            (
                f"tmux listing, {n} sessions",
                median_ms(backend.list_sessions, args.repeat),
                median_ms(libtmux_sessions, args.repeat),
                f"+ import libtmux {import_ms('libtmux'):.0f} ms",
            )
        )
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], check=False, capture_output=True)
        backend._socket_path().unlink(missing_ok=True)

    print("| read | by hand | library | library / by hand | note |\n|---|---|---|---|---|")
    for name, ours, library, note in rows:
        print(f"| {name} | {ours:.1f} ms | {library:.1f} ms | {library / ours:.1f}x | {note} |")


if __name__ == "__main__":
    main()
