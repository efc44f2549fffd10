"""Hummingbot's clients against example-bot under the agent: the bot-level meaning of each command.

Real clients only: commlib-py 0.13 on paho 2 (this venv, used as hbot-remote-client-py
uses it), commlib-py 0.11 on paho 1.6 (its own venv, outside the repository, run as a
subprocess), and an aiomqtt client that behaves as hummingbot-api's bots orchestrator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path

import pytest

from supervisor.core.manager import Manager
from tests.conftest import Broker, make_origin, missing, require_module, wait_until
from tests.test_agent import (
    COMMLIB_PAHO_WARNING,
    HOST,
    REPLY_RE,
    AgentRunner,
    BotCommands,
    Message,
    Watcher,
    agents,
    bot_commands,
    console,
    drain,
    envelope,
    new_ticker,
    next_matching,
    start_for_pid,
    watchers,
)

if t.TYPE_CHECKING:
    from collections.abc import Callable

    import aiomqtt

__all__ = ["agents", "bot_commands", "watchers"]  # fixtures shared with test_agent

EXAMPLE_SETTINGS = ("interval=0.2",)


def new_example(manager: Manager, name: str, *, start: bool = True) -> int | None:
    manager.new(name, "example-bot", settings=EXAMPLE_SETTINGS)
    return start_for_pid(manager, name) if start else None


def alive(manager: Manager, name: str) -> int | None:
    status = manager.status([name])[0]
    return status.pid if status.state == "running" else None


# --- commlib 0.13 + paho 2, as hbotrc ---------------------------------------------


@COMMLIB_PAHO_WARNING
def test_hbotrc_stop_import_start_status_history_with_the_bots_answers_only(
    manager: Manager,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
    bot_commands: Callable[..., BotCommands],
) -> None:
    pid = new_example(manager, "ex")
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    heartbeats = watcher.watch("hbot/ex/hb")
    client = bot_commands(mosquitto, "ex")

    reply = client.start()
    # Only the console's answer: no tick lines, no prompt, no echo, no "console command" log line.
    assert (reply.status, reply.msg) == (200, "Strategy default started."), reply
    reply = client.start()
    assert (reply.status, reply.msg) == (400, 'The bot is already running - please run "stop" first'), reply

    reply = client.stop()
    assert (reply.status, reply.msg) == (200, "Stopping strategy default: cancelling open orders... done."), reply
    # The strategy stopped; the process, its console and its heartbeats did not.
    assert alive(manager, "ex") == pid
    stopped_at = time.monotonic()
    next_matching(heartbeats, lambda m: m.at > stopped_at + 0.1, timeout=5)
    assert manager.status(["ex"])[0].desired == "running"

    reply = client.import_strategy("conf_pmm_1")
    assert (reply.status, reply.msg) == (200, "Configuration from conf_pmm_1 file is imported."), reply
    reply = client.start()
    assert (reply.status, reply.msg) == (200, "Strategy conf_pmm_1 started."), reply
    reply = client.status()
    assert reply.status == 200 and re.fullmatch(r"Strategy conf_pmm_1 running for \d+s, ticks \d+\.", reply.msg)

    # example-bot fills a simulated trade every third tick; history returns them as records.
    wait_until(lambda: "(order ex-2)" in console(manager, "ex"), timeout=10, message="two simulated fills")
    reply = client.history()
    assert reply.status == 200, reply
    assert len(reply.trades) >= 2, reply
    # Hummingbot's keys and types (TradeFill.to_bounty_api_json), newest first.
    first = reply.trades[-1]
    assert list(first) == [
        "market",
        "trade_id",
        "price",
        "quantity",
        "symbol",
        "trade_timestamp",
        "trade_type",
        "base_asset",
        "quote_asset",
        "raw_json",
    ], first
    assert (first["trade_id"], first["market"], first["symbol"]) == ("ex-1", "example_exchange", "EXAMPLE-USDT"), first
    assert first["trade_type"] == "BUY" and re.fullmatch(r"\d+\.\d*", first["price"]) and first["quantity"] == "0.5"
    assert isinstance(first["trade_timestamp"], int), first
    assert reply.trades[0]["trade_timestamp"] >= first["trade_timestamp"], reply.trades
    assert re.fullmatch(r"\d+ trade\(s\), volume [\d.]+, pnl -?[\d.]+\.", reply.msg), reply

    client.stop()
    reply = client.status()
    assert (reply.status, reply.msg) == (400, "No strategy is currently running!"), reply
    assert alive(manager, "ex") == pid


def test_stop_with_skip_order_cancellation_uses_the_recipe_line_or_is_refused(
    manager: Manager,
    mosquitto: Broker,
    bot_origin: Path,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    pid = new_example(manager, "ex")
    new_ticker(manager, "tb", bot_origin, start=True)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)

    for name in ("ex", "tb"):
        data, _ = watcher.request(f"hbot/{name}/start", {"async_backend": False})
        assert data["status"] == 200, data
    data, _ = watcher.request("hbot/ex/stop", {"skip_order_cancellation": True, "async_backend": False})
    assert (data["status"], data["msg"]) == (200, "Stopping strategy default: open orders left in place."), data
    assert "stop --keep-orders" in console(manager, "ex")
    assert alive(manager, "ex") == pid

    # The ticker recipe has no stop_keep_orders line: refused, in both modes, and nothing is typed.
    before = console(manager, "tb")
    for async_backend in (False, True):
        data, raw = watcher.request("hbot/tb/stop", {"skip_order_cancellation": True, "async_backend": async_backend})
        assert data["status"] == 400 and "has no console.stop_keep_orders line" in data["msg"], data
        assert REPLY_RE.fullmatch(raw), raw
    time.sleep(0.5)  # give a wrongly typed stop line time to show in the console
    assert "stopped strategy" not in console(manager, "tb")[len(before) :]
    data, _ = watcher.request("hbot/tb/status", {"async_backend": False})
    assert "status: running=True" in data["msg"], data


def test_console_lines_become_log_events_and_performance(
    manager: Manager,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    new_example(manager, "ex")
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    logs = watcher.watch("hbot/ex/log")
    events = watcher.watch("hbot/ex/events")
    performance = watcher.watch("hbot/ex/performance")

    record = next_matching(logs, lambda m: b"tick" in m.payload, timeout=5).json()
    assert list(record) == ["timestamp", "msg", "level_no", "level_name", "logger_name"]
    assert isinstance(record["timestamp"], float) and abs(record["timestamp"] - time.time()) < 30
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[ex\] tick \d+ \(idle\)", record["msg"]), record
    assert (record["level_no"], record["level_name"], record["logger_name"]) == (20, "INFO", "example-bot.console")

    data, _ = watcher.request("hbot/ex/start", {"async_backend": False, "script": "v2_with_controllers.py"})
    assert data["status"] == 200, data
    event = next_matching(events, timeout=10).json()
    assert event["type"] == "OrderFilled" and isinstance(event["timestamp"], int), event
    assert event["data"] == {
        "trade_type": "BUY",
        "amount": 0.5,
        "trading_pair": "EXAMPLE-USDT",
        "price": event["data"]["price"],
        "order_id": "ex-1",
    }
    report = next_matching(performance, timeout=5).json()
    assert list(report) == ["v2_with_controllers.py"], report
    figures = report["v2_with_controllers.py"]
    assert set(figures["performance"]) == {"global_pnl_quote", "volume_traded"} and figures["custom_info"] == {}

    # An error answer is logged at ERROR level.
    data, _ = watcher.request("hbot/ex/start", {"async_backend": False})
    assert data["status"] == 400
    error = next_matching(logs, lambda m: b"already running" in m.payload, timeout=5).json()
    assert (error["level_no"], error["level_name"]) == (40, "ERROR"), error

    # An async history answers at once and puts the console's text on notify, as the bot does.
    notify = watcher.watch("hbot/ex/notify")
    data, _ = watcher.request("hbot/ex/history", {"async_backend": True})
    assert data == {"status": 200, "msg": "", "trades": []}, data
    note = next_matching(notify, lambda m: b"trade id=ex-1 " in m.payload, timeout=10).json()
    assert note["msg"].endswith("."), note  # the summary line closes the answer; no tick line after it


def test_a_burst_of_console_lines_is_rate_limited_on_log(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    new_example(manager, "ex")
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    logs = watcher.watch("hbot/ex/log")
    next_matching(logs, timeout=5)  # the stream follows the console
    drain(logs)
    began = time.monotonic()
    burst = 200
    for i in range(burst):
        manager.send("ex", f"noise-{i}")
    wait_until(lambda: f"noise-{burst - 1}." in console(manager, "ex"), timeout=60, message="the burst")
    time.sleep(1.0)  # let the agent read the end of the burst
    got = [m.json()["msg"] for m in drain(logs)]
    elapsed = time.monotonic() - began
    # The burst printed 600+ lines (echo, log line, answer for each). At most log_rate (20) a second
    # went out, plus one second's worth at once: a bound that only grows on a slow machine.
    printed = console(manager, "ex").count("Unknown command: noise-")
    assert printed == burst
    assert 0 < len(got) <= 20 * elapsed + 20, (len(got), elapsed)
    assert all("noise-" in m or "tick" in m or "not published" in m for m in got), got


def test_identical_requests_each_run_as_in_hummingbot_however_close_together(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    pid = new_example(manager, "ex")
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    reply_to = f"client-{uuid.uuid4().hex}"
    replies = watcher.watch(reply_to)
    start = envelope(reply_to, {"async_backend": False})
    stop = envelope(reply_to, {"async_backend": False, "skip_order_cancellation": False})

    watcher.publish("hbot/ex/start", start)
    assert json.loads(replies.get(timeout=10).payload)["data"]["status"] == 200
    # The same bytes again at once (no DUP flag): a second request. The bot runs it and refuses it.
    watcher.publish("hbot/ex/start", start)
    again = json.loads(replies.get(timeout=10).payload)["data"]
    assert (again["status"], again["msg"]) == (400, 'The bot is already running - please run "stop" first'), again
    assert console(manager, "ex").count("Strategy default started.") == 1

    # start -> stop -> start with the same bytes and reply topic, moments apart: each one runs.
    watcher.publish("hbot/ex/stop", stop)
    assert json.loads(replies.get(timeout=10).payload)["data"]["status"] == 200
    watcher.publish("hbot/ex/start", start)
    data = json.loads(replies.get(timeout=10).payload)["data"]
    assert (data["status"], data["msg"]) == (200, "Strategy default started."), data
    assert console(manager, "ex").count("Strategy default started.") == 2
    data, _ = watcher.request("hbot/ex/status", {"async_backend": False})
    assert data["status"] == 200 and data["msg"].startswith("Strategy default running"), data
    assert alive(manager, "ex") == pid


def _ordered(got: list[Message], *predicates: Callable[[Message], bool]) -> list[Message]:
    """Return the first message matching each predicate, failing unless they came in this order."""
    found = []
    start = 0
    for predicate in predicates:
        index = next((i for i in range(start, len(got)) if predicate(got[i])), None)
        assert index is not None, [(m.topic, m.payload[:80]) for m in got]
        found.append(got[index])
        start = index + 1
    return found


def _status_update(msg: str) -> Callable[[Message], bool]:
    return lambda m: m.topic.endswith("/status_updates") and m.json()["msg"] == msg


def test_online_and_a_beat_come_at_launch_and_offline_before_the_restart_notify(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    new_example(manager, "ex", start=False)
    # Heartbeats every 60 s: anything sooner than that was sent because the process came up.
    agents.start(mosquitto.url, "--heartbeat-interval", "60", check_interval=0.2)
    watcher = watchers(mosquitto)
    wire = watcher.watch("hbot/ex/#")

    data, _ = watcher.request("hbot/ex/start", {"async_backend": False})
    assert data["status"] == 200, data
    got: list[Message] = []

    def seen(*predicates: Callable[[Message], bool]) -> bool:
        got.extend(drain(wire))
        return all(any(p(m) for m in got) for p in predicates)

    is_hb: Callable[[Message], bool] = lambda m: m.topic == "hbot/ex/hb"  # noqa: E731 - a named predicate
    wait_until(lambda: seen(_status_update("online"), is_hb), timeout=5, message="online and a beat")
    _ordered(got, _status_update("online"), is_hb)

    pid = alive(manager, "ex")
    assert pid is not None
    got.clear()
    states = watcher.watch(f"supervisor/{HOST}/ex/state")
    os.kill(pid, signal.SIGKILL)
    restarted: Callable[[Message], bool] = lambda m: m.topic == "hbot/ex/notify" and b"restarted it" in m.payload  # noqa: E731
    wait_until(
        lambda: seen(_status_update("offline"), _status_update("online"), is_hb, restarted),
        timeout=20,
        message="offline, online, a beat and the restart notify",
    )
    offline, _online, _beat = _ordered(got, _status_update("offline"), _status_update("online"), is_hb)
    notify = next(m for m in got if restarted(m))
    assert offline.at <= notify.at, "offline must come before the restarted notify"
    assert got.index(offline) < got.index(notify)
    new_pid = alive(manager, "ex")
    assert new_pid is not None and new_pid != pid
    # The crash is on record (fleet, dashboard) although the restart follows at once.
    next_matching(states, lambda m: m.json()["state"] == "crashed", timeout=5)

    # A process stop on our namespace says offline at once, not at the next tick.
    got.clear()
    data, _ = watcher.request(f"supervisor/{HOST}/ex/stop", {})
    assert data["status"] == 200, data
    wait_until(lambda: seen(_status_update("offline")), timeout=5, message="offline after our stop")


# --- plugin bots: heartbeats recorded, offline said when the process dies ----------

PLUGIN_BOT = """
import json, os, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

