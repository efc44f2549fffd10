"""One function per figure (issues 5, 12 and 13); each returns a JSON-able dict of measurements.

The scaling figures (ls, start, agent) are measured per size by :func:`scaling`, which grows
one fleet per tool (ours, supervisord, pm2) and calls ``start_at``, ``ls_at``, then, with one
agent over our fleet, ``agent_at`` and ``ls_agent_at``; :func:`fig_dashboard` has fleets of its own.
:func:`fig_react` times the agent's state records after a ``kill -9``, a ``stop`` and a ``start``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import typing as t
import uuid
from pathlib import Path

import gitrepo
import psutil
from common import (
    PYTHON,
    SUPERVISOR,
    Env,
    EventStream,
    Procs,
    bot_pids,
    du_kib,
    free_port,
    log,
    run,
    stats,
    timed,
    wait_until,
)
from peers import Agent, Mosquitto, Ours, Pm2, Supervisord, agent_available, bench_origin, wait_count


@dataclasses.dataclass
class Ctx:
    """What every figure gets: the isolated environment, the process book and the run's settings."""

    env: Env
    procs: Procs
    quick: bool
    sizes: list[int]
    _origin: tuple[Path, Path] | None = None
    _mosquitto: Mosquitto | None = None
    _agent_reason: str | None = "unchecked"
    _start_options: list[str] | None = None
    no_socket: str | None = None
    """Why the first agent answered on no snapshot socket (later sizes then wait only briefly)."""

    def origin(self) -> tuple[Path, Path]:
        """Return the bench bot's (git origin, recipe), made once."""
        if self._origin is None:
            self._origin = bench_origin(self.env)
        return self._origin

    def mosquitto(self) -> Mosquitto:
        """Return the run's private broker, started once."""
        if self._mosquitto is None:
            self._mosquitto = Mosquitto(self.env, self.procs)
        return self._mosquitto

    def agent_missing(self) -> str | None:
        """Return why the agent cannot be measured, or ``None`` when it can."""
        if self._agent_reason == "unchecked":
            self._agent_reason = agent_available(self.env.env)
        return self._agent_reason

    def start_options(self) -> list[str]:
        """Return the options ``supervisor start --help`` lists (read once)."""
        if self._start_options is None:
            text = run([SUPERVISOR, "start", "--help"], env=self.env.env, check=False).stdout
            self._start_options = sorted(set(re.findall(r"--[a-z][a-z-]*", text)))
        return self._start_options

    def ours(self, label: str) -> Ours:
        """Return a fresh supervisor home with its own tmux socket."""
        origin, recipe = self.origin()
        return Ours(
            self.env, self.procs, self.env.root / f"home-{label}", f"{self.env.tmux_socket}-{label}", origin, recipe
        )


HEAVY = ("git", "paho", "yaml", "psutil", "libtmux", "click")


def _imported(argv_tail: list[str], env: dict[str, str]) -> list[str]:
    """Return the heavy third-party modules the real ``supervisor`` command imports for ``argv_tail``."""
    # -X importtime through the environment: the console script itself runs, fast paths and all.
    proc = run([SUPERVISOR, *argv_tail], env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, check=False)
    found = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            top = line.rsplit("|", 1)[1].strip().split(".")[0]
            if top in HEAVY:
                found.add(top)
    return sorted(found)


# -- startup ----------------------------------------------------------------------------------


def fig_startup(ctx: Ctx) -> dict[str, t.Any]:
    """Startup cost of the ``supervisor`` command, and which heavy modules each command imports."""
    ours = ctx.ours("startup")
    origin, recipe = ctx.origin()
    run(ours.cli("new", "st1", "-r", str(recipe), "--repo", str(origin)), env=ours.env)
    reps = 5 if ctx.quick else 20
    rows = {
        "python -c pass": [PYTHON, "-c", "pass"],
        "python -c 'import supervisor.cli'": [PYTHON, "-c", "import supervisor.cli"],
        "supervisor --version": [SUPERVISOR, "--version"],
        "supervisor ls --json (1 stopped instance)": [SUPERVISOR, "ls", "--json"],
    }
    for argv in rows.values():
        timed(argv, env=ours.env)
    samples: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(reps):
        for key, argv in rows.items():
            samples[key].append(timed(argv, env=ours.env))
    imports = {
        "--version": _imported(["--version"], ours.env),
        "ls --json": _imported(["ls", "--json"], ours.env),
        "status st1 --json": _imported(["status", "st1", "--json"], ours.env),
    }
    return {"times": {k: stats(v) for k, v in samples.items()}, "imports": imports}


# -- scaling figures -----------------------------------------------------------------------------


@dataclasses.dataclass
class Fleets:
    """One fleet of N bench bots per tool."""

    ours: Ours
    supd: Supervisord
    pm2: Pm2


def _all_up(fleets: Fleets, n: int) -> None:
    fleets.ours.start_all()
    fleets.supd.start_all()
    fleets.pm2.delete_all()
    fleets.pm2.start_all()
    for what, counter in (
        ("ours", fleets.ours.running),
        ("supervisord", fleets.supd.running),
        ("pm2", fleets.pm2.running),
    ):
        if not wait_count(counter, n, 60):
            msg = f"{what}: only {counter()} of {n} bots came up"
            raise RuntimeError(msg)


def _timed_start(argv: list[str], env: dict[str, str], counter: t.Callable[[], int], n: int) -> tuple[float, float]:
    """Return (command wall time, time until all ``n`` bots are alive) for one start-all."""
    start = time.perf_counter()
    run(argv, env=env, timeout=900)
    command = time.perf_counter() - start
    if not wait_count(counter, n, 120):
        msg = f"{argv[0]}: only {counter()} of {n} bots alive after start"
        raise RuntimeError(msg)
    return command, time.perf_counter() - start


