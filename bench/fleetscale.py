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
import collections
import compileall
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import SUPERVISOR, Env, EventStream, Procs, free_port, log, stats, wait_until
from fleettraffic import (
    BEAT_S,
    HEARTBEAT_S,
    LOG_S,
    STATE_S,
    bot_name,
    connect_publisher,
    read_counts,
    state_record,
)

from supervisor.mqtt.protocol import instances_generation

SIZES = ((20, 10), (100, 20), (1000, 20))
"""(hosts, bots per host): 200, 2,000 and 20,000 bots."""
TARGET_S = 0.3
"""Issue 23: `fleet ls --json` at 200 bots on 20 hosts."""
OLD_WINDOW_S = 1.5
"""What `fleet ls` waited before issue 23, whatever the fleet's size."""
PUBLISHERS = 20
"""MQTT connections that publish the simulated hosts' records."""
TRAFFIC_PROCESSES = 3
"""Publisher processes (one MQTT connection each) that send the simulated hosts' live traffic."""
SYS_INTERVAL_S = 1
"""Seconds between two of mosquitto's ``$SYS`` updates (its counters of messages received and sent)."""
WARM_S = STATE_S + 10.0
"""Live traffic before a dashboard is judged: every state record has been refreshed at least once."""
TARGET_DASHBOARD_CORE = 0.5
"""Issue 23: the dashboard at 20,000 bots under half a core."""
TARGET_FIRST_VIEW_S = 2.0
"""Issue 23: a first view within 2 s."""
TARGET_STREAM_BPS = 2000
"""Issue 23 (docs/benchmarks.md's dashboard budget): an open tab's stream at most 2 KB/s."""
DASHBOARD_WINDOW_S = 45.0
"""The dashboard's steady window: CPU, stream and broker rates are averaged over it."""
RAISED_LIMITS = "max_inflight_messages 0\nmax_queued_messages 0\n"
"""mosquitto settings that lift its per-client limits (0: no limit), as the README advises for large fleets."""


class Broker:
    """A private mosquitto on a free loopback port, with ``extra`` configuration lines."""

    def __init__(self, env: Env, procs: Procs, name: str, extra: str = "") -> None:
        self.port = free_port()
        folder = env.root / f"mosquitto-{name}"
        folder.mkdir()
        conf = folder / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "log_type error",
            f"sys_interval {SYS_INTERVAL_S}",
        ]
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
    return connect_publisher(port, "sim", inflight=100)


def simulate(port: int, hosts: int, per_host: int, boot: float) -> tuple[list[mqtt.Client], dict[str, str]]:
    """Publish the retained records of ``hosts`` agents with ``per_host`` running bots each (started at ``boot``).

    Returns the connections and each host's run (what its beats must name).
    """
    clients = [_connect(port) for _ in range(min(PUBLISHERS, hosts))]
    now = time.time()
    pending: list[mqtt.MQTTMessageInfo] = []
    runs: dict[str, str] = {}
    for h in range(hosts):
        client = clients[h % len(clients)]
        host = f"sim-{h:04d}"
        names = [bot_name(h, b) for b in range(per_host)]
        for b, name in enumerate(names):
            record = state_record(host, name, b, now, boot)
            pending.append(client.publish(f"supervisor/{host}/{name}/state", json.dumps(record), qos=1, retain=True))
        runs[host] = uuid.uuid4().hex[:12]
        availability = {
            "host": host,
            "state": "online",
            "ts": round(now, 3),
            "version": "bench",
            "pid": 1,
            "run": runs[host],
            "started": round(now - 60, 3),
            "heartbeat_interval": 10.0,
            "beat_interval": BEAT_S,
            "state_interval": STATE_S,
            "keepalive": 30,
            "signed": False,
            "instances": per_host,
            "generation": instances_generation(names),
        }
        pending.append(client.publish(f"supervisor/{host}/agent", json.dumps(availability), qos=1, retain=True))
    for info in pending:
        info.wait_for_publish(60)
    return clients, runs


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