name = os.environ["BOT_NAME"]
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hbot.{name}")
client.connect("127.0.0.1", int(os.environ["BROKER_PORT"]))
client.loop_start()
online = {"timestamp": int(time.time() * 1000), "type": "availability", "msg": "online"}
client.publish(f"hbot/{name}/status_updates", json.dumps(online))
print("MQTT Bridge connected with success", flush=True)
while True:
    client.publish(f"hbot/{name}/hb", json.dumps({"ts": int((time.time() + 0.5) * 1e6)}))
    time.sleep(float(os.environ.get("HB_INTERVAL", "10")))
"""

PLUGIN_RECIPE = """
name: fake-plugin
description: a stand-in for a bot with Hummingbot's MQTT bridge (publishes hb, answers nothing)
source: {repo: set-by-test, ref: main}
vars: {port: "1883", hb_interval: "10"}
run:
  command: '{python} plugin_bot.py'
  env: {BOT_NAME: '{name}', BROKER_PORT: '{port}', HB_INTERVAL: '{hb_interval}'}
  ready: 'MQTT Bridge connected'
  ready_timeout: 15
mqtt: {plugin: true}
"""


def test_a_plugin_bots_heartbeats_are_recorded_and_its_death_is_announced(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher], tmp_path: Path
) -> None:
    origin = tmp_path / "plugin-origin"
    make_origin(origin, {"plugin_bot.py": PLUGIN_BOT})
    recipe = tmp_path / "fake-plugin.yaml"
    recipe.write_text(PLUGIN_RECIPE)
    manager.new("pb", str(recipe), repo=str(origin), settings=[f"port={mosquitto.port}", "hb_interval=3"])
    manager.start(["pb"])
    agents.start(mosquitto.url, check_interval=60)
    watcher = watchers(mosquitto)
    states = watcher.watch(f"supervisor/{HOST}/pb/state")
    updates = watcher.watch("hbot/pb/status_updates")

    # The stand-in beats every 3 s (the bridge: 10 s); its first beat may precede the agent.
    record = next_matching(states, lambda m: m.json().get("last_heartbeat") is not None, timeout=15).json()
    assert abs(record["last_heartbeat"] - time.time()) < 10, record
    listing = subprocess.run(
        [sys.executable, "-m", "supervisor", "fleet", "--broker", mosquitto.url, "ls", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    # fleet ls takes the later of a beat it hears and the one the agent recorded.
    [row] = [r for r in json.loads(listing.stdout)["instances"] if r["instance"] == "pb"]
    assert row["heartbeat_age"] is not None, row

    pid = alive(manager, "pb")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    offline = next_matching(updates, lambda m: m.json()["msg"] == "offline", timeout=10).json()
    assert offline["type"] == "availability", offline


# --- commlib 0.11 + paho 1.6: the generation Hummingbot up to v2.14 and hbotrc pin --

COMMLIB011 = ("commlib-py==0.11.5", "paho-mqtt==1.6.1")
COMMLIB011_CLIENT = """
import json, sys
from typing import Any, Optional
from commlib.msg import RPCMessage
from commlib.node import Node
from commlib.transports.mqtt import ConnectionParameters

