"""External events: the webhook receiver, its journal, and the agent typing events into consoles.

Real parts only: a real mosquitto, plain paho subscribers (as a Hummingbot bridge
subscribes), HTTP through urllib, the receiver in-process or as ``python -m
supervisor events serve``, real agents and example bots in tmux.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import time
import typing as t
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from supervisor.agent.external import event_values, render_event_line
from supervisor.cli import cli
from supervisor.core.manager import Manager
from supervisor.core.recipe import parse_recipe
from supervisor.errors import SupervisorError
from supervisor.events import EventsError
from supervisor.events.config import load_events_config
from supervisor.events.journal import Journal
from supervisor.events.receiver import Receiver
from supervisor.mqtt.config import load_agent_config
from supervisor.paths import Paths
from tests.conftest import RECIPES, Broker, free_port, start_mosquitto, stop_process, wait_until
from tests.test_agent import HOST, AgentRunner, Message, Watcher, agents, drain, next_matching

__all__ = ["agents"]  # a fixture shared with test_agent

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator

TOKEN = "s3cret-token-0123456789"
TOPIC = "hbot/mm-1/external/event/signals/btc/long"


def routes_toml(**route: t.Any) -> str:
    """One [routes.btc] table (with overrides) after a loopback [receiver]."""
    values: dict[str, t.Any] = {
        "token": TOKEN,
        "event": "signals.btc.long",
        "targets": ["h1/mm-1"],
        "rate": 6000,
        "burst": 200,
        **route,
    }
    lines = ["[receiver]", 'listen = "127.0.0.1:0"', "", "[routes.btc]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


class Posted(t.NamedTuple):
    status: int
    body: dict[str, t.Any]
    headers: dict[str, str]


def post(
    url: str, body: bytes, *, token: str | None = None, content_type: str = "application/json", **headers: str
) -> Posted:
    """POST like TradingView does (text/plain, or application/json when the message is JSON)."""
    query = f"?token={token}" if token is not None else ""
    request = urllib.request.Request(
        url + query, data=body, method="POST", headers={"Content-Type": content_type, **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return Posted(response.status, json.loads(response.read()), dict(response.headers))
    except urllib.error.HTTPError as e:
        with e:
            return Posted(e.code, json.loads(e.read()), dict(e.headers))


class Receivers:
    """Builds in-process receivers on one SUPERVISOR_HOME; closes them at teardown."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.paths = Paths.from_env(home)
        self.open: list[Receiver] = []

    def start(self, broker_url: str, toml: str, secret: str | None = None, **options: t.Any) -> Receiver:
        self.paths.events_config.write_text(toml)
        events = load_events_config(self.paths.events_config)
        config = load_agent_config(None, {}, {"url": broker_url, "host_id": "rx", "secret": secret})
        journal = Journal(self.paths.events_journal)
        receiver = Receiver(events, config, journal, audit_path=self.paths.audit_log, **options)
        receiver.start()
        self.open.append(receiver)
        return receiver

    def close(self) -> None:
        while self.open:
            receiver = self.open.pop()
            with contextlib.suppress(Exception):
                receiver.close()


@pytest.fixture
def receivers(isolated_env: Path) -> Iterator[Receivers]:
    made = Receivers(isolated_env)
    yield made
    made.close()


@pytest.fixture
def watcher(mosquitto: Broker) -> Iterator[Watcher]:
    client = Watcher(mosquitto.host, mosquitto.port)
    yield client
    client.close()


def announce(broker: Broker, host: str, *names: str, plugin: bool = True, state: str = "running") -> None:
    """Publish the retained records an agent keeps: its host online, and each instance's state."""
    client = Watcher(broker.host, broker.port)
    try:
        record = {"host": host, "state": "online"}
        client.publish(f"supervisor/{host}/agent", json.dumps(record).encode(), retain=True)
        for name in names:
            body = {"name": name, "host": host, "state": state, "plugin": plugin}
            client.publish(f"supervisor/{host}/{name}/state", json.dumps(body).encode(), retain=True)
    finally:
        client.close()


def hook(receiver: Receiver, route: str = "btc") -> str:
    return f"{receiver.url}hooks/{route}"


def journal_status(home: Path, event_id: int) -> str | None:
    journal = Journal(Paths.from_env(home).events_journal, read_only=True)
    try:
        entry = journal.get(event_id)
        return entry.status if entry else None
    finally:
        journal.close()