class Traffic:
    """The simulated hosts' live traffic: :data:`TRAFFIC_PROCESSES` publisher processes (bench/fleettraffic.py)."""

    def __init__(
        self,
        env: Env,
        procs: Procs,
        port: int,
        runs: dict[str, str],
        fleet: tuple[int, float],
        seconds: float,
        name: str,
    ) -> None:
        per_host, boot = fleet
        self.procs = procs
        folder = env.root / f"traffic-{name}"
        folder.mkdir()
        hosts = folder / "hosts.json"
        hosts.write_text(json.dumps(runs))
        step = min(TRAFFIC_PROCESSES, len(runs))
        self.counts = [folder / f"counts-{i}.json" for i in range(step)]
        script = str(Path(__file__).with_name("fleettraffic.py"))
        self.children = [
            procs.spawn(
                [
                    *(sys.executable, script, "--port", str(port), "--hosts", str(hosts), "--slice", f"{i}/{step}"),
                    *("--bots-per-host", str(per_host), "--boot", str(boot), "--seconds", str(seconds)),
                    *("--counts", str(self.counts[i])),
                ],
                env=env.env,
                log_path=folder / f"publisher-{i}.log",
            )
            for i in range(step)
        ]
        self.started = time.monotonic()

    def sent(self) -> dict[str, float]:
        """Return the messages sent so far, by kind, over every publisher."""
        total: dict[str, float] = {}
        for path in self.counts:
            for kind, n in read_counts(path).items():
                if kind not in ("elapsed_s", "wall"):
                    total[kind] = total.get(kind, 0) + n
        return total

    def stop(self) -> None:
        """Stop every publisher by pid."""
        for child in self.children:
            self.procs.stop(child)


class SysCounter:
    """mosquitto's cumulative ``$SYS`` message counters, as it publishes them."""

    TOPICS = ("$SYS/broker/messages/received", "$SYS/broker/messages/sent")

    def __init__(self, port: int) -> None:
        self.values: dict[str, tuple[float, int]] = {}
        self.client = _connect(port)
        self.client.on_message = self._on_message
        for topic in self.TOPICS:
            self.client.subscribe(topic, qos=0)

    def _on_message(self, _client: mqtt.Client, _userdata: t.Any, message: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            self.values[message.topic] = (time.monotonic(), int(message.payload))

    def read(self) -> dict[str, tuple[float, int]]:
        """Return the last value of each counter with when it came."""
        return dict(self.values)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def _rates(before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]]) -> dict[str, float | None]:
    rates: dict[str, float | None] = {}
    for topic in SysCounter.TOPICS:
        key = topic.rsplit("/", 1)[-1]
        if topic in before and topic in after and after[topic][0] > before[topic][0]:
            rates[key] = (after[topic][1] - before[topic][1]) / (after[topic][0] - before[topic][0])
        else:
            rates[key] = None
    return rates


class Tab(EventStream):
    """One ``/events`` stream read as a browser tab reads it: when its first frame was whole, and bytes by time."""

    def __init__(self, port: int) -> None:
        self.first_frame_s: float | None = None
        self.first_frame_bytes = 0
        self.first_event = ""
        self._head = b""
        self._size: int | None = None
        self._last = b""
        super().__init__(port, timeout=120.0)

    def received(self, data: bytes, now: float) -> None:
        """Time the first frame."""
        if self.first_frame_s is None:
            self._scan(data, now)

    def _scan(self, data: bytes, now: float) -> None:
        """Find where the first frame with data ends (a blank line); ``retry:`` and comments before it do not count."""
        if self._size is None:
            self._head += data
            while not self._head.startswith((b"event: ", b"data: ")):
                end = self._head.find(b"\n\n")
                if end < 0:
                    return
                self._head = self._head[end + 2 :]
            self.first_event = self._head.split(b"\n", 1)[0].removeprefix(b"event: ").decode(errors="replace")[:40]
            self._size, data, self._head = 0, self._head, b""
        # Only the new bytes are searched (with the last one before them): a first view may be megabytes.
        buf = self._last + data
        end = buf.find(b"\n\n")
        if end >= 0:
            self.first_frame_s = now - self.opened
            self.first_frame_bytes = self._size - len(self._last) + end + 2
        else:
            self._size += len(data)
            self._last = data[-1:]