host, port, bot = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class Start(RPCMessage):
    class Request(RPCMessage.Request):
        log_level: Optional[str] = None
        script: Optional[str] = None
        conf: Optional[str] = None
        is_quickstart: Optional[bool] = False
        async_backend: Optional[bool] = False
    class Response(RPCMessage.Response):
        status: Optional[int] = 200
        msg: Optional[str] = ""

class Stop(RPCMessage):
    class Request(RPCMessage.Request):
        skip_order_cancellation: Optional[bool] = False
        async_backend: Optional[bool] = False
    class Response(RPCMessage.Response):
        status: Optional[int] = 200
        msg: Optional[str] = ""

class Import(RPCMessage):
    class Request(RPCMessage.Request):
        strategy: str
    class Response(RPCMessage.Response):
        status: Optional[int] = 200
        msg: Optional[str] = ""

class Status(RPCMessage):
    class Request(RPCMessage.Request):
        async_backend: Optional[bool] = False
    class Response(RPCMessage.Response):
        status: Optional[int] = 200
        msg: Optional[str] = ""
        data: Optional[Any] = ""

class History(RPCMessage):
    class Request(RPCMessage.Request):
        days: Optional[float] = 0
        verbose: Optional[bool] = False
        precision: Optional[int] = None
        async_backend: Optional[bool] = False
    class Response(RPCMessage.Response):
        status: Optional[int] = 200
        msg: Optional[str] = ""
        trades: Optional[Any] = []