# --- a plugin-style subscriber gets the event on Hummingbot's exact topic ---------------------------


def test_right_token_reaches_a_plugin_style_subscriber_on_the_exact_topic(
    mosquitto: Broker, watcher: Watcher, receivers: Receivers, isolated_env: Path
) -> None:
    announce(mosquitto, "h1", "mm-1")
    got = watcher.watch("hbot/mm-1/external/event/#")  # what Hummingbot's bridge subscribes
    shown = watcher.watch("supervisor/h1/mm-1/events")  # the dashboard's event stream
    receiver = receivers.start(mosquitto.url, routes_toml())
    before = time.time()

    # JSON body with the token inside (TradingView sends application/json when the message is JSON).
    answer = post(hook(receiver), json.dumps({"token": TOKEN, "side": "buy", "amount": 0.1}).encode())
    assert answer.status == 202
    assert answer.body == {"status": "queued", "id": 1}
    message = got.get(timeout=5)
    assert message.topic == TOPIC
    payload = message.json()
    # Hummingbot's ExternalEventMessage, plus our members (Hummingbot ignores unknown ones).
    assert list(payload) == ["timestamp", "sequence", "type", "data", "receiver", "expires", "to"]
    assert payload["to"] == ["h1/mm-1"]
    assert payload["sequence"] == 1
    assert payload["type"] == "webhook"
    assert payload["data"] == {"side": "buy", "amount": 0.1}  # the token never reaches the broker
    assert int(before * 1000) - 1000 <= payload["timestamp"] <= int(time.time() * 1000)
    # Hummingbot's listener: the event name is the topic after 'event/', with '/' -> '.'.
    assert message.topic.split("event/")[1].replace("/", ".") == "signals.btc.long"

    # A plain-text alert with the token in the URL becomes {"message": text}.
    answer = post(hook(receiver), b"BTCUSDT crossed 42000", token=TOKEN, content_type="text/plain")
    assert answer.status == 202
    message = got.get(timeout=5)
    assert message.json()["data"] == {"message": "BTCUSDT crossed 42000"}
    assert message.json()["sequence"] == 2
    wait_until(lambda: journal_status(isolated_env, 2) == "published", message="event 2 marked published")
    assert shown.get(timeout=5).json()["msg"] == "external event 'signals.btc.long' #1 from route 'btc' published"
    audit = [json.loads(line) for line in Paths.from_env(isolated_env).audit_log.read_text().splitlines()]
    wanted = {"source": "webhook", "route": "btc", "id": 1, "result": "published"}.items()
    assert any(wanted <= entry.items() for entry in audit)
    assert TOKEN not in Paths.from_env(isolated_env).audit_log.read_text()
    assert TOKEN.encode() not in Paths.from_env(isolated_env).events_journal.read_bytes()