def start_at(ctx: Ctx, fleets: Fleets, n: int) -> dict[str, t.Any]:
    """Time a start-all of ``n`` stopped bots with each tool; leaves every fleet running.

    ``ours`` is ``supervisor start --all`` as it comes (whatever its default is); ``ours --wait`` is
    measured too when ``start --help`` offers ``--wait`` (the bench then records both).
    """
    target = n == 100
    reps = 2 if ctx.quick else (20 if target else 3)
    with_wait = "--wait" in ctx.start_options()
    ours, supd, pm2 = fleets.ours, fleets.supd, fleets.pm2
    tools = ["ours", *(["ours --wait"] if with_wait else []), "supervisord", "pm2"]
    out: dict[str, dict[str, list[float]]] = {k: {"command": [], "all_alive": []} for k in tools}

    def record(tool: str, figures: tuple[float, float]) -> None:
        out[tool]["command"].append(figures[0])
        out[tool]["all_alive"].append(figures[1])

    for rep in range(reps):
        began = time.perf_counter()
        ours.kill_server()
        record("ours", _timed_start(ours.cli("start", "--all"), ours.env, ours.running, n))
        # At the target size --wait runs every other rep (10 of 20): it is no target, only the old behaviour.
        if with_wait and (not target or rep % 2 == 0):
            ours.kill_server()
            record("ours --wait", _timed_start(ours.cli("start", "--all", "--wait"), ours.env, ours.running, n))
        supd.stop_all()
        record("supervisord", _timed_start(supd.ctl("start", "all"), supd.env, supd.running, n))
        pm2.delete_all()
        record("pm2", _timed_start(pm2.cmd("start", str(pm2.ecosystem)), pm2.env, pm2.running, n))
        last = ", ".join(f"{k} {v['all_alive'][-1]:.2f}s" for k, v in out.items() if v["all_alive"])
        log(f"  start-all n={n} rep {rep + 1}/{reps}: {last} (rep {time.perf_counter() - began:.1f}s)")
    result: dict[str, t.Any] = {tool: {k: stats(v) for k, v in figures.items()} for tool, figures in out.items()}
    result["default_waits_for_ready"] = "--wait" not in ctx.start_options()
    return result


VOLATILE = ("cpu_percent", "rss", "uptime")


def _ls_reps(ctx: Ctx, n: int) -> int:
    # The targets are judged at the largest size and the growth from the smallest: 20 runs there.
    return 5 if ctx.quick else (20 if n in (min(ctx.sizes), max(ctx.sizes)) else 10)


def _time_round_robin(commands: dict[str, tuple[list[str], dict[str, str]]], reps: int) -> dict[str, t.Any]:
    """Run each command once to warm up, then ``reps`` rounds of all of them; return stats per key."""
    samples: dict[str, list[float]] = {k: [] for k in commands}
    for argv, env in commands.values():
        run(argv, env=env, check=False)
    for _ in range(reps):
        for key, (argv, env) in commands.items():
            start = time.perf_counter()
            run(argv, env=env, check=False)  # supervisorctl status exits 3 when a program is not running
            samples[key].append(time.perf_counter() - start)
    return {k: stats(v) for k, v in samples.items()}


def ls_at(ctx: Ctx, fleets: Fleets, n: int) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
    """Time listing ``n`` running bots with each tool, no agent running; return (figures, our listing)."""
    ours = fleets.ours
    commands = {
        "ours": (ours.cli("ls", "--json"), ours.env),
        "ours --no-foreign": (ours.cli("ls", "--json", "--no-foreign"), ours.env),
        "supervisorctl": (fleets.supd.ctl("status"), fleets.supd.env),
        "pm2": (fleets.pm2.cmd("jlist"), fleets.pm2.env),
        "tmux": (ours.tmux("list-sessions"), ours.env),
    }
    listing = json.loads(run(ours.cli("ls", "--json"), env=ours.env).stdout)
    running = sum(1 for s in listing["instances"] if s["state"] == "running")
    return {"running_listed": running, **_time_round_robin(commands, _ls_reps(ctx, n))}, listing


def _comparable(listing: dict[str, t.Any]) -> dict[str, t.Any]:
    out = {k: v for k, v in listing.items() if k != "instances"}
    out["instances"] = {
        s["name"]: {k: v for k, v in s.items() if k not in VOLATILE} for s in listing.get("instances", [])
    }
    return out


def _differences(direct: dict[str, t.Any], served: dict[str, t.Any]) -> list[str]:
    a, b = _comparable(direct), _comparable(served)
    diffs = [f"key {k!r} only on one path" for k in sorted(set(a) ^ set(b))]
    diffs += [f"{key} differ" for key in sorted(set(a) & set(b) - {"instances"}) if a[key] != b[key]]
    ia, ib = a.get("instances", {}), b.get("instances", {})
    diffs += [f"instance {k} only on one path" for k in sorted(set(ia) ^ set(ib))]
    for name in sorted(set(ia) & set(ib)):
        fields = sorted(k for k in set(ia[name]) | set(ib[name]) if ia[name].get(k) != ib[name].get(k))
        if fields:
            diffs.append(f"{name}: {', '.join(fields)}")
    return diffs


