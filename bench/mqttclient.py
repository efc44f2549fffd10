"""paho-mqtt 2.2 clients for the bench: a request/reply timer, a bare echo peer and a topic counter.

Every client sets TCP_NODELAY on its socket (``on_socket_open``), the echo baseline included.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
import typing as t
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def _nodelay(_client: mqtt.Client, _userdata: t.Any, sock: t.Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Client:
    """One connected paho client with a background network loop; callbacks feed queues."""

    def __init__(self, port: int, name: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{name}-{uuid.uuid4().hex[:8]}")
        self.client.on_socket_open = _nodelay
        self.connected = threading.Event()
        self.subscribed: queue.Queue[int] = queue.Queue()
        self.handlers: dict[str, t.Callable[[mqtt.MQTTMessage], None]] = {}
        self.client.on_connect = lambda *_a: self.connected.set()
        self.client.on_subscribe = lambda _c, _u, mid, *_a: self.subscribed.put(mid)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.close()
            msg = f"MQTT client {name} could not connect to 127.0.0.1:{port}"
            raise RuntimeError(msg)

    def _on_message(self, _client: mqtt.Client, _userdata: t.Any, message: mqtt.MQTTMessage) -> None:
        for pattern, handler in self.handlers.items():
            if mqtt.topic_matches_sub(pattern, message.topic):
                handler(message)

    def subscribe(self, pattern: str, handler: t.Callable[[mqtt.MQTTMessage], None], qos: int = 1) -> None:
        """Subscribe and wait for the broker's SUBACK."""
        self.handlers[pattern] = handler
        _, mid = self.client.subscribe(pattern, qos=qos)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                if self.subscribed.get(timeout=0.5) == mid:
                    return
        msg = f"no SUBACK for {pattern}"
        raise RuntimeError(msg)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()


def request_payload(reply_to: str, data: dict[str, t.Any] | None = None) -> bytes:
    """Return a request in the agent's envelope."""
    header = {"reply_to": reply_to, "timestamp": int(time.time() * 1000)}
    return json.dumps({"header": header, "data": data or {}}).encode()


class Requester:
    """Sends one request at a time and times the reply (QoS 1 both ways)."""

    def __init__(self, port: int, name: str) -> None:
        self.client = Client(port, name)
        self.reply_topic = f"bench/reply/{uuid.uuid4().hex}"
        self.replies: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self.client.subscribe(self.reply_topic, lambda m: self.replies.put((time.perf_counter(), m.payload)))

    def request(
        self, topic: str, timeout: float = 10.0, data: dict[str, t.Any] | None = None
    ) -> tuple[float, dict[str, t.Any]]:
        """Publish a request and return (round trip seconds, decoded reply)."""
        while not self.replies.empty():  # a late reply of an earlier, timed-out request
            self.replies.get_nowait()
        payload = request_payload(self.reply_topic, data)
        start = time.perf_counter()
        self.client.client.publish(topic, payload, qos=1)
        at, body = self.replies.get(timeout=timeout)
        try:
            reply = json.loads(body)
        except ValueError:
            reply = {"raw": body[:200].decode(errors="replace")}
        return at - start, reply

    def close(self) -> None:
        """Disconnect."""
        self.client.close()


class Echo:
    """The bare baseline: decode the request, publish a small reply to its ``reply_to``."""

    def __init__(self, port: int, topic: str) -> None:
        self.client = Client(port, "echo")
        self.client.subscribe(topic, self._on_request)

    def _on_request(self, message: mqtt.MQTTMessage) -> None:
        request = json.loads(message.payload)
        reply = {"header": {"timestamp": int(time.time() * 1000)}, "data": {"status": 200, "msg": ""}}
        self.client.client.publish(request["header"]["reply_to"], json.dumps(reply).encode(), qos=1)

    def close(self) -> None:
        """Disconnect."""
        self.client.close()


class Counter:
    """Counts and timestamps messages on a topic pattern."""

    def __init__(self, port: int, pattern: str) -> None:
        self.client = Client(port, "counter")
        self.lock = threading.Lock()
        self.times: list[tuple[float, str]] = []
        self.client.subscribe(pattern, self._on_message, qos=0)

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.times.append((time.perf_counter(), message.topic))

    def since(self, start: float, topic: str | None = None) -> list[float]:
        """Return the arrival times at or after ``start`` (on ``topic`` when given)."""
        with self.lock:
            return [at for at, name in self.times if at >= start and (topic is None or name == topic)]

    def close(self) -> None:
        """Disconnect."""
        self.client.close()


class StateWatch:
    """Records every ``state`` record an agent publishes from now on: (arrival, instance, decoded record)."""

    def __init__(self, port: int, pattern: str) -> None:
        self.client = Client(port, "states")
        self.lock = threading.Lock()
        self.records: list[tuple[float, str, dict[str, t.Any] | None]] = []
        self.client.subscribe(pattern, self._on_message, qos=1)

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        at = time.perf_counter()
        if message.retain:  # left on the broker before we subscribed: not news from the agent under test
            return
        name = message.topic.split("/")[-2]
        record: dict[str, t.Any] | None = None
        if message.payload:  # an empty retained payload deletes the record
            with contextlib.suppress(ValueError):
                decoded = json.loads(message.payload)
                record = decoded if isinstance(decoded, dict) else None
        with self.lock:
            self.records.append((at, name, record))

    def latest(self, name: str) -> dict[str, t.Any] | None:
        """Return the last record of ``name`` received, if any."""
        with self.lock:
            for _, who, record in reversed(self.records):
                if who == name:
                    return record
        return None

    def trail(self, name: str, since: float) -> str:
        """Return the records of ``name`` since ``since`` as ``+seconds state pid`` (for error messages)."""
        with self.lock:
            seen = [(at, r) for at, who, r in self.records if who == name and at >= since]
        return (
            "; ".join(
                f"+{at - since:.2f}s {r.get('state') if r else 'deleted'} pid {r.get('pid') if r else '-'}"
                for at, r in seen
            )
            or "no record"
        )

    def first(
        self, name: str, since: float, predicate: t.Callable[[dict[str, t.Any]], bool]
    ) -> tuple[float, dict[str, t.Any]] | None:
        """Return (arrival, record) of the first record of ``name`` at or after ``since`` that ``predicate`` takes."""
        with self.lock:
            for at, who, record in self.records:
                if at >= since and who == name and record is not None and predicate(record):
                    return at, record
        return None

    def close(self) -> None:
        """Disconnect."""
        self.client.close()


class Printer:
    """Hummingbot's MQTT bridge for ``names``: each bot publishes one ``log`` line a second, as a busy bot prints."""

    def __init__(self, port: int, names: list[str]) -> None:
        self.client = Client(port, "printer")
        self.names = names
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        tick = 0
        while not self.stop.wait(max(0.0, 1.0 - (time.perf_counter() % 1.0))):
            tick += 1
            now = time.time()
            for name in self.names:
                line = {
                    "timestamp": now,
                    "msg": f"BTC-USDT order book: best bid 42000.{tick % 100:02d}, best ask 42001.{tick % 97:02d}",
                    "level_no": 20,
                    "level_name": "INFO",
                    "logger_name": "hummingbot.strategy.pure_market_making",
                }
                self.client.client.publish(f"hbot/{name}/log", json.dumps(line).encode(), qos=0)
                self.sent += 1

    def close(self) -> None:
        """Stop printing and disconnect."""
        self.stop.set()
        self.thread.join(5)
        self.client.close()