node = Node(node_name=f"hbot.{bot}", connection_params=ConnectionParameters(host=host, port=port), heartbeats=False)
prefix = f"hbot/{bot}"
kinds = {"start": Start, "stop": Stop, "import": Import, "status": Status, "history": History}
clients = {name: node.create_rpc_client(msg_type=kind, rpc_name=f"{prefix}/{name}") for name, kind in kinds.items()}
node.run()
for line in sys.stdin:
    name, _, args = line.strip().partition(" ")
    request = kinds[name].Request(**json.loads(args or "{}"))
    reply = clients[name].call(request, timeout=30)
    print("REPLY " + json.dumps(reply.dict()), flush=True)
"""


def commlib011_python() -> Path:
    """The interpreter of a venv with commlib-py 0.11.5 and paho-mqtt 1.6.1, made once per machine."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bot-supervisor" / "clients"
    target = cache / "commlib011"
    python = target / "bin" / "python"
    if python.exists():
        return python
    cache.mkdir(parents=True, exist_ok=True)
    building = cache / f"commlib011.{os.getpid()}.tmp"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, timeout=120)
        subprocess.run(
            [str(building / "bin" / "pip"), "install", "-q", *COMMLIB011], check=True, timeout=600, capture_output=True
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(building, ignore_errors=True)
        missing(f"the commlib 0.11 client venv cannot be built (is PyPI reachable?): {e}")
    # A venv works from where it is moved to when run through bin/python; the rename is atomic.
    if target.exists():
        shutil.rmtree(building, ignore_errors=True)
    else:
        building.rename(target)
    return python


def test_commlib_011_on_paho_16_gets_hummingbots_semantics(
    manager: Manager, mosquitto: Broker, agents: AgentRunner
) -> None:
    python = commlib011_python()
    pid = new_example(manager, "ex")
    agents.start(mosquitto.url)
    client = subprocess.Popen(
        [str(python), "-c", COMMLIB011_CLIENT, mosquitto.host, str(mosquitto.port), "ex"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None

    def call(name: str, **args: t.Any) -> dict[str, t.Any]:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(f"{name} {json.dumps(args)}\n")
        client.stdin.flush()
        while True:  # commlib 0.11 prints its own lines on stdout too
            line = client.stdout.readline()
            assert line, client.stderr.read() if client.stderr else ""
            if line.startswith("REPLY "):
                reply: dict[str, t.Any] = json.loads(line.removeprefix("REPLY "))
                return reply

    try:
        assert call("start") == {"status": 200, "msg": "Strategy default started."}
        assert call("stop") == {"status": 200, "msg": "Stopping strategy default: cancelling open orders... done."}
        assert call("import", strategy="conf_a") == {
            "status": 200,
            "msg": "Configuration from conf_a file is imported.",
        }
        assert call("start") == {"status": 200, "msg": "Strategy conf_a started."}
        status = call("status")
        assert status["status"] == 200 and status["msg"].startswith("Strategy conf_a running"), status
        wait_until(lambda: "(order ex-1)" in console(manager, "ex"), timeout=10, message="a simulated fill")
        history = call("history")
        assert history["status"] == 200 and history["trades"][-1]["trade_id"] == "ex-1", history
        assert call("import", strategy="") == {"status": 400, "msg": "Empty strategy_name given!"}
        assert alive(manager, "ex") == pid
    finally:
        client.stdin.close()
        client.terminate()
        client.wait(10)
        if client.stdout:
            client.stdout.close()
        if client.stderr:
            client.stderr.close()


# --- a client that behaves as hummingbot-api's bots orchestrator (aiomqtt) ----------


class Orchestrator:
    """hummingbot-api's MQTT side, as its bots orchestrator behaves (reference §3).

    One aiomqtt connection; bots are discovered from any message on ``hbot/{id}/…``
    and dropped after ``drop_after`` seconds of silence (hummingbot-api: 30 s, a
    parameter here so the test need not wait that long); a bot is "running" while
    performance arrives; commands go out as ``json.dumps`` envelopes, fire-and-forget
    on ``hummingbot-api-response-<ms>``, except history, answered on
    ``hummingbot-api/response/<ms>``; stop sends ``skip_order_cancellation``.
    """

    def __init__(self, client: aiomqtt.Client, drop_after: float) -> None:
        self.client = client
        self.drop_after = drop_after
        self.last_seen: dict[str, float] = {}
        self.performance: dict[str, dict[str, t.Any]] = {}
        self.logs: dict[str, list[dict[str, t.Any]]] = {}
        self.responses: dict[str, asyncio.Future[dict[str, t.Any]]] = {}

    async def listen(self) -> None:
        for topic in ("log", "notify", "status_updates", "events", "hb", "performance"):
            await self.client.subscribe(f"hbot/+/{topic}", qos=1)
        await self.client.subscribe("hummingbot-api/response/+", qos=1)
        async for message in self.client.messages:
            topic = str(message.topic)
            body = json.loads(message.payload)
            if topic.startswith("hummingbot-api/response/"):
                waiter = self.responses.pop(topic, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(body["data"])
                continue
            _, bot, kind = topic.split("/", 2)
            self.last_seen[bot] = time.monotonic()
            if kind == "performance":
                self.performance.setdefault(bot, {}).update(body)
            elif kind == "log":
                self.logs.setdefault(bot, []).append(body)

    def active_bots(self) -> set[str]:
        now = time.monotonic()
        return {bot for bot, seen in self.last_seen.items() if now - seen < self.drop_after}

    def status(self, bot: str) -> str:
        if bot not in self.active_bots():
            return "not found"
        return "running" if self.performance.get(bot) else "stopped"

    def _request(self, reply_to: str, data: dict[str, t.Any]) -> str:
        ms = int(time.time() * 1000)
        header = {
            "timestamp": ms,
            "reply_to": reply_to,
            "msg_id": ms,
            "node_id": "hummingbot-api",
            "agent": "hummingbot-api",
            "properties": {},
        }
        return json.dumps({"header": header, "data": data})

    async def _fire(self, bot: str, command: str, data: dict[str, t.Any]) -> dict[str, t.Any]:
        if bot not in self.active_bots():
            return {"success": False, "message": f"Bot {bot} not found"}
        reply_to = f"hummingbot-api-response-{int(time.time() * 1000)}"
        await self.client.publish(f"hbot/{bot}/{command}", self._request(reply_to, data), qos=1)
        return {"success": True}

    async def start(self, bot: str, script: str, conf: str) -> dict[str, t.Any]:
        data = {"log_level": None, "script": script, "conf": conf, "is_quickstart": False, "async_backend": False}
        return await self._fire(bot, "start", data)

    async def stop(self, bot: str, skip_order_cancellation: bool = True) -> dict[str, t.Any]:
        result = await self._fire(
            bot, "stop", {"skip_order_cancellation": skip_order_cancellation, "async_backend": False}
        )
        if result["success"]:
            self.performance.pop(bot, None)
        return result

    async def history(self, bot: str, timeout: float = 30.0) -> dict[str, t.Any]:
        topic = f"hummingbot-api/response/{int(time.time() * 1000)}"
        waiter: asyncio.Future[dict[str, t.Any]] = asyncio.get_running_loop().create_future()
        self.responses[topic] = waiter
        data = {"days": 0, "verbose": False, "precision": None, "async_backend": False}
        await self.client.publish(f"hbot/{bot}/history", self._request(topic, data), qos=1)
        return await asyncio.wait_for(waiter, timeout)


async def eventually(predicate: Callable[[], t.Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def test_a_hummingbot_api_style_orchestrator_keeps_a_stopped_bot_and_starts_it_again(
    manager: Manager, mosquitto: Broker, agents: AgentRunner
) -> None:
    mqtt = require_module("aiomqtt")
    pid = new_example(manager, "ex")
    agents.start(mosquitto.url)
    drop_after = 2.0  # hummingbot-api: 30 s; the agent beats every 0.5 s here (HEARTBEAT)

    async def scenario() -> None:
        async with mqtt.Client(mosquitto.host, mosquitto.port, identifier=f"hummingbot-api-{uuid.uuid4().hex}") as c:
            api = Orchestrator(c, drop_after)
            listener = asyncio.create_task(api.listen())
            try:
                await eventually(lambda: "ex" in api.active_bots(), 5, "the bot to be discovered")
                assert api.status("ex") == "stopped"
                assert (await api.start("ex", "v2_with_controllers.py", "conf_v2_1.yml"))["success"]
                await eventually(lambda: api.status("ex") == "running", 10, "performance from the bot")
                assert "with config conf_v2_1.yml" in console(manager, "ex")

                # Archiving stops with skip_order_cancellation: the orders stay, the bot stays known.
                assert (await api.stop("ex"))["success"]
                await eventually(
                    lambda: "open orders left in place" in console(manager, "ex"), 10, "the keep-orders stop line"
                )
                # The console stream is published in order: once the stop's own log line has arrived, a
                # performance report printed before the stop can no longer be in flight. Forget those; no
                # new one may come while the strategy is stopped.
                await eventually(
                    lambda: any(r["msg"].startswith("Stopping strategy") for r in api.logs.get("ex", [])),
                    10,
                    "the stop's log line on hbot/ex/log",
                )
                api.performance.pop("ex", None)
                await asyncio.sleep(drop_after * 2)
                assert api.status("ex") == "stopped", api.last_seen
                assert alive(manager, "ex") == pid
                assert any(r["msg"].startswith("Stopping strategy") for r in api.logs["ex"])

                assert (await api.start("ex", "v2_with_controllers.py", "conf_v2_1.yml"))["success"]
                await eventually(lambda: api.status("ex") == "running", 10, "the strategy to run again")
                await eventually(lambda: "(order ex-1)" in console(manager, "ex"), 10, "a simulated fill")
                history = await api.history("ex")
                assert history["status"] == 200 and history["trades"][-1]["trade_id"] == "ex-1", history

                # Only a process that is gone falls silent and is dropped after the window.
                await asyncio.to_thread(manager.stop, ["ex"])
                await eventually(lambda: api.status("ex") == "not found", drop_after + 5, "the bot to be dropped")
                result = await api.start("ex", "v2_with_controllers.py", "conf_v2_1.yml")
                assert result == {"success": False, "message": "Bot ex not found"}
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    asyncio.run(scenario())