def agent_socket_answers(path: Path, timeout: float) -> str | None:
    """Wait up to ``timeout`` s for the agent's snapshot socket to answer an ``ls``; return why not, or ``None``."""
    deadline = time.monotonic() + timeout
    reason = f"no {path.name} in $SUPERVISOR_HOME (this agent serves no snapshot socket)"
    while time.monotonic() < deadline:
        if path.exists():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(2.0)
                    sock.connect(str(path))
                    sock.sendall(b'{"op": "ls", "names": [], "foreign": false}\n')
                    data = b""
                    while chunk := sock.recv(65536):
                        data += chunk
                reply = json.loads(data)
                if isinstance(reply, dict) and reply.get("ok") is True:
                    return None
                reason = f"{path.name} answered {data[:120]!r}"
            except (OSError, ValueError) as e:
                reason = f"{path.name} did not answer: {e!r}"
        time.sleep(0.2)
    return reason


def ls_agent_at(ctx: Ctx, fleets: Fleets, n: int, direct: dict[str, t.Any]) -> dict[str, t.Any]:
    """Time ``ls --json`` while an agent serves its snapshot socket; compare its records with the direct path's."""
    ours = fleets.ours
    missing = agent_socket_answers(ours.home / "agent.sock", 10.0 if ctx.no_socket is None else 1.0)
    if missing is not None:
        ctx.no_socket = missing
        return {"ours (agent)": {"not_available": missing}}
    commands = {
        "ours (agent)": (ours.cli("ls", "--json"), ours.env),
        "ours --no-foreign (agent)": (ours.cli("ls", "--json", "--no-foreign"), ours.env),
    }
    served = json.loads(run(ours.cli("ls", "--json"), env=ours.env).stdout)
    diffs = _differences(direct, served)
    figures = _time_round_robin(commands, _ls_reps(ctx, n))
    return {**figures, "same_records": not diffs, "record_differences": diffs[:10]}


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def _watch(pids: dict[str, int | None], window: float) -> dict[str, t.Any]:
    """Sample RSS every second and CPU time over ``window`` seconds for each pid."""
    procs = {k: psutil.Process(p) for k, p in pids.items() if p}
    first = {k: _cpu_seconds(p) for k, p in procs.items()}
    rss: dict[str, list[int]] = {k: [] for k in procs}
    start = time.perf_counter()
    while time.perf_counter() - start < window:
        for k, p in procs.items():
            with contextlib.suppress(psutil.Error):
                rss[k].append(p.memory_info().rss)
        time.sleep(1.0)
    elapsed = time.perf_counter() - start
    out: dict[str, t.Any] = {}
    for k, p in procs.items():
        try:
            cpu = _cpu_seconds(p) - first[k]
        except psutil.Error as e:
            out[k] = {"error": f"process gone during the window: {e}"}
            continue
        out[k] = {
            "rss_max_mib": max(rss[k]) / 2**20 if rss[k] else None,
            "rss_median_mib": sorted(rss[k])[len(rss[k]) // 2] / 2**20 if rss[k] else None,
            "cpu_percent": 100.0 * cpu / elapsed,
            "window_s": round(elapsed, 1),
        }
    return out


@contextlib.contextmanager
def _fleet_agent(ctx: Ctx, fleets: Fleets, n: int) -> t.Iterator[tuple[Agent | None, str | None]]:
    """Run an agent (default intervals) over our fleet; yield (agent, None) or (None, why not)."""
    missing = ctx.agent_missing()
    if missing is not None:
        yield None, missing
        return
    agent = Agent(
        ctx.procs, fleets.ours.env, ctx.mosquitto().url, "benchhost", 10.0, 30.0, ctx.env.root / f"agent-{n}.log"
    )
    try:
        time.sleep(5.0)  # start-up and first state pass are not the steady state
        if not agent.alive():
            yield None, f"the agent exited at start: {agent.log_tail()}"
        else:
            yield agent, None
    finally:
        agent.stop()


def agent_at(ctx: Ctx, fleets: Fleets, n: int, agent: Agent | None, missing: str | None) -> dict[str, t.Any]:
    """Agent RSS and CPU beside the pm2 daemon's and supervisord's, with ``n`` idle bots each."""
    from mqttclient import Counter

    window = (5.0 if n < max(ctx.sizes) else 10.0) if ctx.quick else (15.0 if n < max(ctx.sizes) else 60.0)
    pids: dict[str, int | None] = {"pm2": fleets.pm2.pid, "supervisord": fleets.supd.pid}
    counter = None
    if agent is not None:
        pids["ours"] = agent.proc.pid
        counter = Counter(ctx.mosquitto().port, "hbot/+/hb")
    try:
        log(f"  agent/peer resources n={n} over {window:.0f}s")
        start = time.perf_counter()
        result = _watch(pids, window)
        if counter is not None and "ours" in result:
            result["ours"]["heartbeats"] = len(counter.since(start))
            result["ours"]["heartbeats_expected"] = int(n * window / 10.0)
    finally:
        if counter is not None:
            counter.close()
    if agent is not None and not agent.alive():
        missing = f"the agent exited during the window: {agent.log_tail()}"
    if missing is not None:
        result["ours"] = {"not_available": missing}
    return result


def scaling(ctx: Ctx, selected: set[str]) -> dict[str, t.Any]:
    """Grow one fleet per tool through ``ctx.sizes`` and measure the selected per-size figures.

    Per size: start-all, ``ls`` with no agent, then one agent over our fleet for its resources (idle
    window first, so no request disturbs it) and ``ls`` answered through its snapshot socket.
    """
    results: dict[str, dict[str, t.Any]] = {k: {} for k in ("ls", "start", "agent") if k in selected}
    fleets = Fleets(ctx.ours("fleet"), Supervisord(ctx.env, ctx.procs), Pm2(ctx.env, ctx.procs))
    try:
        for n in sorted(ctx.sizes):
            log(f"scaling: growing every fleet to {n}")
            t0 = time.perf_counter()
            fleets.ours.grow(n)
            log(f"  {n} instances created with `supervisor new` in {time.perf_counter() - t0:.1f}s")
            fleets.supd.grow(n)
            fleets.pm2.grow(n)
            if "start" in selected:
                t0 = time.perf_counter()
                results["start"][n] = start_at(ctx, fleets, n)
                log(f"  start-all n={n} took {time.perf_counter() - t0:.0f}s")
            else:
                _all_up(fleets, n)
            direct: dict[str, t.Any] = {}
            if "ls" in selected:
                log(f"  ls n={n}, no agent")
                results["ls"][n], direct = ls_at(ctx, fleets, n)
            if selected & {"ls", "agent"}:
                with _fleet_agent(ctx, fleets, n) as (agent, missing):
                    if "agent" in selected:
                        results["agent"][n] = agent_at(ctx, fleets, n, agent, missing)
                    if "ls" in selected:
                        log(f"  ls n={n}, agent running")
                        if agent is None:
                            results["ls"][n]["ours (agent)"] = {"not_available": missing}
                        else:
                            results["ls"][n].update(ls_agent_at(ctx, fleets, n, direct))
    finally:
        log("scaling: tearing the fleets down")
        fleets.pm2.kill()
        fleets.supd.shutdown()
        fleets.ours.kill_server()
    return results


# -- MQTT round trip ---------------------------------------------------------------------------------


def _round_trips(
    requester: t.Any, topic: str, count: int, data: dict[str, t.Any] | None = None
) -> tuple[list[float], int, dict[str, t.Any]]:
    samples: list[float] = []
    failures = 0
    first: dict[str, t.Any] = {}
    for i in range(count):
        try:
            rtt, reply = requester.request(topic, data=data)
        except Exception:  # noqa: BLE001 - a lost reply counts as a failure, the run goes on
            failures += 1
            continue
        if i == 0:
            first = reply
        status = reply.get("data", {}).get("status") if isinstance(reply.get("data"), dict) else None
        if status not in (200, "200"):
            failures += 1
        samples.append(rtt)
    return samples, failures, first


def fig_mqtt(ctx: Ctx) -> dict[str, t.Any]:
    """Status request -> reply through the agent, beside a bare paho echo pair on the same broker."""
    from mqttclient import Echo, Requester

    count = 200 if ctx.quick else 1000
    broker = ctx.mosquitto()
    result: dict[str, t.Any] = {"requests": count}
    echo, requester = Echo(broker.port, "bench/echo/req"), Requester(broker.port, "echo-req")
    try:
        _round_trips(requester, "bench/echo/req", 20)
        samples, failures, _ = _round_trips(requester, "bench/echo/req", count)
        result["echo"] = {**_ms(stats(samples)), "failures": failures}
    finally:
        requester.close()
        echo.close()
    missing = ctx.agent_missing()
    if missing is not None:
        result["ours"] = {"not_available": missing}
        return result
    ours = ctx.ours("mqtt")
    ours.grow(10)
    ours.start_all()
    agent = Agent(ctx.procs, ours.env, broker.url, "benchhost", 10.0, 30.0, ctx.env.root / "agent-mqtt.log")
    requester = Requester(broker.port, "agent-req")
    topic = f"supervisor/benchhost/{ours.names[0]}/status"
    try:
        ok = False
        for _ in range(50):  # wait until the agent answers
            with contextlib.suppress(Exception):
                requester.request(topic, timeout=0.5)
                ok = True
                break
            if not agent.alive():
                break
        if not ok:
            result["ours"] = {"not_available": f"no reply on {topic}; agent output: {agent.log_tail()}"}
            return result
        _round_trips(requester, topic, 20)
        samples, failures, first = _round_trips(requester, topic, count)
        result["ours"] = {**_ms(stats(samples)), "failures": failures, "first_reply": first}
        result["relay"] = _relayed_status(ours, requester, 50 if ctx.quick else 200)
    finally:
        requester.close()
        agent.stop()
        ours.kill_server()
    return result


def _relayed_status(ours: Ours, requester: t.Any, count: int) -> dict[str, t.Any]:
    """Hummingbot's ``status`` (sync) relayed into example-bot's console: typed, answered, read back."""
    name = "relay-ex"
    run(ours.cli("new", name, "-r", "example-bot", "--set", "interval=0.5"), env=ours.env, timeout=120)
    run(ours.cli("start", name, "--wait"), env=ours.env, timeout=120)
    data = {"async_backend": False}
    requester.request(f"hbot/{name}/start", data=data)  # a strategy runs: status answers 200 with its line
    topic = f"hbot/{name}/status"
    _round_trips(requester, topic, 5, data)
    samples, failures, first = _round_trips(requester, topic, count, data)
    return {**_ms(stats(samples)), "failures": failures, "first_reply": first}


def _ms(figures: dict[str, t.Any]) -> dict[str, t.Any]:
    out = {k: v * 1000 if isinstance(v, float) else v for k, v in figures.items() if k != "samples"}
    out["unit"] = "ms"
    return out


# -- remote restart ------------------------------------------------------------------------------------


def fig_restart(ctx: Ctx) -> dict[str, t.Any]:
    """``restart`` request -> reply, and -> first heartbeat after it, for the example bot."""
    from mqttclient import Counter, Requester

    missing = ctx.agent_missing()
    if missing is not None:
        return {"ours": {"not_available": missing}}
    reps = 3 if ctx.quick else 20
    broker = ctx.mosquitto()
    ours = ctx.ours("restart")
    run(ours.cli("new", "ex1", "-r", "example-bot"), env=ours.env, timeout=120)
    run(ours.cli("start", "ex1"), env=ours.env, timeout=120)
    # A 1 s heartbeat interval so the wait for the next beat does not dominate (documented).
    agent = Agent(ctx.procs, ours.env, broker.url, "benchhost", 1.0, 30.0, ctx.env.root / "agent-restart.log")
    counter = Counter(broker.port, "hbot/ex1/hb")
    requester = Requester(broker.port, "restart-req")
    replies: list[float] = []
    beats: list[float] = []
    errors: list[str] = []
    try:
        topic = "supervisor/benchhost/ex1/restart"
        if not wait_count(lambda: len(counter.since(0.0)), 1, 15):
            return {"ours": {"not_available": f"no heartbeat on hbot/ex1/hb; agent output: {agent.log_tail()}"}}
        for rep in range(reps):
            start = time.perf_counter()
            try:
                rtt, reply = requester.request(topic, timeout=60)
            except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                errors.append(f"rep {rep}: no reply ({e!r})")
                continue
            if reply.get("data", {}).get("status") not in (200, "200"):
                errors.append(f"rep {rep}: {json.dumps(reply)[:300]}")
            replies.append(rtt)
            replied = start + rtt
            if wait_count(lambda replied=replied: len(counter.since(replied, "hbot/ex1/hb")), 1, 10):
                beats.append(counter.since(replied, "hbot/ex1/hb")[0] - start)
            else:
                errors.append(f"rep {rep}: no heartbeat within 10 s after the reply")
            time.sleep(0.5)
    finally:
        requester.close()
        counter.close()
        agent.stop()
        ours.kill_server()
    return {"ours": {"reply": stats(replies), "heartbeat": stats(beats), "errors": errors, "heartbeat_interval": 1.0}}


# -- new ---------------------------------------------------------------------------------------------------


def fig_new(ctx: Ctx) -> dict[str, t.Any]:
    """``supervisor new`` of the 2nd..21st instance of one big repository, beside plain ``git clone``."""
    repo = gitrepo.big_repo(commits=500) if ctx.quick else gitrepo.big_repo()
    count = 5 if ctx.quick else 21  # 20 timings of the 2nd..21st instance
    reps = 3 if ctx.quick else 10
    _, recipe = ctx.origin()
    ours = ctx.ours("new")
    log(f"new: {count} instances of {repo.name}")
    clones = ctx.env.root / "clones"
    clones.mkdir()
    first = timed(ours.cli("new", "n01", "-r", str(recipe), "--repo", str(repo)), env=ours.env, timeout=600)
    mirror = next(p for p in (ours.home / "mirrors").iterdir() if p.is_dir())
    peers: dict[str, list[float]] = {"no_local": [], "local": [], "shared": []}
    argvs = {
        "no_local": ["git", "clone", "-q", "--no-local", str(repo)],
        "local": ["git", "clone", "-q", str(repo)],
        # What `new` cannot go below: git writing the work tree (no objects copied).
        "shared": ["git", "clone", "-q", "--shared", str(mirror)],
    }

    def settle() -> None:
        # Each timing starts with no dirty pages left by the one before (they are GBs in all).
        subprocess.run(["sync"], check=False, timeout=120)

    def peer_round() -> None:
        for kind, argv in argvs.items():
            dest = clones / f"{kind}{len(peers[kind])}"
            settle()
            peers[kind].append(timed([*argv, str(dest)], env=ctx.env.env, timeout=600))
            if dest.name != "no_local0":  # kept for the disk figure
                shutil.rmtree(dest, ignore_errors=True)

    later: list[float] = []
    every = max(1, (count - 1) // reps)
    for i in range(2, count + 1):  # ours and the peers interleaved, so drift hits both
        settle()
        later.append(timed(ours.cli("new", f"n{i:02d}", "-r", str(recipe), "--repo", str(repo)), env=ours.env))
        if (i - 2) % every == 0 and len(peers["no_local"]) < reps:
            peer_round()
    while len(peers["no_local"]) < reps:
        peer_round()
    plain, local, shared = peers["no_local"], peers["local"], peers["shared"]
    checkout = ours.home / "instances" / "n02" / "checkout"
    disk = {
        "instance_checkout_kib": du_kib(checkout),
        "instance_dir_kib": du_kib(ours.home / "instances" / "n02"),
        "work_tree_kib": du_kib(checkout, exclude_git=True),
        "mirror_kib": du_kib(ours.home / "mirrors"),
        "plain_clone_kib": du_kib(clones / "no_local0"),
    }
    facts = gitrepo.repo_facts(repo)
    for folder in clones.iterdir():
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "repo": facts,
        "first": first,
        "later": stats(later),
        "later_samples": later,
        "git_clone_no_local": stats(plain),
        "git_clone_local": stats(local),
        "git_clone_shared": stats(shared),
        "disk": disk,
    }


# -- dashboard event stream ------------------------------------------------------------------------


class _StreamReader(EventStream):
    """One ``/events`` stream read like a browser tab would: bytes received, timed, and its first megabyte."""

    def __init__(self, port: int) -> None:
        self.head = b""
        super().__init__(port, timeout=30.0)

    def received(self, data: bytes, now: float) -> None:
        """Keep the start of the stream."""
        if len(self.head) < 1_000_000:
            self.head += data


DASHBOARD_SIZES = (40, 200)
"""Fleet sizes of the dashboard figure (the issue-21 targets): bots that print a line a second."""


def fig_dashboard(ctx: Ctx) -> dict[str, t.Any]:
    """Bytes one open dashboard tab (no console open) receives through ``/events`` at N printing bots.

    Each bot runs under a real agent, and a Hummingbot-like bridge publishes one ``log`` line a
    second for each, as Hummingbot prints constantly.
    """
    sizes = (5, 10) if ctx.quick else DASHBOARD_SIZES
    missing = ctx.agent_missing()
    if missing is not None:
        return {"n": max(sizes), "not_available": missing}
    ours = ctx.ours("dashboard")
    results = []
    try:
        for n in sizes:
            log(f"  dashboard: {n} printing bots")
            ours.grow(n)
            ours.start_all()
            broker = ctx.mosquitto()
            agent_log = ctx.env.root / f"agent-dashboard-{n}.log"
            agent = Agent(ctx.procs, ours.env, broker.url, "benchhost", 10.0, 30.0, agent_log)
            try:
                time.sleep(5.0)
                results.append(dashboard_on(ctx, ours, n, printing=True))
            finally:
                agent.stop()
    finally:
        ours.kill_server()
    return {"sizes": results, **results[-1]}


def dashboard_on(
    ctx: Ctx, ours: Ours, n: int, *, beside_peers: bool = False, printing: bool = False
) -> dict[str, t.Any]:
    """Measure the dashboard's event stream over ``ours``, whose ``n`` bots an agent (10 s / 30 s) supervises.

    With ``printing``, each bot's Hummingbot bridge publishes a ``log`` line a second meanwhile.
    """
    import urllib.request

    from mqttclient import Printer

    window = 5.0 if ctx.quick else 60.0
    dashboard = None
    reader = None
    printer = None
    try:
        broker = ctx.mosquitto()
        if printing:
            printer = Printer(broker.port, ours.names[:n])
        home = ctx.env.root / f"dashboard-home-{n}"
        home.mkdir()
        port = free_port()
        argv = [SUPERVISOR, "dashboard", "--broker", broker.url, "--listen", f"127.0.0.1:{port}", "--insecure-no-login"]
        dashboard = ctx.procs.spawn(
            argv, env={**ours.env, "SUPERVISOR_HOME": str(home)}, log_path=ctx.env.root / "dashboard.log"
        )

        def answers() -> bool:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/session", timeout=2) as response,
            ):
                return bool(response.status == 200)
            return False

        deadline = time.monotonic() + 30
        while not answers():
            if time.monotonic() > deadline or dashboard.poll() is not None:
                return {"n": n, "error": "the dashboard did not answer within 30 s"}
            time.sleep(0.2)
        time.sleep(5.0)  # the dashboard's first view is not the steady state
        reader = _StreamReader(port)
        time.sleep(2.0)
        snapshot = reader.between(0.0, time.perf_counter())
        log(f"  dashboard: {window:.0f} s of the event stream")
        start = time.perf_counter()
        time.sleep(window)
        end = time.perf_counter()
        steady = reader.between(start, end)
        frames = reader.head.count(b"\nevent: ") + reader.head.startswith(b"event: ")
        return {
            "n": n,
            "window_s": round(end - start, 1),
            "snapshot_bytes": snapshot,
            "steady_bytes": steady,
            "steady_bytes_per_s": steady / (end - start),
            "frames_first_mb": frames,
            "agent_state_interval_s": 30.0,
            "agent_heartbeat_interval_s": 10.0,
            "beside_peers": beside_peers,
            "printing_lines_per_s": n if printing else 0,
        }
    finally:
        if printer is not None:
            printer.close()
        if reader is not None:
            reader.close()
        if dashboard is not None:
            ctx.procs.stop(dashboard)


