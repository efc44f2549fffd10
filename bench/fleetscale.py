"""Fleet at scale (issue 23): `fleet ls --json` against a simulated fleet of N hosts on a private mosquitto.

A simulated host is what a real agent leaves on the broker: a retained availability record (with its
instance count and generation) and one retained state record per bot, published over a pool of MQTT
connections (loopback only, bounded). The real `supervisor fleet ls --json` command is then timed, and
its output checked for completeness.

\b
    python bench/fleetscale.py                     # 200, 2,000 and 20,000 bots; prints JSON
    python bench/fleetscale.py --sizes 20x10       # hosts x bots per host
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import typing as t
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import SUPERVISOR, Env, Procs, free_port, log, stats, wait_until

from supervisor.mqtt.protocol import instances_generation

SIZES = ((20, 10), (100, 20), (1000, 20))
"""(hosts, bots per host): 200, 2,000 and 20,000 bots."""
TARGET_S = 0.3
"""Issue 23: `fleet ls --json` at 200 bots on 20 hosts."""
OLD_WINDOW_S = 1.5
"""What `fleet ls` waited before issue 23, whatever the fleet's size."""
PUBLISHERS = 20
"""MQTT connections that publish the simulated hosts' records."""
RAISED_LIMITS = "max_inflight_messages 0\nmax_queued_messages 0\n"
"""mosquitto settings that lift its per-client limits (0: no limit), as the README advises for large fleets."""


