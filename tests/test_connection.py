"""Tests for supervisor.mqtt.connection and .config, against a real mosquitto."""

from __future__ import annotations

import logging
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import typing as t
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from supervisor.errors import AgentError
from supervisor.mqtt.config import (
    AgentConfig,
    BrokerConfig,
    default_host_id,
    load_agent_config,
    parse_broker_url,
    redact,
)
from supervisor.mqtt.connection import Connection, backoff_delay
from tests.conftest import Broker, free_port, start_mosquitto, stop_process, wait_until

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
LOGGER = "supervisor.mqtt.connection"
Received = tuple[str, bytes, dict[str, t.Any]]


# --- helpers --------------------------------------------------------------------------


class Probe:
    """A plain paho client, independent of Connection, to watch and poke the broker."""

    def __init__(self, broker: Broker) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._acks: queue.Queue[int] = queue.Queue()
        connected: queue.Queue[bool] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, u, f, rc, p: connected.put(not rc.is_failure)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._acks.put(mid)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert connected.get(timeout=5)

    def subscribe(self, topic: str) -> None:
        _, mid = self.client.subscribe(topic, 1)
        assert self._acks.get(timeout=5) == mid

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def probe(mosquitto: Broker) -> Iterator[Callable[[], Probe]]:
    made: list[Probe] = []

    def make() -> Probe:
        made.append(Probe(mosquitto))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.fixture
def connections() -> Iterator[list[Connection]]:
    """Connections a test registers here are stopped at teardown, even when it fails."""
    made: list[Connection] = []
    yield made
    for conn in made:
        conn.stop()


def broker_config(broker: Broker, **changes: t.Any) -> BrokerConfig:
    config = parse_broker_url(broker.url)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def collector() -> tuple[queue.Queue[Received], Callable[[str, bytes, dict[str, t.Any]], None]]:
    got: queue.Queue[Received] = queue.Queue()
    return got, lambda topic, payload, props: got.put((topic, payload, props))


# --- connection -----------------------------------------------------------------------


def test_round_trip(mosquitto: Broker, probe: Callable[[], Probe], connections: list[Connection]) -> None:
    got, handler = collector()
    connects: queue.Queue[bool] = queue.Queue()
    conn = Connection(
        broker_config(mosquitto),
        client_id="agent-rt",
        on_connect=lambda: connects.put(True),
    )
    connections.append(conn)
    conn.subscribe("hbot/+/start", handler)
    conn.start()
    assert connects.get(timeout=5)
    assert conn.is_connected

    watcher = probe()
    watcher.subscribe("out/#")
    conn.publish_and_wait("out/reply", b"pong", qos=1)
    assert watcher.messages.get(timeout=5).payload == b"pong"
    conn.publish("out/fire", b"and-forget")
    assert watcher.messages.get(timeout=5).payload == b"and-forget"

    watcher.publish("hbot/bot-1/start", b'{"x": 1}')
    topic, payload, props = got.get(timeout=5)
    assert (topic, payload) == ("hbot/bot-1/start", b'{"x": 1}')
    assert props == {"qos": 1, "retain": False, "dup": False}
    watcher.publish("hbot/bot-1/stop", b"not for us")
    watcher.publish("hbot/bot-2/start", b"second")
    assert got.get(timeout=5)[1] == b"second"


def test_mqtt5_round_trip_carries_properties(
    mosquitto: Broker, probe: Callable[[], Probe], connections: list[Connection]
) -> None:
    got, handler = collector()
    conn = Connection(broker_config(mosquitto, protocol="5"), client_id="agent-v5")
    connections.append(conn)
    conn.subscribe("v5/#", handler)
    conn.start()
    assert conn.wait_connected(5)
    conn.publish_and_wait("v5/retained", b"kept", qos=1, retain=True)
    topic, payload, props = got.get(timeout=5)
    assert (topic, payload, props["qos"]) == ("v5/retained", b"kept", 1)