# -- external events (webhooks) ------------------------------------------------------------------------


def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> int:
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "text/plain"})
        response = conn.getresponse()
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
        conn.close()  # the receiver closed an idle keep-alive connection: open a new one
        conn.request("POST", path, body=body, headers={"Content-Type": "text/plain"})
        response = conn.getresponse()
    response.read()
    return response.status


WAITING_EVENTS = 5
"""Events posted while the agent is away, in each "agent's return" round."""


def fig_events(ctx: Ctx) -> dict[str, t.Any]:
    """Webhook -> line in a plugin-less bot's console (receiver, journal, broker, agent, tmux), and accepts/s."""
    from mqttclient import Client

    missing = ctx.agent_missing()
    if missing is not None:
        return {"ours": {"not_available": missing}}
    reps = 10 if ctx.quick else 100
    burst = 200 if ctx.quick else 2000
    broker = ctx.mosquitto()
    ours = ctx.ours("events")
    run(ours.cli("new", "ex1", "-r", "example-bot"), env=ours.env, timeout=120)
    run(ours.cli("start", "ex1"), env=ours.env, timeout=120)
    agent = Agent(ctx.procs, ours.env, broker.url, "benchhost", 1.0, 30.0, ctx.env.root / "agent-events.log")
    port = free_port()
    token = uuid.uuid4().hex
    route = f'token = "{token}"\nevent = "bench"\nrate = 1e9\nburst = 1000000\n'
    (ours.home / "events.toml").write_text(
        f'[receiver]\nlisten = "127.0.0.1:{port}"\ndedupe_window = 0\n\n'
        f'[routes.lat]\n{route}targets = ["benchhost/ex1"]\n\n'
        # Throughput: to a plugin-style bot (published on the PUBACK, no agent types), so the figure is the receiver's.
        f'[routes.tput]\n{route}targets = ["benchsink/sink"]\n'
    )
    records = Client(broker.port, "records")
    for topic, record in (
        ("supervisor/benchsink/agent", {"host": "benchsink", "state": "online"}),
        ("supervisor/benchsink/sink/state", {"name": "sink", "state": "running", "plugin": True}),
    ):
        records.client.publish(topic, json.dumps(record), qos=1, retain=True).wait_for_publish(10)
    online: list[tuple[float, int]] = []

    def on_agent(message: t.Any) -> None:
        with contextlib.suppress(ValueError, KeyError):
            record = json.loads(message.payload)
            if record["state"] == "online":
                online.append((time.perf_counter(), int(record["pid"])))

    records.subscribe("supervisor/benchhost/agent", on_agent)
    receiver_log = ctx.env.root / "events-serve.log"
    receiver = ctx.procs.spawn(
        [SUPERVISOR, "events", "serve", "--broker", broker.url], env=ours.env, log_path=receiver_log
    )
    console = ours.home / "instances" / "ex1" / "console.log"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies: list[float] = []
    returns: list[float] = []
    errors: list[str] = []

    def arrived(marker: str, offset: int, timeout: float) -> float | None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with console.open("rb") as fh:
                fh.seek(offset)
                if marker.encode() in fh.read():
                    return time.perf_counter()
            time.sleep(0.001)
        return None

    try:

        def healthy() -> bool:
            with contextlib.suppress(OSError, ValueError):
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                probe.request("GET", "/healthz")
                return bool(json.loads(probe.getresponse().read()).get("broker"))
            return False

        if not wait_until(healthy, 20, 0.1):
            return {"ours": {"not_available": f"the receiver did not come up; see {receiver_log}"}}
        # Warm up until the agent types events (it subscribes once it is connected).
        for attempt in range(40):
            offset = console.stat().st_size
            _post(conn, f"/hooks/lat?token={token}", f"warm-{attempt}".encode())
            if arrived(f"ALERT bench: warm-{attempt}", offset, 0.5) is not None:
                break
        else:
            return {"ours": {"not_available": f"no alert reached the console; agent output: {agent.log_tail()}"}}
        for rep in range(reps):
            marker = f"lat-{rep}-{uuid.uuid4().hex[:8]}"
            offset = console.stat().st_size
            start = time.perf_counter()
            status = _post(conn, f"/hooks/lat?token={token}", marker.encode())
            if status != 202:
                errors.append(f"rep {rep}: HTTP {status}")
                continue
            seen = arrived(f"ALERT bench: {marker}", offset, 10)
            if seen is None:
                errors.append(f"rep {rep}: not in the console within 10 s")
            else:
                latencies.append(seen - start)
        # Accepted events per second: four keep-alive clients post as fast as they can.
        counts = [0, 0, 0, 0]

        def client(index: int) -> None:
            own = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for i in range(burst // 4):
                if _post(own, f"/hooks/tput?token={token}", f"t-{index}-{i}".encode()) == 202:
                    counts[index] += 1
            own.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        accept_s = time.perf_counter() - began
        journal = ours.home / "events.sqlite"

        def drained() -> bool:
            with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
                sql = "SELECT count(*) FROM events WHERE status IN ('queued', 'waiting')"
                return db.execute(sql).fetchone()[0] == 0

        drained_ok = wait_until(drained, 120, 0.05)
        publish_s = time.perf_counter() - began
        # What waited for an agent: stop it, post, start it again; from its "online" record to the last line.
        for rep in range(2 if ctx.quick else 5):
            agent.stop()
            offset = console.stat().st_size
            markers = [f"wait-{rep}-{i}-{uuid.uuid4().hex[:6]}" for i in range(WAITING_EVENTS)]
            statuses = [_post(conn, f"/hooks/lat?token={token}", marker.encode()) for marker in markers]
            if statuses != [202] * len(markers):
                errors.append(f"return {rep}: waiting events answered {statuses}")
            agent = Agent(ctx.procs, ours.env, broker.url, "benchhost", 1.0, 30.0, ctx.env.root / "agent-events.log")
            pid = agent.proc.pid
            if not wait_until(lambda: any(p == pid for _, p in online), 30, 0.005):  # noqa: B023 - used at once
                errors.append(f"return {rep}: the agent did not come back online")
                continue
            back = next(when for when, p in online if p == pid)
            seen: list[float] = []
            for marker in markers:
                when = arrived(f"ALERT bench: {marker}", offset, 30)
                if when is None:
                    break
                seen.append(when)
            if len(seen) < len(markers):
                errors.append(f"return {rep}: {len(markers) - len(seen)} of {len(markers)} waiting events never came")
                break  # the same would happen in every round
            returns.append(max(seen) - back)
    finally:
        records.close()
        conn.close()
        ctx.procs.stop(receiver)
        agent.stop()
        ours.kill_server()
    accepted = sum(counts)
    return {
        "ours": {
            "latency": stats(latencies),
            "errors": errors,
            "burst": burst,
            "accepted": accepted,
            "accepted_per_s": accepted / accept_s if accept_s else None,
            "published_per_s": accepted / publish_s if drained_ok and publish_s else None,
            "return": stats(returns),
            "waiting_events": WAITING_EVENTS,
        }
    }


# -- reaction to events -----------------------------------------------------------------------------------

ALIVE = ("running", "starting", "waiting-login")
REACT_GAP = 2.1
"""Seconds between two events of one kind. Each event hits another bot, so they do not depend on each
other; 2.1 s divides neither a 10 s nor a 1 s tick, so 20 events fall on 20 phases of a polling agent's tick
(0, 2.1, 4.2, 6.3, 8.4, 0.5, 2.6 … s) instead of a few."""
REACT_WAIT = 30.0
"""How long after the last event the records may take: three times a 10 s tick."""


def _sleep_until(when: float) -> None:
    delay = when - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def _react_kill(ours: Ours, watch: t.Any) -> dict[str, t.Any]:
    """``kill -9`` one bot after another; time its record saying crashed, and saying alive with a new pid."""
    events: list[tuple[str, t.Any, float]] = []
    errors: list[str] = []
    began = time.perf_counter()
    for i, name in enumerate(ours.names):
        _sleep_until(began + i * REACT_GAP)
        old_pid = (watch.latest(name) or {}).get("pid")
        pid = bot_pids(ours.prefix, {name}, ours.root).get(name)
        if pid is None:
            errors.append(f"{name}: no bot process to kill")
            continue
        at = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        events.append((name, old_pid, at))

    def down(record: dict[str, t.Any]) -> bool:
        return record.get("state") not in ALIVE

    def back(old_pid: t.Any) -> t.Callable[[dict[str, t.Any]], bool]:
        return lambda record: record.get("state") in ALIVE and record.get("pid") not in (None, old_pid)

    wait_until(
        lambda: all(watch.first(n, at, down) and watch.first(n, at, back(old)) for n, old, at in events),
        REACT_WAIT,
        0.1,
    )
    crashed: list[float] = []
    restarted: list[float] = []
    for name, old_pid, at in events:
        first_down = watch.first(name, at, down)
        if first_down is None:
            errors.append(
                f"{name}: no record left the alive states within {REACT_WAIT:.0f} s ({watch.trail(name, at)})"
            )
        elif first_down[1].get("state") != "crashed":
            errors.append(f"{name}: the first record after kill -9 says {first_down[1].get('state')!r}, not crashed")
        else:
            crashed.append(first_down[0] - at)
        again = watch.first(name, at, back(old_pid))
        if again is None:
            errors.append(f"{name}: no alive record with a new pid within {REACT_WAIT:.0f} s ({watch.trail(name, at)})")
        else:
            restarted.append(again[0] - at)
    return {"crashed": stats(crashed), "restarted": stats(restarted), "errors": errors}


def _react_command(
    ours: Ours, watch: t.Any, verb: str, changed: t.Callable[[dict[str, t.Any]], bool]
) -> dict[str, t.Any]:
    """Run ``supervisor VERB NAME`` for one bot after another; time the record changing, from the command's start."""
    events: list[tuple[str, float, float]] = []
    errors: list[str] = []
    began = time.perf_counter()
    for i, name in enumerate(ours.names):
        _sleep_until(began + i * REACT_GAP)
        start = time.perf_counter()
        proc = run(ours.cli(verb, name), env=ours.env, check=False, timeout=120)
        end = time.perf_counter()
        if proc.returncode != 0:
            errors.append(f"{name}: `supervisor {verb}` exited {proc.returncode}: {proc.stderr.strip()[-200:]}")
            continue
        events.append((name, start, end))
    wait_until(lambda: all(watch.first(n, start, changed) for n, start, _ in events), REACT_WAIT, 0.1)
    from_start: list[float] = []
    after_return: list[float] = []
    command: list[float] = []
    for name, start, end in events:
        command.append(end - start)
        seen = watch.first(name, start, changed)
        if seen is None:
            errors.append(f"{name}: the record did not change within {REACT_WAIT:.0f} s of `supervisor {verb}`")
            continue
        from_start.append(seen[0] - start)
        after_return.append(max(0.0, seen[0] - end))
    return {
        "record": stats(from_start),
        "after_return": stats(after_return),
        "command": stats(command),
        "errors": errors,
    }


def fig_react(ctx: Ctx) -> dict[str, t.Any]:
    """How fast the agent's retained state records follow a ``kill -9`` and a local ``stop``/``start``.

    A real agent with its default intervals supervises ``reps`` bench bots; each event hits another bot,
    so every crash is a bot's first (restarted after the first backoff step at most).
    """
    from mqttclient import StateWatch

    missing = ctx.agent_missing()
    if missing is not None:
        return {"not_available": missing}
    reps = 5 if ctx.quick else 20
    broker = ctx.mosquitto()
    ours = ctx.ours("react")
    ours.grow(reps)
    ours.start_all()
    # A host id of its own: no retained record of an earlier figure's agent on these topics.
    watch = StateWatch(broker.port, "supervisor/benchreact/+/state")
    agent = Agent(ctx.procs, ours.env, broker.url, "benchreact", 10.0, 30.0, ctx.env.root / "agent-react.log")
    try:

        def all_alive() -> bool:
            return all((watch.latest(n) or {}).get("state") in ALIVE for n in ours.names)

        if not wait_until(all_alive, 60, 0.1):
            return {"not_available": f"no alive state record for every bot within 60 s: {agent.log_tail()}"}
        time.sleep(1.0)
        result: dict[str, t.Any] = {
            "bots": reps,
            "gap_s": REACT_GAP,
            "heartbeat_interval_s": 10.0,
            "state_interval_s": 30.0,
            "first_backoff_s": 1.0,
        }
        log(f"  react: kill -9 of {reps} bots, {REACT_GAP:g} s apart")
        result["kill"] = _react_kill(ours, watch)
        if not wait_until(all_alive, REACT_WAIT, 0.1):
            result["kill"]["errors"].append("not every bot was alive again before the stop round")
        log(f"  react: supervisor stop of {reps} bots")
        result["stop"] = _react_command(ours, watch, "stop", lambda r: r.get("state") not in ALIVE)
        log(f"  react: supervisor start of {reps} bots")
        result["start"] = _react_command(ours, watch, "start", lambda r: r.get("state") in ALIVE)
        if not agent.alive():
            result["agent_exited"] = agent.log_tail()
        return result
    finally:
        watch.close()
        agent.stop()
        ours.kill_server()
