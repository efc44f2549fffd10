"""The real-Hummingbot figure (``make bench-hummingbot``): the first and the Nth ``new``, an update of N bots.

Hummingbot 2.16.0 comes as ``make test-hummingbot`` gets it: PyPI's sdist made a
git tree, the shared venv in ``$BOT_SUPERVISOR_CACHE/venvs`` (built once; pip is
not what is measured here). The Cython build (12-15 minutes on a busy 2-core
machine) is the one in ``$BOT_SUPERVISOR_CACHE/builds`` when there is one: the
first ``new`` then restores it too, and the report compares with the build time
recorded in that cache entry. ``BENCH_HB_COLD=1`` starts from an empty build
cache, so the first ``new`` of the run compiles.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import typing as t
from pathlib import Path

from common import REPO_DIR, du_kib, log, run, stats, timed, wait_until

if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

if t.TYPE_CHECKING:
    from figures import Ctx
    from peers import Ours

PASSWORD = "bot-supervisor bench password"  # a bench-only keystore password
BUILT = "no build for this key yet"


def _origin(ctx: Ctx) -> Path:
    """Return a git origin of Hummingbot 2.16.0 for this run (a clone of the cached tree)."""
    from tests.hummingbot.conftest import SDIST_VERSION, cache_dir
    from tests.hummingbot.source_tree import assemble

    folder = cache_dir() / "dl"
    sdist = folder / f"hummingbot-{SDIST_VERSION}.tar.gz"
    if not sdist.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(folder)]
        run([*argv, f"hummingbot=={SDIST_VERSION}"], env=ctx.env.env, timeout=600)
    tree = assemble(sdist, cache_dir() / "origin" / f"hummingbot-{SDIST_VERSION}")
    origin = ctx.env.root / "hummingbot-origin"
    run(["git", "clone", "-q", str(tree), str(origin)], env=ctx.env.env, timeout=300)
    return origin


def _commit(origin: Path, env: dict[str, str]) -> None:
    """Commit a change of one ``.py`` file (what most updates change): the build is reused."""
    module = origin / "hummingbot" / "client" / "settings.py"
    module.write_text(module.read_text() + "\n# changed by the benchmark\n")
    who = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "bench"}
    git_env = {**env, **who, "GIT_COMMITTER_EMAIL": "b@b"}
    run(["git", "commit", "-qam", "a .py change"], env=git_env, cwd=origin)


def _builds(home: Path, names: t.Sequence[str]) -> int:
    """Return how many builds the install logs of ``names`` record."""
    return sum((home / "instances" / n / "install.log").read_text(errors="replace").count(BUILT) for n in names)


def _state(ours: Ours, name: str) -> dict[str, t.Any]:
    listing = json.loads(run(ours.cli("ls", name, "--json"), env=ours.env).stdout)["instances"]
    return t.cast("dict[str, t.Any]", listing[0])


def _kill_and_wait(ctx: Ctx, ours: Ours, broker_url: str, name: str) -> float | None:
    """Return the seconds from ``kill -9`` of the bot until the agent has it running (ready) again."""
    from peers import Agent

    agent = Agent(ctx.procs, ours.env, broker_url, "benchhost", 10.0, 30.0, ctx.env.root / "agent-hummingbot.log")
    try:
        if not wait_until(lambda: (ours.home / "agent.sock").exists(), 60):
            log(f"hummingbot: the agent did not come up: {agent.log_tail()}")
            return None
        old = _state(ours, name)["pid"]
        log(f"hummingbot: kill -9 of {name} (pid {old}), the agent restarts it")
        started = time.perf_counter()
        os.kill(old, signal.SIGKILL)

        def back() -> bool:
            record = _state(ours, name)
            return bool(record["state"] == "running" and record["pid"] not in (None, old))

        if not wait_until(back, 600, 0.2):
            return None
        return time.perf_counter() - started
    finally:
        agent.stop()


def fig_hummingbot(ctx: Ctx) -> dict[str, t.Any]:
    """First and Nth ``new`` of one commit, ``update`` of N bots to one commit, ``start --all --wait``, RSS."""
    from supervisor.core.sharedenv import find_python
    from supervisor.errors import InstallError
    from tests.hummingbot.conftest import cache_dir

    try:
        find_python("python3.12", want="3.12")
    except InstallError as e:
        return {"ours": {"not_available": str(e)}}
    count = 3 if ctx.quick else 5
    origin = _origin(ctx)
    broker = ctx.mosquitto()
    ours = ctx.ours("hummingbot")
    password = ctx.env.root / "hummingbot-password"
    password.write_text(PASSWORD)
    password.chmod(0o600)
    builds = ours.home / "builds" if os.environ.get("BENCH_HB_COLD") else cache_dir() / "builds"
    settings = ["--set", f"venvs={cache_dir() / 'venvs'}", "--set", f"builds={builds}"]
    settings += ["--set", f"mqtt_port={broker.port}", "--secret", f"hummingbot-password=@{password}"]
    names = [f"hb{i:02d}" for i in range(1, count + 1)]

    def new(name: str) -> float:
        argv = ours.cli("new", name, "-r", "hummingbot-venv", "--repo", str(origin), "--ref", "main", *settings)
        return timed(argv, env=ours.env, timeout=3600)

    log(f"hummingbot: first new (build cache {builds}), then {count - 1} more")
    first = new(names[0])
    first_built = _builds(ours.home, names[:1]) == 1
    entry = Path(
        (ours.home / "instances" / names[0] / "checkout" / ".git" / "supervisor-buildcache").read_text().strip()
    )
    recorded = json.loads((entry / ".supervisor-complete").read_text())
    later = [new(name) for name in names[1:]]
    disk = {
        "first_instance_kib": du_kib(ours.home / "instances" / names[0]),
        "later_instance_kib": du_kib(ours.home / "instances" / names[1]),
        "build_entry_kib": du_kib(entry),
    }
    log(f"hummingbot: start --all --wait of {count} bots")
    started = time.perf_counter()
    run(ours.cli("start", "--all", "--wait"), env=ours.env, timeout=1800)
    start_all = time.perf_counter() - started
    listing = json.loads(run(ours.cli("ls", "--json"), env=ours.env).stdout)["instances"]
    rss = [r["rss"] / 2**20 for r in listing if r["rss"]]
    restart_after_kill = _kill_and_wait(ctx, ours, broker.url, names[0])
    log(f"hummingbot: update of {count} running bots to a commit that changes a .py")
    _commit(origin, ours.env)
    before = _builds(ours.home, names)
    started = time.perf_counter()
    updates = [timed(ours.cli("update", name), env=ours.env, timeout=3600) for name in names]
    update_all = time.perf_counter() - started
    builds = _builds(ours.home, names) - before
    run(ours.cli("stop", "--all"), env=ours.env, timeout=600, check=False)
    subprocess.run(ours.tmux("kill-server"), capture_output=True, check=False, timeout=30)
    return {
        "ours": {
            "count": count,
            "first_new": first,
            "first_built": first_built,
            "recorded_build_seconds": recorded.get("seconds"),
            "recorded_build_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(recorded.get("built_at", 0))),
            "later_new": stats(later),
            "later_new_samples": later,
            "start_all_wait": start_all,
            "rss_mib": stats(rss),
            "rss_total_mib": sum(rss),
            "restart_after_kill": restart_after_kill,
            "update_all": update_all,
            "update_each": stats(updates),
            "update_builds": builds,
            "disk": disk,
        }
    }