def test_tcp_nodelay_is_set(mosquitto: Broker, connections: list[Connection]) -> None:
    conn = Connection(broker_config(mosquitto), client_id="agent-nodelay")
    connections.append(conn)
    assert conn.socket() is None
    conn.start()
    assert conn.wait_connected(5)
    sock = conn.socket()
    assert sock is not None
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_reconnects_after_broker_restart_on_same_port(
    mosquitto: Broker,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    connections: list[Connection],
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    got, handler = collector()
    connects: queue.Queue[int] = queue.Queue()
    conn = Connection(
        broker_config(mosquitto),
        client_id="agent-restart",
        on_connect=lambda: connects.put(1),
        min_backoff=0.02,
        max_backoff=0.2,
    )
    connections.append(conn)
    conn.subscribe("cmd/#", handler)
    conn.start()
    assert connects.get(timeout=5)

    stop_process(mosquitto.process)
    wait_until(
        lambda: not conn.is_connected,
        message="the connection to notice the broker is gone",
    )
    restarted = start_mosquitto(tmp_path / "broker2", port=mosquitto.port)
    try:
        assert connects.get(timeout=5)
        assert conn.is_connected
        fresh = Probe(restarted)
        try:
            fresh.publish("cmd/again", b"after restart")
            assert got.get(timeout=5)[:2] == ("cmd/again", b"after restart")
        finally:
            fresh.close()
        # One line per state change: connected, lost, (maybe one failed retry), connected.
        records = [r for r in caplog.records if r.name == LOGGER]
        messages = [r.getMessage() for r in records if r.levelno >= logging.INFO]
        assert sum("lost" in m for m in messages) == 1
        assert sum(m.startswith("connected to") for m in messages) == 2
        assert sum("cannot connect" in m for m in messages) <= 1
        assert len(messages) <= 4
    finally:
        conn.stop()
        stop_process(restarted.process)


def test_unreachable_broker_logs_once_then_connects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, connections: list[Connection]
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    port = free_port()
    conn = Connection(
        parse_broker_url(f"mqtt://127.0.0.1:{port}"),
        client_id="agent-late",
        min_backoff=0.01,
        max_backoff=0.05,
    )
    connections.append(conn)
    conn.start()

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]

    wait_until(warnings, message="the first connection failure to be logged")
    with pytest.raises(AgentError, match="not connected"):
        conn.publish_and_wait("x/y", b"z", timeout=0.1)
    broker = start_mosquitto(tmp_path / "late", port=port)
    try:
        assert conn.wait_connected(5)
        assert len(warnings()) == 1
        message = warnings()[0].getMessage()
        assert f"cannot connect to mqtt://127.0.0.1:{port}: Connection refused" in message
    finally:
        conn.stop()
        stop_process(broker.process)