class Broker:
    """A private mosquitto on a free loopback port, with ``extra`` configuration lines."""

    def __init__(self, env: Env, procs: Procs, name: str, extra: str = "") -> None:
        self.port = free_port()
        folder = env.root / f"mosquitto-{name}"
        folder.mkdir()
        conf = folder / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false", "log_type error"]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n" + extra)
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.procs = procs
        self.proc = procs.spawn([binary, "-c", str(conf)], env=env.env, log_path=folder / "mosquitto.log")

        def accepting() -> bool:
            import socket

            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
            return False

        if not wait_until(accepting, 5, 0.05):
            msg = f"mosquitto did not listen on 127.0.0.1:{self.port}"
            raise RuntimeError(msg)

    @property
    def url(self) -> str:
        """Return the broker URL."""
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the broker and wait for it."""
        self.procs.stop(self.proc)


def _connect(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sim-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    if not connected.wait(10):
        msg = f"simulated host could not connect to 127.0.0.1:{port}"
        raise RuntimeError(msg)
    return client


def simulate(port: int, hosts: int, per_host: int) -> list[mqtt.Client]:
    """Publish the retained records of ``hosts`` agents with ``per_host`` running bots each, as agents do."""
    clients = [_connect(port) for _ in range(min(PUBLISHERS, hosts))]
    now = time.time()
    pending: list[mqtt.MQTTMessageInfo] = []
    for h in range(hosts):
        client = clients[h % len(clients)]
        host = f"sim-{h:04d}"
        names = [f"bot-{h:04d}-{b:03d}" for b in range(per_host)]
        for b, name in enumerate(names):
            record = {
                "name": name,
                "state": "running",
                "pid": 10000 + b,
                "recipe": "bench",
                "backend": "tmux",
                "cpu_percent": 0.5,
                "rss": 50_000_000,
                "uptime": 3600.0,
                "restarts": 0,
                "commit": "2bfaccc4" * 5,
                "desired": "running",
                "plugin": False,
                "last_heartbeat": now,
                "host": host,
                "ts": round(now, 3),
                "refresh": 30.0,
            }
            pending.append(client.publish(f"supervisor/{host}/{name}/state", json.dumps(record), qos=1, retain=True))
        availability = {
            "host": host,
            "state": "online",
            "ts": round(now, 3),
            "version": "bench",
            "pid": 1,
            "run": uuid.uuid4().hex[:12],
            "started": round(now - 60, 3),
            "heartbeat_interval": 10.0,
            "state_interval": 30.0,
            "keepalive": 30,
            "signed": False,
            "instances": per_host,
            "generation": instances_generation(names),
        }
        pending.append(client.publish(f"supervisor/{host}/agent", json.dumps(availability), qos=1, retain=True))
    for info in pending:
        info.wait_for_publish(60)
    return clients


def fleet_ls(url: str, env: dict[str, str], wait: float) -> tuple[float, float, int, dict[str, t.Any]]:
    """Run the real ``supervisor fleet ls --json``; return its wall time, CPU time, exit code and output."""
    argv = [SUPERVISOR, "fleet", "--broker", url, "ls", "--json", "--wait", str(wait)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=wait + 120, check=False)
    took = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        data = json.loads(done.stdout)
    except ValueError:
        data = {"error": done.stderr[-500:]}
    return took, cpu, done.returncode, data


def measure(
    env: Env, procs: Procs, hosts: int, per_host: int, *, limits: str, repeats: int, wait: float
) -> dict[str, t.Any]:
    """Return `fleet ls --json` times and completeness for one simulated fleet on one broker setting."""
    broker = Broker(env, procs, f"{hosts}x{per_host}-{limits}", RAISED_LIMITS if limits == "raised" else "")
    clients: list[mqtt.Client] = []
    try:
        clients = simulate(broker.port, hosts, per_host)
        times: list[float] = []
        cpus: list[float] = []
        listed: list[int] = []
        codes: list[int] = []
        for _ in range(repeats):
            took, cpu, code, data = fleet_ls(broker.url, env.env, wait)
            times.append(took)
            cpus.append(cpu)
            codes.append(code)
            listed.append(len(data.get("instances", [])))
        return {
            "hosts": hosts,
            "bots_per_host": per_host,
            "bots": hosts * per_host,
            "broker_limits": limits,
            "wait_s": wait,
            "seconds": stats(times),
            "cpu_seconds": stats(cpus),
            "load_average": os.getloadavg()[0],
            "listed": listed,
            "exit_codes": codes,
            "complete_runs": sum(1 for n, c in zip(listed, codes, strict=True) if n == hosts * per_host and c == 0),
        }
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        broker.stop()


def fig_fleet(env: Env, procs: Procs, sizes: t.Sequence[tuple[int, int]], quick: bool = False) -> dict[str, t.Any]:
    """Measure every size on stock mosquitto, and the largest also with its per-client limits lifted."""
    rows = []
    for hosts, per_host in sizes:
        n = hosts * per_host
        repeats = 3 if quick else (10 if n <= 200 else 5 if n <= 2000 else 3)
        wait = 5.0 if n <= 2000 else 30.0
        for limits in ("stock", "raised") if n > 1000 else ("stock",):
            log(f"fleet ls --json: {hosts} hosts x {per_host} bots, mosquitto limits {limits}")
            rows.append(measure(env, procs, hosts, per_host, limits=limits, repeats=repeats, wait=wait))
    return {"rows": rows, "target_s": TARGET_S, "old_window_s": OLD_WINDOW_S, "publishers": PUBLISHERS}


def main(argv: list[str] | None = None) -> int:
    """Run the fleet figure and print it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help="HOSTSxBOTS,... (default 20x10,100x20,1000x20)")
    parser.add_argument("--quick", action="store_true", help="few repeats")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    sizes = [tuple(int(x) for x in size.split("x")) for size in args.sizes.split(",")] if args.sizes else list(SIZES)
    # As run.py does: an installed tool has its bytecode compiled, this checkout would compile on every run.
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "supervisor"), quiet=1)
    procs = Procs()
    env = Env.create()
    try:
        figure = fig_fleet(env, procs, [(h, b) for h, b in sizes], quick=args.quick)
    finally:
        procs.cleanup()
        shutil.rmtree(env.root, ignore_errors=True)
    text = json.dumps(figure, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
