"""Live traffic of simulated hosts (issue 23): one publisher process, bounded, loopback only.

Each bot of its slice sends a heartbeat and a Hummingbot-style log line every 10 s and refreshes its
retained state record every 30 s; each host beats every 2 s, as agents do. Publishes are spread
evenly in time. It stops by itself at its deadline, on SIGTERM, or when its parent is gone, and keeps
its counts in a JSON file (rewritten every second) for the bench to read.

\b
    python bench/fleettraffic.py --port 1883 --hosts hosts.json --slice 0/4 --bots-per-host 20 \\
        --boot 1796570000 --seconds 300 --counts counts-0.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import typing as t
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

STATE_S = 30.0
"""Seconds between two refreshes of a bot's retained state record (the agent's default)."""
HEARTBEAT_S = 10.0
"""Seconds between two heartbeats of a bot (Hummingbot's bridge)."""
LOG_S = 10.0
"""Seconds between two log lines of a bot (a measured Hummingbot rate: 0.1 line/s)."""
BEAT_S = 2.0
"""Seconds between two beats of a host's agent."""
TICK_S = 0.02
"""The publisher's scheduling step: what is due is sent every tick."""


def state_record(host: str, name: str, index: int, now: float, boot: float) -> dict[str, t.Any]:
    """Return the retained state record an agent publishes for a running bot started at ``boot``.

    Its uptime grows with ``ts``, as a real bot's: its start time stays put from one record to the next.
    """
    return {
        "name": name,
        "state": "running",
        "pid": 10000 + index,
        "recipe": "bench",
        "backend": "tmux",
        "cpu_percent": 0.5,
        "rss": 50_000_000,
        "uptime": round(now - boot, 3),
        "restarts": 0,
        "commit": "2bfaccc4" * 5,
        "desired": "running",
        "plugin": False,
        "last_heartbeat": round(now, 3),
        "host": host,
        "ts": round(now, 3),
        "refresh": STATE_S,
    }


def bot_name(host_index: int, bot_index: int) -> str:
    """Return the name of a simulated bot (unique across the fleet, as Hummingbot's topics need)."""
    return f"bot-{host_index:04d}-{bot_index:03d}"


class _Stream:
    """One kind of message sent periodically for every item, spread evenly over the period."""

    def __init__(self, kind: str, period: float, items: list[t.Any], send: t.Callable[[t.Any, float], None]) -> None:
        self.kind = kind
        self.period = period
        self.items = items
        self.send = send
        self.sent = 0

    def catch_up(self, elapsed: float, now: float) -> None:
        due = int(elapsed * len(self.items) / self.period)
        while self.sent < due:
            self.send(self.items[self.sent % len(self.items)], now)
            self.sent += 1


def connect_publisher(port: int, name: str, *, inflight: int) -> mqtt.Client:
    """Return a paho client connected to the loopback broker on ``port``, its network loop running."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{name}-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    if not connected.wait(10):
        msg = f"bench {name} client could not connect to 127.0.0.1:{port}"
        raise RuntimeError(msg)
    return client


def publish(
    port: int,
    hosts: dict[str, str],
    slicing: tuple[int, int],
    per_host: int,
    boot: float,
    seconds: float,
    counts: Path,
) -> None:
    """Send the live traffic of every ``step``-th host from ``first`` (``slicing``) for ``seconds``.

    Its bots started at ``boot``; the counts are kept in ``counts``.
    """
    first, step = slicing
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    signal.signal(signal.SIGINT, lambda *_a: stop.set())
    parent = os.getppid()
    try:
        client = connect_publisher(port, "traffic", inflight=1000)
    except RuntimeError as e:
        raise SystemExit(str(e)) from e
    ordered = sorted(hosts)
    mine = [(h, ordered[h]) for h in range(first, len(ordered), step)]
    bots = [(host, bot_name(h, b), b) for h, host in mine for b in range(per_host)]

    def state(item: tuple[str, str, int], now: float) -> None:
        host, name, index = item
        body = json.dumps(state_record(host, name, index, now, boot), separators=(",", ":"))
        client.publish(f"supervisor/{host}/{name}/state", body, qos=1, retain=True)

    def heartbeat(item: tuple[str, str, int], now: float) -> None:
        client.publish(f"hbot/{item[1]}/hb", json.dumps({"ts": int(now * 1_000_000)}), qos=0)

    def line(item: tuple[str, str, int], now: float) -> None:
        body = {
            "timestamp": now,
            "msg": f"BTC-USDT order book: best bid 42000.{int(now) % 100:02d}, best ask 42001.{int(now) % 97:02d}",
            "level_no": 20,
            "level_name": "INFO",
            "logger_name": "hummingbot.strategy.pure_market_making",
        }
        client.publish(f"hbot/{item[1]}/log", json.dumps(body), qos=0)

    def beat(item: tuple[int, str], now: float) -> None:
        host = item[1]
        body = {"host": host, "run": hosts[host], "ts": round(now, 3), "current": True}
        client.publish(f"supervisor/{host}/beat", json.dumps(body, separators=(",", ":")), qos=0)

    streams = [
        _Stream("state", STATE_S, bots, state),
        _Stream("heartbeat", HEARTBEAT_S, bots, heartbeat),
        _Stream("log", LOG_S, bots, line),
        _Stream("beat", BEAT_S, mine, beat),
    ]
    start = time.monotonic()
    deadline = start + seconds
    next_write = start
    try:
        while not stop.is_set() and time.monotonic() < deadline and os.getppid() == parent:
            now_m = time.monotonic()
            now = time.time()
            for stream in streams:
                stream.catch_up(now_m - start, now)
            if now_m >= next_write:
                next_write = now_m + 1.0
                _write_counts(counts, now_m - start, streams)
            stop.wait(TICK_S)
    finally:
        _write_counts(counts, time.monotonic() - start, streams)
        client.disconnect()
        client.loop_stop()


def _write_counts(path: Path, elapsed: float, streams: list[_Stream]) -> None:
    data = {"elapsed_s": elapsed, "wall": time.time(), **{s.kind: s.sent for s in streams}}
    part = path.with_suffix(".part")
    part.write_text(json.dumps(data))
    part.replace(path)


def read_counts(path: Path) -> dict[str, float]:
    """Return a publisher's last counts (empty before it wrote any)."""
    with contextlib.suppress(OSError, ValueError):
        return t.cast("dict[str, float]", json.loads(path.read_text()))
    return {}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and publish."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="the private mosquitto's port on 127.0.0.1")
    parser.add_argument("--hosts", type=Path, required=True, help="JSON file: host -> run of its availability record")
    parser.add_argument("--slice", default="0/1", help="FIRST/STEP: this process sends every STEP-th host from FIRST")
    parser.add_argument("--bots-per-host", type=int, required=True, help="bots on each simulated host")
    parser.add_argument("--boot", type=float, required=True, help="when the simulated bots started (epoch seconds)")
    parser.add_argument("--seconds", type=float, required=True, help="stop after this long whatever happens")
    parser.add_argument("--counts", type=Path, required=True, help="JSON file the counts are kept in")
    args = parser.parse_args(argv)
    first, step = (int(x) for x in args.slice.split("/"))
    hosts = json.loads(args.hosts.read_text())
    publish(args.port, hosts, (first, step), args.bots_per_host, args.boot, args.seconds, args.counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