def get_snapshot(port: int, *, whole: bool = False) -> tuple[float, int, int, str, dict[str, t.Any]]:
    """GET ``/api/snapshot`` as a browser does (gzip accepted); return seconds, wire and plain bytes, encoding, body.

    A large fleet's snapshot holds its window of rows and a summary; ``whole`` asks for every row (``?all=1``).
    """
    import gzip
    import http.client

    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        path = "/api/snapshot?all=1" if whole else "/api/snapshot"
        conn.request("GET", path, headers={"Accept-Encoding": "gzip", "Accept": "application/json"})
        response = conn.getresponse()
        wire = response.read()  # http.client does not decode: these are the bytes on the wire
        took = time.perf_counter() - t0
        encoding = response.getheader("Content-Encoding") or "identity"
        status = response.status
    finally:
        conn.close()
    if status != 200:
        msg = f"/api/snapshot answered {status}"
        raise RuntimeError(msg)
    plain = gzip.decompress(wire) if encoding == "gzip" else wire
    return took, len(wire), len(plain), encoding, json.loads(plain)


def _instances(body: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    instances = body.get("instances")
    return [i for i in instances if isinstance(i, dict)] if isinstance(instances, list) else []


def _listed(body: dict[str, t.Any]) -> int:
    """Return how many bots a snapshot speaks of: its summary's total (a window of a large fleet), else its rows."""
    summary = body.get("summary")
    total = summary.get("total") if isinstance(summary, dict) else None
    return total if isinstance(total, int) else len(_instances(body))


def _drops_in_snapshot(body: dict[str, t.Any]) -> dict[str, t.Any]:
    """Return whatever the snapshot says about dropped messages (fields named so), if anything."""
    return {k: v for k, v in body.items() if "drop" in k.lower() and isinstance(v, int | float)}


def watch_dashboard(
    env: Env, procs: Procs, broker: Broker, traffic: Traffic, bots: int, window: float, name: str
) -> dict[str, t.Any]:
    """Attach the real dashboard to the live fleet and measure it (see the module docstring)."""
    import psutil

    home = env.root / f"dashboard-home-{name}"
    home.mkdir()
    port = free_port()
    log_path = env.root / f"dashboard-{name}.log"
    argv = [SUPERVISOR, "dashboard", "--broker", broker.url, "--listen", f"127.0.0.1:{port}", "--insecure-no-login"]
    spawned = time.perf_counter()
    dashboard = procs.spawn(argv, env={**env.env, "SUPERVISOR_HOME": str(home)}, log_path=log_path)
    tab: Tab | None = None
    sys_counter = SysCounter(broker.port)
    try:
        complete_s = None
        listed = 0
        deadline = time.monotonic() + max(60.0, bots / 100)
        while time.monotonic() < deadline and dashboard.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                listed = _listed(get_snapshot(port)[4])
                if listed >= bots:
                    complete_s = time.perf_counter() - spawned
                    break
            time.sleep(max(2.0, bots / 4000))  # each look builds the whole view: fewer at 20,000 bots
        if dashboard.poll() is not None:
            return {"error": f"the dashboard exited with {dashboard.returncode}"}
        # Judge it only once every record was refreshed by the live traffic, and its start-up is over.
        time.sleep(max(5.0, WARM_S - (time.monotonic() - traffic.started)))
        process = psutil.Process(dashboard.pid)
        tab = Tab(port)
        wait_until(lambda: tab is not None and (tab.first_frame_s is not None or tab.ended is not None), 60, 0.05)
        time.sleep(2.0)
        load_before = os.getloadavg()
        mosquitto = psutil.Process(broker.proc.pid)
        broker_rss0 = mosquitto.memory_info().rss
        # What the simulation itself takes of the same cores: the broker and the publishers.
        others = [mosquitto, *(psutil.Process(child.pid) for child in traffic.children)]
        others0 = [p.cpu_times() for p in others]
        cpu0, start = process.cpu_times(), time.perf_counter()
        sent0, sys0 = traffic.sent(), sys_counter.read()
        log(f"  dashboard: {window:.0f} s steady window at {bots:,} bots")
        time.sleep(window)
        cpu1, end = process.cpu_times(), time.perf_counter()
        sent1, sys1 = traffic.sent(), sys_counter.read()
        rss = process.memory_info().rss
        broker_rss1 = mosquitto.memory_info().rss
        others1 = [p.cpu_times() for p in others]
        used = [a.user + a.system - b.user - b.system for a, b in zip(others1, others0, strict=True)]
        load_after = os.getloadavg()
        steady = tab.between(start, end)
        took, wire, plain, encoding, body = get_snapshot(port)
        # The states are counted over every row, asked for apart from the first view that is timed.
        instances = _instances(get_snapshot(port, whole=True)[4])
        stale = sum(1 for i in instances if i.get("stale") is True or i.get("state") == "stale")
        hosts_shown = body.get("hosts") if isinstance(body.get("hosts"), list) else []
        elapsed = end - start
        published = {kind: (sent1.get(kind, 0) - sent0.get(kind, 0)) / elapsed for kind in sent1}
        drops_logged = sum(
            1 for line in log_path.read_text(errors="replace").splitlines() if "queue is full" in line.lower()
        )
        return {
            "listed_s": complete_s,
            "listed": listed,
            "window_s": round(elapsed, 1),
            "cpu_core": (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed,
            "rss_bytes": rss,
            "stream_bytes_per_s": steady / elapsed,
            "stream_ended": tab.ended is not None and tab.ended < end,
            "events_first_frame_s": tab.first_frame_s,
            "events_first_frame_bytes": tab.first_frame_bytes,
            "events_first_event": tab.first_event,
            "snapshot_s": took,
            "snapshot_wire_bytes": wire,
            "snapshot_bytes": plain,
            "snapshot_encoding": encoding,
            "snapshot_instances": len(_instances(body)),
            "snapshot_listed": _listed(body),
            "stale": stale,
            "instance_states": dict(collections.Counter(str(i.get("state")) for i in instances)),
            "host_states": dict(collections.Counter(str(h.get("state")) for h in hosts_shown if isinstance(h, dict))),
            "drops_logged": drops_logged,
            "drops_reported": _drops_in_snapshot(body),
            "published_per_s": published,
            "expected_per_s": {
                "state": bots / STATE_S,
                "heartbeat": bots / HEARTBEAT_S,
                "log": bots / LOG_S,
                "beat": len(traffic_hosts(traffic)) / BEAT_S,
            },
            "broker_per_s": _rates(sys0, sys1),
            # A broker holding messages its subscriber has not read yet grows.
            "broker_rss_bytes": [broker_rss0, broker_rss1],
            "broker_cpu_core": used[0] / (end - start),
            "publishers_cpu_core": sum(used[1:]) / (end - start),
            "load_average": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
        }
    finally:
        if tab is not None:
            tab.close()
        sys_counter.close()
        procs.stop(dashboard)


def traffic_hosts(traffic: Traffic) -> list[str]:
    """Return the hosts the traffic beats for."""
    hosts_file = traffic.counts[0].parent / "hosts.json"
    return list(json.loads(hosts_file.read_text()))


def measure(
    env: Env,
    procs: Procs,
    hosts: int,
    per_host: int,
    *,
    limits: str,
    repeats: int,
    wait: float,
    dashboard_window: float | None,
) -> dict[str, t.Any]:
    """Return `fleet ls --json` times and completeness for one live simulated fleet on one broker setting.

    With ``dashboard_window``, also attach the real dashboard and measure it over that many seconds.
    """
    name = f"{hosts}x{per_host}-{limits}"
    broker = Broker(env, procs, name, RAISED_LIMITS if limits == "raised" else "")
    clients: list[mqtt.Client] = []
    traffic: Traffic | None = None
    try:
        boot = time.time() - 3600
        clients, runs = simulate(broker.port, hosts, per_host, boot)
        for client in clients:
            client.disconnect()
            client.loop_stop()
        clients = []
        # Bounded: the publishers stop by themselves well after this measurement would have ended.
        traffic = Traffic(env, procs, broker.port, runs, (per_host, boot), 600.0, name)
        time.sleep(3.0)
        times: list[float] = []
        cpus: list[float] = []
        listed: list[int] = []
        codes: list[int] = []
        loads: list[float] = []
        for _ in range(repeats):
            loads.append(os.getloadavg()[0])
            took, cpu, code, data = fleet_ls(broker.url, env.env, wait)
            times.append(took)
            cpus.append(cpu)
            codes.append(code)
            listed.append(len(data.get("instances", [])))
        row: dict[str, t.Any] = {
            "hosts": hosts,
            "bots_per_host": per_host,
            "bots": hosts * per_host,
            "broker_limits": limits,
            "wait_s": wait,
            "live_traffic": True,
            "seconds": stats(times),
            "cpu_seconds": stats(cpus),
            "load_average": max(loads),
            "listed": listed,
            "exit_codes": codes,
            "complete_runs": sum(1 for n, c in zip(listed, codes, strict=True) if n == hosts * per_host and c == 0),
        }
        if dashboard_window is not None:
            log(f"dashboard on {hosts} hosts x {per_host} bots, mosquitto limits {limits}, live traffic")
            try:
                row["dashboard"] = watch_dashboard(
                    env, procs, broker, traffic, hosts * per_host, dashboard_window, name
                )
            except Exception as e:  # noqa: BLE001 - the fleet ls figures of this size stay
                row["dashboard"] = {"error": repr(e)}
        return row
    finally:
        if traffic is not None:
            traffic.stop()
        for client in clients:
            client.disconnect()
            client.loop_stop()
        broker.stop()


def fig_fleet(env: Env, procs: Procs, sizes: t.Sequence[tuple[int, int]], quick: bool = False) -> dict[str, t.Any]:
    """Measure every size on stock mosquitto, and the larger also with its per-client limits lifted.

    The dashboard is attached on the last broker setting of each size (raised limits beyond 1,000 bots,
    as the README advises).
    """
    rows = []
    for hosts, per_host in sizes:
        n = hosts * per_host
        repeats = 3 if quick or n > 2000 else (5 if n > 200 else 10)
        wait = 5.0 if n <= 2000 else 30.0
        settings = ("stock", "raised") if n > 1000 else ("stock",)
        for limits in settings:
            log(f"fleet ls --json: {hosts} hosts x {per_host} bots, mosquitto limits {limits}, live traffic")
            window = (10.0 if quick else DASHBOARD_WINDOW_S) if limits == settings[-1] else None
            rows.append(
                measure(env, procs, hosts, per_host, limits=limits, repeats=repeats, wait=wait, dashboard_window=window)
            )
    return {
        "rows": rows,
        "target_s": TARGET_S,
        "old_window_s": OLD_WINDOW_S,
        "publishers": PUBLISHERS,
        "traffic_processes": TRAFFIC_PROCESSES,
        "rates_s": {"state": STATE_S, "heartbeat": HEARTBEAT_S, "log": LOG_S, "beat": BEAT_S},
        "warm_s": WARM_S,
        "targets": {
            "dashboard_core": TARGET_DASHBOARD_CORE,
            "first_view_s": TARGET_FIRST_VIEW_S,
            "stream_bytes_per_s": TARGET_STREAM_BPS,
        },
    }


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