def test_wrong_or_missing_token_or_unknown_route_publishes_nothing(
    mosquitto: Broker, watcher: Watcher, receivers: Receivers, isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    announce(mosquitto, "h1", "mm-1")
    caplog.set_level(logging.DEBUG)
    got = watcher.watch("hbot/#")
    receiver = receivers.start(mosquitto.url, routes_toml())
    wrong = "wrong-token-0123456789xyz"
    assert post(hook(receiver), b"{}", token=wrong).status == 401
    assert post(hook(receiver), json.dumps({"token": wrong}).encode()).status == 401
    missing = post(hook(receiver), b"go long", content_type="text/plain")
    assert missing.status == 401
    assert "missing token" in missing.body["error"]
    assert post(hook(receiver, "nope"), b"{}", token=TOKEN).status == 404
    assert post(f"{receiver.url}elsewhere", b"{}", token=TOKEN).status == 404
    # Then a good one: it is the first (and only) thing the subscriber sees.
    assert post(hook(receiver), b'{"n":1}', token=TOKEN).status == 202
    first = got.get(timeout=5)
    assert first.topic == TOPIC
    assert first.json()["data"] == {"n": 1}
    assert first.json()["sequence"] == 1
    assert got.empty()
    assert all(TOKEN not in r.getMessage() and wrong not in r.getMessage() for r in caplog.records)
    audit = Paths.from_env(isolated_env).audit_log.read_text()
    assert '"result":401' in audit
    assert wrong not in audit


def test_oversized_body_gets_413_and_nothing_is_journaled(
    mosquitto: Broker, receivers: Receivers, isolated_env: Path
) -> None:
    toml = routes_toml().replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\nmax_body = 1024')
    receiver = receivers.start(mosquitto.url, toml)
    answer = post(hook(receiver), b"x" * 1025, token=TOKEN, content_type="text/plain")
    assert answer.status == 413
    assert "at most 1024 bytes" in answer.body["error"]
    assert post(hook(receiver), b"x" * 1024, token=TOKEN, content_type="text/plain").status == 202
    journal = Journal(Paths.from_env(isolated_env).events_journal, read_only=True)
    assert [e.id for e in journal.recent()] == [1]
    journal.close()


def test_a_burst_past_the_rate_limit_gets_429(mosquitto: Broker, receivers: Receivers) -> None:
    receiver = receivers.start(mosquitto.url, routes_toml(rate=1, burst=3))
    statuses = [post(hook(receiver), f'{{"n":{i}}}'.encode(), token=TOKEN) for i in range(5)]
    assert [s.status for s in statuses] == [202, 202, 202, 429, 429]
    assert int(statuses[3].headers["Retry-After"]) >= 1
    # A wrong token is refused before it can use up the route's allowance.
    assert post(hook(receiver), b"{}", token="x" * 20).status == 401


def test_a_duplicate_within_the_window_is_dropped(mosquitto: Broker, watcher: Watcher, receivers: Receivers) -> None:
    announce(mosquitto, "h1", "mm-1")
    got = watcher.watch("hbot/#")
    receiver = receivers.start(mosquitto.url, routes_toml())
    assert post(hook(receiver), b'{"side":"buy"}', token=TOKEN).body == {"status": "queued", "id": 1}
    again = post(hook(receiver), b'{"side":"buy"}', token=TOKEN)
    assert (again.status, again.body) == (200, {"status": "duplicate", "id": 1})
    assert post(hook(receiver), b'{"side":"sell"}', token=TOKEN).body == {"status": "queued", "id": 2}
    assert [got.get(timeout=5).json()["data"]["side"] for _ in range(2)] == ["buy", "sell"]
    assert got.empty()


def test_source_allow_list_and_trusted_proxy(mosquitto: Broker, receivers: Receivers) -> None:
    toml = routes_toml(allow=["203.0.113.0/24"]).replace(
        'listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\ntrusted_proxies = ["127.0.0.1"]'
    )
    receiver = receivers.start(mosquitto.url, toml)
    assert post(hook(receiver), b"{}", token=TOKEN).status == 403
    forwarded = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
    assert post(hook(receiver), b'{"a":1}', token=TOKEN, **forwarded).status == 202
    outside = {"X-Forwarded-For": "203.0.113.9, 198.51.100.1"}
    assert post(hook(receiver), b'{"a":2}', token=TOKEN, **outside).status == 403


def test_patterns_resolve_through_the_fleet_view(
    mosquitto: Broker, watcher: Watcher, receivers: Receivers, isolated_env: Path
) -> None:
    announce(mosquitto, "h1", "mm-2", "other")
    announce(mosquitto, "h2", "mm-3")
    announce(mosquitto, "h3", "solo")
    got = watcher.watch("hbot/#")
    receiver = receivers.start(mosquitto.url, routes_toml(targets=["*/mm-*", "solo"], event="alert"))
    assert post(hook(receiver), b"{}", token=TOKEN).status == 202
    topics = sorted(got.get(timeout=5).topic for _ in range(3))
    assert topics == [
        "hbot/mm-2/external/event/alert",
        "hbot/mm-3/external/event/alert",
        "hbot/solo/external/event/alert",
    ]
    receivers.close()
    receiver = receivers.start(mosquitto.url, routes_toml(targets=["h9/*"], event="alert"))
    assert post(hook(receiver), b'{"again":1}', token=TOKEN).status == 202
    wait_until(lambda: journal_status(isolated_env, 2) == "failed", message="an unmatched pattern fails the event")
    entry = Journal(Paths.from_env(isolated_env).events_journal, read_only=True).get(2)
    assert entry is not None
    assert entry.error == "h9/*: no instance matches h9/*"


# --- nothing lost ------------------------------------------------------------------------------------


PERSISTENT = "persistence true\npersistence_location {dir}/\n"


class PersistentSubscriber:
    """A bot-like subscriber with a persistent session: the broker keeps its messages while it is away."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.got: queue.Queue[Message] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bot-{uuid.uuid4().hex[:8]}", clean_session=False
        )
        self.client.reconnect_delay_set(1, 1)
        subscribed: queue.Queue[int] = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.put(mid)
        self.seen: set[bytes] = set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        _, mid = self.client.subscribe(topic, 1)
        assert subscribed.get(timeout=5) == mid

    def _on_message(self, _client: mqtt.Client, _userdata: t.Any, message: mqtt.MQTTMessage) -> None:
        # A copy the broker sends again with the DUP flag (its session saved before our PUBACK reached it)
        # is MQTT's own redelivery: a bot drops it, as our agent does. Anything else counts.
        payload = bytes(message.payload)
        if message.dup and payload in self.seen:
            return
        self.seen.add(payload)
        self.got.put(Message(message.topic, payload, bool(message.retain), time.monotonic()))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
            self.client.loop_stop()


def test_broker_down_20s_while_50_events_arrive_all_delivered_in_order_once(
    tmp_path: Path, receivers: Receivers, isolated_env: Path
) -> None:
    workdir = tmp_path / "pbroker"
    broker = start_mosquitto(workdir, extra_conf=PERSISTENT.format(dir=workdir))
    bot = PersistentSubscriber(broker.host, broker.port, "hbot/mm-1/external/event/#")
    try:
        announce(broker, "h1", "mm-1")
        receiver = receivers.start(broker.url, routes_toml(max_age=600))
        assert post(hook(receiver), b'{"n":0}', token=TOKEN).status == 202
        assert bot.got.get(timeout=5).json()["data"] == {"n": 0}

        stop_process(broker.process)  # SIGTERM: mosquitto saves the bot's session
        outage_start = time.monotonic()
        answers = [post(hook(receiver), f'{{"n":{n}}}'.encode(), token=TOKEN) for n in range(1, 51)]
        assert [a.status for a in answers] == [202] * 50
        assert journal_status(isolated_env, 51) == "queued"
        time.sleep(max(0.0, 20.0 - (time.monotonic() - outage_start)))  # the outage itself, not a wait
        assert bot.got.empty()
        broker = start_mosquitto(workdir, port=broker.port, extra_conf=PERSISTENT.format(dir=workdir))

        received = [bot.got.get(timeout=30).json() for _ in range(50)]
        assert [m["data"]["n"] for m in received] == list(range(1, 51))
        assert [m["sequence"] for m in received] == list(range(2, 52))
        # None twice: the next message after the 50 is a fresh one.
        assert post(hook(receiver), b'{"n":99}', token=TOKEN).status == 202
        assert bot.got.get(timeout=5).json()["data"] == {"n": 99}
        wait_until(lambda: journal_status(isolated_env, 51) == "published", message="the journal caught up")
    finally:
        bot.close()
        stop_process(broker.process)


def serve(home: Path, broker_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SUPERVISOR_HOME": str(home)}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "supervisor", "events", "serve", "--broker", broker_url],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_kill_9_between_accept_and_publish_delivers_after_restart(tmp_path: Path, isolated_env: Path) -> None:
    port, http_port = free_port(), free_port()
    Paths.from_env(isolated_env).events_config.write_text(
        routes_toml().replace('"127.0.0.1:0"', f'"127.0.0.1:{http_port}"')
    )
    url = f"http://127.0.0.1:{http_port}/hooks/btc"
    log = tmp_path / "receiver.log"
    proc = serve(isolated_env, f"mqtt://127.0.0.1:{port}", log)  # no broker there yet: accept, cannot publish
    try:

        def accepted() -> Posted | None:
            with contextlib.suppress(OSError):
                return post(url, b'{"side":"buy"}', token=TOKEN)
            assert proc.poll() is None, log.read_text()
            return None

        answer = wait_until(accepted, timeout=20, message="the receiver answers")
        assert answer.status == 202
        result = CliRunner().invoke(cli, ["events", "ls", "--json"])
        assert result.exit_code == 0, result.output
        assert [(e["id"], e["status"], e["targets"]) for e in json.loads(result.stdout)] == [(1, "queued", ["h1/mm-1"])]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)

        broker = start_mosquitto(tmp_path / "broker9", port=port)
        announce(broker, "h1", "mm-1")
        bot = Watcher(broker.host, broker.port)
        try:
            got = bot.watch("hbot/mm-1/external/event/#")
            proc = serve(isolated_env, broker.url, log)
            message = got.get(timeout=20)
            assert message.topic == TOPIC
            assert message.json()["data"] == {"side": "buy"}
            wait_until(lambda: journal_status(isolated_env, 1) == "published", timeout=10)
            text = CliRunner().invoke(cli, ["events", "ls"]).stdout
            assert text.splitlines()[0].split() == ["ID", "RECEIVED", "ROUTE", "EVENT", "TARGETS", "STATUS", "NOTE"]
            assert "published" in text.splitlines()[1]
        finally:
            bot.close()
            stop_process(proc)
            stop_process(broker.process)
    finally:
        stop_process(proc)
    assert TOKEN not in log.read_text()


# --- a plugin-less bot's console, through a real agent ----------------------------------------------------


def console_has(manager: Manager, name: str, text: str) -> Callable[[], bool]:
    return lambda: text in manager.log_path(name).read_text(errors="replace")


def test_an_alert_reaches_a_plugin_less_example_bot_console(
    mosquitto: Broker, watcher: Watcher, receivers: Receivers, manager: Manager, agents: AgentRunner
) -> None:
    manager.new("ex-1", "example-bot")
    manager.start(["ex-1"])
    agents.start(mosquitto.url)
    events = watcher.watch(f"supervisor/{HOST}/ex-1/events")
    receiver = receivers.start(mosquitto.url, routes_toml(targets=[f"{HOST}/ex-1"]))

    assert post(hook(receiver), b"long BTC at 42000", token=TOKEN, content_type="text/plain").status == 202
    wait_until(console_has(manager, "ex-1", "ALERT signals.btc.long: long BTC at 42000"), timeout=10)
    reported = next_matching(events, lambda m: "typed into the console" in m.json()["msg"])
    assert "alert signals.btc.long long BTC at 42000" in reported.json()["msg"]

    # A control character in the alert is refused: reported, never typed.
    # (In a JSON body it would arrive escaped as \u001b, which is printable: plain text keeps it raw.)
    assert post(hook(receiver), b"\x1b[31mred", token=TOKEN, content_type="text/plain").status == 202
    refused = next_matching(events, lambda m: "Not typed" in m.json()["msg"])
    assert "control character" in refused.json()["msg"]
    assert "U+001B" in refused.json()["msg"]
    assert "red" not in manager.tail("ex-1", 50)


def test_an_unmapped_event_is_logged_and_reported_never_typed(
    mosquitto: Broker, watcher: Watcher, manager: Manager, agents: AgentRunner, tmp_path: Path, bot_origin: Path
) -> None:
    recipe = tmp_path / "quiet.yaml"
    source = Path(__file__).parent.parent / "recipes" / "example-bot.yaml"
    recipe.write_text(source.read_text().replace("events:\n  '*': 'alert {name} {payload}'\n", ""))
    manager.new("quiet", str(recipe))
    manager.start(["quiet"])
    # A bot with the plugin gets events from its own bridge: the agent leaves it alone, mapping or not.
    plugin = tmp_path / "plugin-bot.yaml"
    plugin.write_text((RECIPES / "plugin-bot.yaml").read_text() + "events:\n  '*': 'alert {name}'\n")
    manager.new("pb", str(plugin), repo=str(bot_origin))
    manager.start(["pb"])
    events = watcher.watch(f"supervisor/{HOST}/+/events")
    # A retained event is replayed at every (re)subscription: never typed, mapped or not.
    watcher.publish("hbot/quiet/external/event/sell", b'{"data":{}}', retain=True)
    agents.start(mosquitto.url)
    retained = next_matching(events, lambda m: "retained" in m.json()["msg"])
    assert retained.json()["msg"] == (
        "external event 'sell' ignored: it is a retained message (replayed at every connect)."
    )
    watcher.publish("hbot/pb/external/event/buy", b'{"data":{"amount":"1"}}')
    watcher.publish("hbot/quiet/external/event/buy", b'{"data":{"amount":"1"}}')
    reported = next_matching(events, lambda m: "ignored" in m.json()["msg"])
    assert reported.topic == f"supervisor/{HOST}/quiet/events"
    assert reported.json()["msg"] == "external event 'buy' ignored: recipe 'example-bot' maps no console line to it."
    assert "buy" not in manager.tail("quiet", 50).replace("Try start", "")
    assert "alert" not in manager.log_path("pb").read_text(errors="replace")
    assert all(m.topic != f"supervisor/{HOST}/pb/events" for m in drain(events))


# --- configuration ---------------------------------------------------------------------------------------------


class BadConfig(t.NamedTuple):
    test_id: str
    toml: str
    message: str


BAD_CONFIGS = [
    BadConfig("short-token", routes_toml(token="short"), "needs a secret of at least 16"),
    BadConfig("bad-target", routes_toml(targets=["a/b/c"]), "target 'a/b/c' is not HOST/INSTANCE"),
    BadConfig("no-targets", routes_toml(targets=[]), "name at least one target"),
    BadConfig("bad-event", routes_toml(event="a b"), "'a b' is not an event name"),
    BadConfig("unknown-key", routes_toml(secret="x"), "unknown key 'routes.btc.secret'"),
    BadConfig("bad-allow", routes_toml(allow=["nowhere"]), "'nowhere' is not an IP address"),
    BadConfig("no-routes", "[receiver]\n", "no routes"),
]


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=[c.test_id for c in BAD_CONFIGS])
def test_bad_routes_file_names_file_and_key(case: BadConfig, tmp_path: Path) -> None:
    path = tmp_path / "events.toml"
    path.write_text(case.toml)
    with pytest.raises(EventsError, match=case.message) as caught:
        load_events_config(path)
    assert str(path) in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_route_config_reads_token_file_and_tradingview_addresses(tmp_path: Path) -> None:
    (tmp_path / "btc.token").write_text(TOKEN + "\n")
    path = tmp_path / "events.toml"
    path.write_text(
        routes_toml(allow=["tradingview"])
        .replace(f'token = "{TOKEN}"', 'token_file = "btc.token"')
        .replace('event = "signals.btc.long"', 'event = "signals/btc/long"')
    )
    route = load_events_config(path).routes["btc"]
    assert route.token == TOKEN
    assert route.event == "signals.btc.long"
    assert [str(n) for n in route.allow] == [
        "52.89.214.238/32",
        "34.212.75.30/32",
        "54.218.53.128/32",
        "52.32.178.7/32",
    ]
    assert TOKEN not in repr(route)


def test_recipe_events_table_is_validated(tmp_path: Path) -> None:
    base = {"name": "r", "source": {"repo": "x"}, "run": {"command": "true"}}
    recipe = parse_recipe({**base, "events": {"buy": "buy {amount}", "*": "event {name}"}}, tmp_path / "r.yaml")
    assert recipe.external_events == {"buy": "buy {amount}", "*": "event {name}"}
    with pytest.raises(Exception, match=r"key 'events\.a b' is not an event name"):
        parse_recipe({**base, "events": {"a b": "x"}}, tmp_path / "r.yaml")
    with pytest.raises(Exception, match="control characters"):
        parse_recipe({**base, "events": {"buy": "buy\x1b"}}, tmp_path / "r.yaml")


def test_events_ls_without_a_journal_says_so() -> None:
    result = CliRunner().invoke(cli, ["events", "ls"])
    assert result.exit_code == 0
    assert "no events yet" in result.stderr
    assert json.loads(CliRunner().invoke(cli, ["events", "ls", "--json"]).stdout) == []


def test_journal_prunes_only_finished_old_events(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    old = time.time() - 8 * 24 * 3600

    def add(body: bytes) -> int:
        return journal.accept(
            route="r", event="e", targets=["x"], body=body, is_text=True, source=None, now=old, dedupe_window=0
        )[0]

    done, waiting, failed = add(b"a"), add(b"b"), add(b"c")
    journal.update(done, status="published", outcomes={"h1/x": "published"}, error=None, now=time.time())
    journal.update(failed, status="failed", outcomes={}, error="no match", now=time.time())
    assert journal.prune(time.time()) == 2
    assert [(e.id, e.status) for e in journal.recent()] == [(waiting, "queued")]
    journal.close()


def test_events_serve_without_routes_file_says_what_to_do(isolated_env: Path) -> None:
    result = CliRunner().invoke(cli, ["events", "serve", "--broker", "mqtt://127.0.0.1:1"])
    assert result.exit_code == 1
    path = Paths.from_env(isolated_env).events_config
    assert result.stderr == (
        f"Error: config file '{path}': not found. Create it with at least one [routes.NAME] table (see the README).\n"
    )


def test_journal_is_owner_only(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "events.sqlite")
    journal.close()
    assert (tmp_path / "events.sqlite").stat().st_mode & 0o777 == 0o600


def test_a_queued_event_whose_targets_all_acknowledged_is_closed_not_resent(
    mosquitto: Broker, watcher: Watcher, receivers: Receivers, isolated_env: Path
) -> None:
    """A crash between the last PUBACK's record and the status change: after a restart, nothing is sent twice."""
    announce(mosquitto, "h1", "mm-1")
    journal = Journal(Paths.from_env(isolated_env).events_journal)
    event_id, _ = journal.accept(
        route="btc", event="signals.btc.long", targets=["h1/mm-1"], body=b"{}", is_text=False, source=None,
        now=time.time(), dedupe_window=0,
    )  # fmt: skip
    journal.update(event_id, status="queued", outcomes={"h1/mm-1": "published"}, error=None, now=time.time())
    journal.close()
    got = watcher.watch("hbot/#")
    receiver = receivers.start(mosquitto.url, routes_toml())
    wait_until(lambda: journal_status(isolated_env, event_id) == "published", message="the event is closed")
    assert post(hook(receiver), b'{"next":1}', token=TOKEN).status == 202
    assert got.get(timeout=5).json()["sequence"] == event_id + 1


def test_bad_requests_get_a_clear_error_and_the_receiver_keeps_serving(mosquitto: Broker, receivers: Receivers) -> None:
    receiver = receivers.start(mosquitto.url, routes_toml())
    not_utf8 = post(hook(receiver), b"\xff\xfe", token=TOKEN, content_type="text/plain")
    assert (not_utf8.status, not_utf8.body) == (400, {"error": "the body must be UTF-8 text"})
    request = urllib.request.Request(hook(receiver) + f"?token={TOKEN}", data=b"{}", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as put:
        urllib.request.urlopen(request, timeout=10)
    assert put.value.code == 405
    put.value.close()
    with socket.create_connection(("127.0.0.1", receiver.server.server_address[1])) as raw:
        raw.sendall(b"POST /hooks/btc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 411 ")
    assert post(hook(receiver), b'{"still":"here"}', token=TOKEN).status == 202


class LineCase(t.NamedTuple):
    test_id: str
    template: str
    payload: dict[str, t.Any]
    line: str | None  # None: refused
    error: str = ""


LINE_CASES = [
    LineCase("member", "buy {amount}", {"data": {"amount": 0.5}}, "buy 0.5"),
    LineCase("text", "event {name} {payload}", {"data": {"message": "BTC up"}}, "event sig.a BTC up"),
    LineCase("json", "event {payload}", {"data": {"a": [1, 2], "b": True}}, 'event {"a":[1,2],"b":true}'),
    LineCase("optional", "buy[ {amount}][ at {price}]", {"data": {"amount": "1"}}, "buy 1"),
    LineCase("missing", "buy {amount}", {"data": {}}, None, "has no value for 'amount'"),
    LineCase("control", "say {text}", {"data": {"text": "a\x1bb"}}, None, "control character"),
    LineCase("escaped", "say {payload}", {"data": {"text": "a\x1bb"}}, 'say {"text":"a\\u001bb"}'),
    LineCase("not-json", "event {name}", {}, "event sig.a"),
]


@pytest.mark.parametrize("case", LINE_CASES, ids=[c.test_id for c in LINE_CASES])
def test_event_console_lines(case: LineCase) -> None:
    values = event_values("sig.a", json.dumps(case.payload).encode() if case.payload else b"not json")
    if case.line is None:
        with pytest.raises(SupervisorError, match=case.error):
            render_event_line(case.template, values, "instance 'x': external event 'sig.a'")
    else:
        assert render_event_line(case.template, values, "instance 'x'") == case.line