def test_failing_handler_is_logged_and_loop_survives(
    mosquitto: Broker,
    probe: Callable[[], Probe],
    caplog: pytest.LogCaptureFixture,
    connections: list[Connection],
) -> None:
    got, handler = collector()

    def broken(topic: str, payload: bytes, props: dict[str, t.Any]) -> None:
        msg = "handler bug"
        raise RuntimeError(msg)

    conn = Connection(broker_config(mosquitto), client_id="agent-bug")
    connections.append(conn)
    conn.subscribe("bug/#", broken)
    conn.subscribe("ok/#", handler)
    conn.start()
    assert conn.wait_connected(5)
    poke = probe()
    poke.publish("bug/1", b"boom")
    poke.publish("ok/1", b"still alive")
    assert got.get(timeout=5)[1] == b"still alive"
    failures = [r for r in caplog.records if "handler for 'bug/#' failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert conn.is_connected


def test_unsubscribe_stops_delivery(
    mosquitto: Broker, probe: Callable[[], Probe], connections: list[Connection]
) -> None:
    got, handler = collector()
    conn = Connection(broker_config(mosquitto), client_id="agent-unsub")
    connections.append(conn)
    conn.subscribe("a/#", handler)
    conn.subscribe("b/#", handler)
    conn.start()
    assert conn.wait_connected(5)
    conn.unsubscribe("a/#")
    conn.publish_and_wait("a/1", b"dropped")  # a round trip after UNSUBSCRIBE: the broker has applied it
    conn.publish_and_wait("b/1", b"kept")
    assert got.get(timeout=5)[1] == b"kept"
    assert got.empty()


WILL_SCRIPT = """
import sys
from supervisor.mqtt.config import parse_broker_url
from supervisor.mqtt.connection import Connection
url, client_id, topic = sys.argv[1:4]
will = (topic, b"offline", 1, True)
conn = Connection(parse_broker_url(url), client_id=client_id, will=will)
conn.start()
if not conn.wait_connected(5):
    sys.exit(3)
print("ready", flush=True)
sys.stdin.read()
"""


def test_will_is_published_when_process_is_killed(mosquitto: Broker, probe: Callable[[], Probe]) -> None:
    watcher = probe()
    watcher.subscribe("will/#")
    argv = [sys.executable, "-c", WILL_SCRIPT, mosquitto.url, "agent-doomed", "will/agent-doomed"]
    with subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(5) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
    message = watcher.messages.get(timeout=5)
    assert (message.topic, message.payload) == ("will/agent-doomed", b"offline")

    late = probe()
    late.subscribe("will/agent-doomed")
    retained = late.messages.get(timeout=5)
    assert (retained.payload, retained.retain) == (b"offline", True)


def test_clean_stop_does_not_publish_will(tmp_path: Path) -> None:
    # A broker of our own that stays root: the privileges it drops by default cannot
    # write its log into the root-only tmp_path, and this test needs that log.
    broker = start_mosquitto(tmp_path / "logged", extra_conf="user root\n")
    watcher = Probe(broker)
    try:
        watcher.subscribe("will/#")
        will = ("will/agent-clean", b"offline", 1, True)
        conn = Connection(broker_config(broker), client_id="agent-clean", will=will)
        conn.start()
        assert conn.wait_connected(5)
        conn.stop()
        assert not conn.is_connected

        def disconnect_logged() -> bool:
            return "Client agent-clean disconnected" in broker.log.read_text()

        # Once mosquitto has handled the DISCONNECT, a will would precede the marker.
        wait_until(disconnect_logged, message="mosquitto to log the clean DISCONNECT")
        watcher.publish("will/marker", b"marker")
        assert watcher.messages.get(timeout=5).topic == "will/marker"
    finally:
        watcher.close()
        stop_process(broker.process)


def test_restart_after_stop(mosquitto: Broker, connections: list[Connection]) -> None:
    conn = Connection(broker_config(mosquitto), client_id="agent-again")
    connections.append(conn)
    conn.start()
    assert conn.wait_connected(5)
    with pytest.raises(AgentError, match="already started"):
        conn.start()
    conn.stop()
    conn.start()
    assert conn.wait_connected(5)


def test_bad_topics_and_filters_raise_agent_error(mosquitto: Broker) -> None:
    conn = Connection(broker_config(mosquitto), client_id="agent-bad")
    with pytest.raises(AgentError, match="cannot publish to topic 'a/#'"):
        conn.publish("a/#", b"x")
    for bad in ("", "a/#/b", "a/b+", "a/#x"):
        with pytest.raises(AgentError, match="is not valid"):
            conn.subscribe(bad, lambda topic, payload, props: None)
    with pytest.raises(AgentError, match="QoS must be"):
        conn.subscribe("a/b", lambda topic, payload, props: None, qos=3)
    with pytest.raises(AgentError, match="client id is empty"):
        Connection(broker_config(mosquitto), client_id="")


def test_missing_tls_files_raise_agent_error(tmp_path: Path) -> None:
    config = parse_broker_url("mqtts://broker.example:8883")
    config.ca = tmp_path / "missing-ca.pem"
    with pytest.raises(AgentError, match="cannot load the TLS files"):
        Connection(config, client_id="agent-tls")


def test_backoff_delay_is_jittered_and_capped() -> None:
    rng = random.Random(7)
    for attempt in range(40):
        delays = {backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(20)}
        assert all(0.5 <= d <= min(30.0, 0.5 * 2 ** (attempt + 1)) for d in delays)
        assert len(delays) > 1
    assert max(backoff_delay(30, 0.5, 30.0, rng) for _ in range(200)) > 20


# --- parse_broker_url / redact --------------------------------------------------------


class UrlCase(t.NamedTuple):
    test_id: str
    url: str
    expected: dict[str, t.Any] | None = None
    error: str = ""


URL_CASES = [
    UrlCase(
        "plain",
        "mqtt://localhost",
        {"host": "localhost", "port": 1883, "tls": False, "username": None},
    ),
    UrlCase("port", "mqtt://10.0.0.5:1884", {"host": "10.0.0.5", "port": 1884}),
    UrlCase("tls-default-port", "mqtts://broker.example.com", {"port": 8883, "tls": True}),
    UrlCase(
        "tls-port",
        "MQTTS://Broker.example.com:9999",
        {"host": "broker.example.com", "port": 9999, "tls": True},
    ),
    UrlCase("user-only", "mqtt://bot@host", {"username": "bot", "password": None}),
    UrlCase(
        "user-pass",
        "mqtt://bot:s3cret@host:1",
        {"username": "bot", "password": "s3cret", "port": 1},
    ),
    UrlCase(
        "percent",
        "mqtt://b%40t:p%3Aw%2Fd%40@host",
        {"username": "b@t", "password": "p:w/d@"},
    ),
    UrlCase("ipv6", "mqtt://[::1]:1885", {"host": "::1", "port": 1885}),
    UrlCase("ipv6-default", "mqtts://[fe80::1]", {"host": "fe80::1", "port": 8883}),
    UrlCase("trailing-slash", "mqtt://host/", {"host": "host"}),
    UrlCase("http", "http://host:1883", error="unsupported scheme 'http'"),
    UrlCase("websocket", "ws://host:9001", error="unsupported scheme 'ws'"),
    UrlCase("no-scheme", "localhost:1883", error="no scheme"),
    UrlCase("empty", "", error="empty"),
    UrlCase("no-host", "mqtt://", error="no valid host"),
    UrlCase("bad-port", "mqtt://host:abc", error="port must be a number"),
    UrlCase("big-port", "mqtt://host:70000", error="port must be a number"),
    UrlCase("zero-port", "mqtt://host:0", error="port must be a number"),
    UrlCase("path", "mqtt://host:1883/topic", error="path, query or fragment"),
    UrlCase("query", "mqtt://host?x=1", error="path, query or fragment"),
    UrlCase("spaces", " mqtt://host", error="spaces"),
]


@pytest.mark.parametrize("case", URL_CASES, ids=[c.test_id for c in URL_CASES])
def test_parse_broker_url(case: UrlCase) -> None:
    if case.error:
        with pytest.raises(AgentError) as info:
            parse_broker_url(case.url)
        assert case.error in str(info.value)
        assert str(info.value).endswith("Use mqtt://host:port or mqtts://host:port.")
        return
    config = parse_broker_url(case.url)
    assert case.expected is not None
    for key, value in case.expected.items():
        assert getattr(config, key) == value, key


def test_parse_error_never_shows_password() -> None:
    with pytest.raises(AgentError) as info:
        parse_broker_url("http://bot:hunter2@host")
    assert "hunter2" not in str(info.value)
    assert "bot:***@host" in str(info.value)


def test_broker_config_url_and_repr_hide_password() -> None:
    config = parse_broker_url("mqtt://bot:hunter2@[::1]:1999")
    assert config.url == "mqtt://[::1]:1999"
    assert "hunter2" not in repr(config)


class RedactCase(t.NamedTuple):
    test_id: str
    url: str
    expected: str


REDACT_CASES = [
    RedactCase("password", "mqtt://bot:hunter2@host:1883", "mqtt://bot:***@host:1883"),
    RedactCase("at-in-password", "mqtts://bot:a@b@host", "mqtts://bot:***@host"),
    RedactCase("user-only", "mqtt://bot@host", "mqtt://bot@host"),
    RedactCase("no-credentials", "mqtt://host:1883", "mqtt://host:1883"),
    RedactCase("not-a-url", "host:1883", "host:1883"),
    RedactCase("keeps-path", "mqtt://u:p@host/x?y", "mqtt://u:***@host/x?y"),
]


@pytest.mark.parametrize("case", REDACT_CASES, ids=[c.test_id for c in REDACT_CASES])
def test_redact(case: RedactCase) -> None:
    assert redact(case.url) == case.expected


# --- load_agent_config ----------------------------------------------------------------


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_env_or_overrides() -> None:
    config = load_agent_config(None, {}, {})
    assert config.broker.url == "mqtt://localhost:1883"
    assert (config.namespace, config.own_prefix, config.heartbeat_interval) == (
        "hbot",
        "supervisor",
        10.0,
    )
    assert re.fullmatch(r"[a-z0-9_-]+", config.host_id)
    assert config.host_id == default_host_id()
    assert isinstance(config, AgentConfig)


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
[broker]
url = "mqtt://file-host:1884"
username = "file-user"
keepalive = 45
protocol = 5
[agent]
namespace = "file-ns"
host_id = "file-host"
heartbeat_interval = 5
secret = "file-secret"
""",
    )
    env = {
        "SUPERVISOR_HOST_ID": "env-host",
        "SUPERVISOR_NAMESPACE": "env/ns",
        "SUPERVISOR_BROKER_USERNAME": "",
    }
    config = load_agent_config(path, env, {"namespace": "cli-ns", "state_interval": None})
    assert (config.broker.host, config.broker.port, config.broker.username) == (
        "file-host",
        1884,
        "file-user",
    )
    assert (config.broker.keepalive, config.broker.protocol) == (45, "5")
    assert (config.namespace, config.host_id) == ("cli-ns", "env-host")
    assert (config.heartbeat_interval, config.state_interval) == (5.0, 30.0)
    assert config.secret == "file-secret"

    env["SUPERVISOR_BROKER"] = "mqtts://env-host"
    config = load_agent_config(path, env, {"broker": "mqtt://cli-host:2000", "insecure": True})
    assert (config.broker.host, config.broker.port, config.broker.tls) == (
        "cli-host",
        2000,
        False,
    )
    assert config.broker.insecure is True


def test_password_file_and_credential_layers(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "broker.pw").write_text("from-file\n")
    (tmp_path / "hmac.key").write_text("shared-secret\n")
    path = write_toml(
        tmp_path,
        """
[broker]
url = "mqtt://broker"
username = "bot"
password_file = "secrets/broker.pw"
ca = "ca.pem"
[agent]
secret_file = "hmac.key"
""",
    )
    config = load_agent_config(path, {}, {})
    assert (config.broker.username, config.broker.password) == ("bot", "from-file")
    assert config.broker.ca == tmp_path / "ca.pem"
    assert config.secret == "shared-secret"

    # A URL without credentials from a higher layer keeps the file's explicit ones...
    config = load_agent_config(path, {"SUPERVISOR_BROKER": "mqtt://other"}, {})
    assert (config.broker.host, config.broker.username, config.broker.password) == (
        "other",
        "bot",
        "from-file",
    )
    # ...one with credentials replaces them; a password in a higher layer still wins.
    config = load_agent_config(path, {"SUPERVISOR_BROKER": "mqtt://u2:p2@other"}, {})
    assert (config.broker.username, config.broker.password) == ("u2", "p2")
    config = load_agent_config(path, {"SUPERVISOR_BROKER": "mqtt://u2:p2@other"}, {"password": "p3"})
    assert (config.broker.username, config.broker.password) == ("u2", "p3")
    assert "p3" not in repr(config)


class BadConfigCase(t.NamedTuple):
    test_id: str
    toml: str
    env: dict[str, str]
    overrides: dict[str, t.Any]
    error: str


BAD_CONFIG_CASES = [
    BadConfigCase(
        "unknown-key",
        "[broker]\nurl = 'mqtt://h'\nhots = 1\n",
        {},
        {},
        "unknown key 'broker.hots'",
    ),
    BadConfigCase(
        "unknown-section",
        "[brokers]\nurl = 'mqtt://h'\n",
        {},
        {},
        "unknown section 'brokers'",
    ),
    BadConfigCase("bad-toml", "[broker\n", {}, {}, "invalid TOML"),
    BadConfigCase(
        "dotted-host-id",
        "[agent]\nhost_id = 'my.host'\n",
        {},
        {},
        "key 'agent.host_id': host id 'my.host' is not valid",
    ),
    BadConfigCase(
        "env-host-id",
        "",
        {"SUPERVISOR_HOST_ID": "a/b"},
        {},
        "environment variable SUPERVISOR_HOST_ID",
    ),
    BadConfigCase(
        "dotted-namespace",
        "",
        {"SUPERVISOR_NAMESPACE": "hbot.prod"},
        {},
        "SUPERVISOR_NAMESPACE: namespace 'hbot.prod' is not valid",
    ),
    BadConfigCase(
        "bad-url",
        "",
        {"SUPERVISOR_BROKER": "tcp://x"},
        {},
        "SUPERVISOR_BROKER: broker URL 'tcp://x'",
    ),
    BadConfigCase("bad-protocol", "[broker]\nprotocol = '4'\n", {}, {}, 'must be "3.1.1" or "5"'),
    BadConfigCase(
        "bad-keepalive",
        "[broker]\nkeepalive = 'soon'\n",
        {},
        {},
        "key 'broker.keepalive': must be",
    ),
    BadConfigCase(
        "negative-interval",
        "",
        {},
        {"heartbeat_interval": -1},
        "option --heartbeat-interval",
    ),
    BadConfigCase(
        "unknown-override",
        "",
        {},
        {"colour": "red"},
        "override 'colour' is not a known setting",
    ),
    BadConfigCase(
        "password-and-file",
        "[broker]\npassword = 'a'\npassword_file = 'b'\n",
        {},
        {},
        "either 'password' or",
    ),
    BadConfigCase(
        "missing-password-file",
        "[broker]\npassword_file = 'nope'\n",
        {},
        {},
        "cannot read",
    ),
]


@pytest.mark.parametrize("case", BAD_CONFIG_CASES, ids=[c.test_id for c in BAD_CONFIG_CASES])
def test_bad_config_is_a_clear_agent_error(tmp_path: Path, case: BadConfigCase) -> None:
    path = write_toml(tmp_path, case.toml)
    with pytest.raises(AgentError) as info:
        load_agent_config(path, case.env, case.overrides)
    assert case.error in str(info.value)
    if case.toml and not case.env and not case.overrides:
        assert str(path) in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match=r"config file '.*nope\.toml': not found"):
        load_agent_config(tmp_path / "nope.toml", {}, {})


def test_namespace_may_have_slash_parts() -> None:
    config = load_agent_config(None, {"SUPERVISOR_NAMESPACE": "hbot/prod-1/"}, {})
    assert config.namespace == "hbot/prod-1"


def test_password_never_logged(
    mosquitto: Broker, caplog: pytest.LogCaptureFixture, connections: list[Connection]
) -> None:
    caplog.set_level(logging.DEBUG)
    config = parse_broker_url(f"mqtt://bot:hunter2@{mosquitto.host}:{mosquitto.port}")
    conn = Connection(config, client_id="agent-secret")
    connections.append(conn)
    conn.start()
    assert conn.wait_connected(5)
    conn.stop()
    assert "connected to" in caplog.text
    assert "hunter2" not in caplog.text


def test_messages_with_headroom_leave_queue_room_for_the_others() -> None:
    # Never started, so every QoS 1 message stays queued in paho, as during an outage or a burst.
    conn = Connection(parse_broker_url("mqtt://127.0.0.1:1"), client_id="agent-headroom", max_queued=10)
    assert all(conn.publish(f"t/{i}", b"x", qos=1) for i in range(6))
    assert conn.queued() == 6
    assert not conn.publish("t/spare", b"x", qos=1, headroom=4)  # 6 + 4 would fill it: dropped
    assert conn.queued() == 6
    assert conn.publish("t/spare", b"x", qos=1, headroom=3)
    assert all(conn.publish(f"t/more/{i}", b"x", qos=1) for i in range(3))  # the reserved room
    assert conn.queued() == 10
    assert not conn.publish("t/full", b"x", qos=1)
    conn._client._reset_sockets()  # never started, so nothing else closes paho's wake-up sockets


def test_reconnect_waits_are_capped_at_a_few_seconds_by_default() -> None:
    from supervisor.mqtt.connection import DEFAULT_MAX_BACKOFF

    rng = random.Random(7)
    assert DEFAULT_MAX_BACKOFF <= 4
    assert max(backoff_delay(attempt, 0.5, DEFAULT_MAX_BACKOFF, rng) for attempt in range(64)) <= DEFAULT_MAX_BACKOFF
