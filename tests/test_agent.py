"""End-to-end tests of ``supervisor agent``: a real subprocess, a real broker, real bots in tmux.

Clients are a plain paho client (byte-level assertions, hand-made requests) and
commlib-py's RPC client used the way hbot-remote-client-py (``hbotrc``) uses it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path

import git
import paho.mqtt.client as mqtt
import psutil
import pytest
from commlib.msg import RPCMessage
from commlib.node import Node
from commlib.transports.mqtt import ConnectionParameters
from paho.mqtt.enums import CallbackAPIVersion

from supervisor.core.manager import Manager
from supervisor.errors import InstanceNotFound
from supervisor.mqtt.auth import sign
from tests.conftest import (
    DATA,
    RECIPES,
    Broker,
    commit_files,
    free_port,
    make_origin,
    missing,
    start_mosquitto,
    stop_process,
    wait_until,
)

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator

TICKER = str(RECIPES / "ticker.yaml")
CRASHER = str(RECIPES / "crasher.yaml")
BRIDGE_BOT = str(RECIPES / "bridge-bot.yaml")
HOST = "h1"
HEARTBEAT = 0.5
# commlib 0.13.2 builds its paho client with the VERSION1 callback API, which paho 2.2 deprecates.
COMMLIB_PAHO_WARNING = pytest.mark.filterwarnings(
    "ignore:Callback API version 1 is deprecated:DeprecationWarning:commlib.transports.mqtt"
)
# The exact reply envelope of Hummingbot's commlib bridge (reference §9.1): member order included.
REPLY_RE = re.compile(
    rb'\{"header":\{"reply_to":"","timestamp":(\d+),"content_type":"json","encoding":"utf8","agent":"commlib"\},'
    rb'"data":\{"status":(\d+),"msg":"(?:[^"\\]|\\.)*"(,.*)?\}\}'
)


# --- a plain MQTT client ------------------------------------------------------------


class Message(t.NamedTuple):
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.monotonic() when it arrived

    def json(self) -> t.Any:
        return json.loads(self.payload)


class Watcher:
    """A paho client (VERSION2 callbacks) whose subscriptions feed one queue each."""

    def __init__(self, host: str, port: int, credentials: tuple[str, str] | None = None) -> None:
        self._acks: queue.Queue[int] = queue.Queue()
        connected: queue.Queue[bool] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watcher-{uuid.uuid4().hex[:8]}")
        if credentials:
            self.client.username_pw_set(*credentials)
        self.client.on_connect = lambda c, u, f, rc, p: connected.put(not rc.is_failure)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._acks.put(mid)
        self.client.connect(host, port)
        self.client.loop_start()
        assert connected.get(timeout=5)

    def watch(self, topic_filter: str) -> queue.Queue[Message]:
        got: queue.Queue[Message] = queue.Queue()

        def on_message(_c: mqtt.Client, _u: t.Any, m: mqtt.MQTTMessage) -> None:
            got.put(Message(m.topic, bytes(m.payload), bool(m.retain), time.monotonic()))

        self.client.message_callback_add(topic_filter, on_message)
        _, mid = self.client.subscribe(topic_filter, 1)
        assert self._acks.get(timeout=5) == mid
        return got

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def request(self, topic: str, data: dict[str, t.Any], timeout: float = 15.0) -> tuple[t.Any, bytes]:
        """Publish one request with a fresh reply topic; return (reply data, raw reply bytes)."""
        reply_to = f"test-reply-{uuid.uuid4().hex}"
        return self.request_raw(topic, envelope(reply_to, data), reply_to, timeout)

    def request_raw(self, topic: str, payload: bytes, reply_to: str, timeout: float = 15.0) -> tuple[t.Any, bytes]:
        """Publish ``payload`` as it is and return the reply that arrives on ``reply_to``."""
        replies = self.watch(reply_to)
        self.publish(topic, payload)
        raw = replies.get(timeout=timeout).payload
        return json.loads(raw)["data"], raw

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
            self.client.loop_stop()
        # The callbacks hold self, so the client sits in a reference cycle and gc may finalize its
        # wake-up socket pair before paho's __del__ closes it (a ResourceWarning): close it now.
        with contextlib.suppress(Exception):
            self.client._reset_sockets()


def envelope(reply_to: str, data: dict[str, t.Any]) -> bytes:
    """A request as commlib 0.11's RPC client writes it (reference §9.1)."""
    header = {
        "reply_to": reply_to,
        "timestamp": time.time_ns() // 1_000_000,
        "content_type": "json",
        "encoding": "utf8",
        "agent": "commlib",
    }
    return json.dumps({"header": header, "data": data}, separators=(",", ":")).encode()


def next_matching(
    got: queue.Queue[Message], predicate: Callable[[Message], t.Any] = bool, timeout: float = 5.0
) -> Message:
    """Return the first message from ``got`` that ``predicate`` accepts, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            message = got.get(timeout=max(0.01, remaining))
        except queue.Empty:
            pytest.fail(f"no matching message within {timeout}s")
        if predicate(message):
            return message


def assert_silent(got: queue.Queue[Message], seconds: float) -> None:
    """Assert that nothing arrives on ``got`` for ``seconds`` (the only way to observe 'no reply')."""
    with pytest.raises(queue.Empty):
        message = got.get(timeout=seconds)
        pytest.fail(f"expected silence, got {message.topic} {message.payload[:200]!r}")


def drain(got: queue.Queue[Message]) -> list[Message]:
    items = []
    with contextlib.suppress(queue.Empty):
        while True:
            items.append(got.get_nowait())
    return items


# --- commlib, as hbot-remote-client-py uses it --------------------------------------
# commlib-py ships no type information, so its pydantic models are Any to mypy.


class StartCommandMessage(RPCMessage):  # type: ignore[misc] # commlib is untyped
    class Request(RPCMessage.Request):  # type: ignore[misc] # commlib is untyped
        log_level: str | None = None
        script: str | None = None
        conf: str | None = None
        is_quickstart: bool | None = False
        async_backend: bool | None = False

    class Response(RPCMessage.Response):  # type: ignore[misc] # commlib is untyped
        status: int | None = 200
        msg: str | None = ""


class StopCommandMessage(RPCMessage):  # type: ignore[misc] # commlib is untyped
    class Request(RPCMessage.Request):  # type: ignore[misc] # commlib is untyped
        skip_order_cancellation: bool | None = False
        async_backend: bool | None = False

    class Response(RPCMessage.Response):  # type: ignore[misc] # commlib is untyped
        status: int | None = 200
        msg: str | None = ""


class StatusCommandMessage(RPCMessage):  # type: ignore[misc] # commlib is untyped
    class Request(RPCMessage.Request):  # type: ignore[misc] # commlib is untyped
        async_backend: bool | None = True

    class Response(RPCMessage.Response):  # type: ignore[misc] # commlib is untyped
        status: int | None = 200
        msg: str | None = ""
        data: t.Any | None = ""


class ImportCommandMessage(RPCMessage):  # type: ignore[misc] # commlib is untyped
    class Request(RPCMessage.Request):  # type: ignore[misc] # commlib is untyped
        strategy: str

    class Response(RPCMessage.Response):  # type: ignore[misc] # commlib is untyped
        status: int | None = 200
        msg: str | None = ""


class HistoryCommandMessage(RPCMessage):  # type: ignore[misc] # commlib is untyped
    class Request(RPCMessage.Request):  # type: ignore[misc] # commlib is untyped
        days: float | None = 0
        verbose: bool | None = False
        precision: int | None = None
        async_backend: bool | None = False

    class Response(RPCMessage.Response):  # type: ignore[misc] # commlib is untyped
        status: int | None = 200
        msg: str | None = ""
        trades: t.Any | None = []  # noqa: RUF012 - pydantic copies field defaults, as hbotrc declares it


class BotCommands:
    """hbotrc's ``BotCommands``: a commlib Node with one RPC client per command, every field sent."""

    def __init__(
        self, host: str, port: int, bot_id: str, namespace: str = "hbot", credentials: tuple[str, str] = ("", "")
    ) -> None:
        username, password = credentials
        self.node = Node(
            node_name=f"{namespace}.{bot_id}",
            connection_params=ConnectionParameters(host=host, port=port, username=username, password=password),
            heartbeats=False,
        )
        prefix = f"{namespace}/{bot_id}"
        self._start = self.node.create_rpc_client(msg_type=StartCommandMessage, rpc_name=f"{prefix}/start")
        self._stop = self.node.create_rpc_client(msg_type=StopCommandMessage, rpc_name=f"{prefix}/stop")
        self._status = self.node.create_rpc_client(msg_type=StatusCommandMessage, rpc_name=f"{prefix}/status")
        self._import = self.node.create_rpc_client(msg_type=ImportCommandMessage, rpc_name=f"{prefix}/import")
        self._history = self.node.create_rpc_client(msg_type=HistoryCommandMessage, rpc_name=f"{prefix}/history")
        self.node.run()

    def start(self, timeout: float = 20.0) -> t.Any:
        request = StartCommandMessage.Request(log_level=None, script=None, conf=None, async_backend=False)
        return self._start.call(msg=request, timeout=timeout)

    def stop(self, timeout: float = 20.0) -> t.Any:
        request = StopCommandMessage.Request(skip_order_cancellation=False, async_backend=False)
        return self._stop.call(msg=request, timeout=timeout)

    def import_strategy(self, strategy: str, timeout: float = 10.0) -> t.Any:
        return self._import.call(msg=ImportCommandMessage.Request(strategy=strategy), timeout=timeout)

    def history(self, timeout: float = 10.0) -> t.Any:
        return self._history.call(msg=HistoryCommandMessage.Request(async_backend=False), timeout=timeout)

    def status(self, timeout: float = 10.0) -> t.Any:
        return self._status.call(msg=StatusCommandMessage.Request(async_backend=False), timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.node.stop()
        for endpoint in (self._start, self._stop, self._status, self._import, self._history):
            # commlib's clients sit in reference cycles, so paho's __del__ (which closes the
            # wake-up socket pair) runs in gc after the sockets' own finalizers: ResourceWarning.
            with contextlib.suppress(AttributeError):
                endpoint._transport._client._reset_sockets()


# --- fixtures -----------------------------------------------------------------------


class AgentRunner:
    """Starts ``python -m supervisor agent`` subprocesses; stops them all at teardown."""

    def __init__(self, home: Path, tmux_socket: str, logs: Path) -> None:
        self.home = home
        self.tmux_socket = tmux_socket
        self.logs = logs
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(
        self,
        broker_url: str,
        *extra: str,
        check_interval: float | None = 0.2,
        heartbeat: float = HEARTBEAT,
        state_interval: float = 1.0,
        backoff: float = 0.2,
        fatal_after: int = 3,
        credentials: tuple[str, str] | None = None,
        env_extra: dict[str, str] | None = None,
        wait: bool = True,
    ) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"agent-{len(self.started)}.log"
        argv = [
            sys.executable,
            "-m",
            "supervisor",
            "agent",
            "--broker",
            broker_url,
            "--host-id",
            HOST,
            "--heartbeat-interval",
            str(heartbeat),
            "--state-interval",
            str(state_interval),
            *(["--check-interval", str(check_interval)] if check_interval is not None else []),
            "--backoff",
            str(backoff),
            "--fatal-after",
            str(fatal_after),
            *extra,
        ]
        env = {**os.environ, "SUPERVISOR_HOME": str(self.home), "SUPERVISOR_TMUX_SOCKET": self.tmux_socket}
        if credentials:
            env["SUPERVISOR_BROKER_USERNAME"], env["SUPERVISOR_BROKER_PASSWORD"] = credentials
        env.update(env_extra or {})
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.started.append((proc, log))
        if wait:
            self.wait_online(proc, broker_url, credentials=credentials)
        return proc

    def wait_online(
        self,
        proc: subprocess.Popen[bytes],
        broker_url: str,
        timeout: float = 15.0,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        """Wait for the retained ``supervisor/h1/agent`` record that this very process is online."""
        host, _, port = broker_url.removeprefix("mqtt://").rpartition(":")
        watcher = Watcher(host, int(port), credentials)
        try:
            records = watcher.watch(f"supervisor/{HOST}/agent")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    pytest.fail(f"the agent exited with {proc.returncode}:\n{self.output(proc)}")
                with contextlib.suppress(queue.Empty):
                    record = records.get(timeout=0.2).json()
                    if record["state"] == "online" and record["pid"] == proc.pid:
                        return
            pytest.fail(f"the agent did not come online within {timeout}s:\n{self.output(proc)}")
        finally:
            watcher.close()

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        for started, log in self.started:
            if started is proc:
                return log.read_text(errors="replace")[-8000:]
        return ""

    def stop_all(self) -> None:
        for proc, _ in self.started:
            stop_process(proc, timeout=10)


@pytest.fixture
def agents(
    isolated_env: Path, tmux_socket: str, tmp_path: Path, manager: Manager, request: pytest.FixtureRequest
) -> Iterator[AgentRunner]:
    runner = AgentRunner(isolated_env, tmux_socket, tmp_path / "agent-logs")
    yield runner
    runner.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc, log in runner.started:
            sys.stderr.write(f"--- agent pid {proc.pid} (exit {proc.returncode}) ---\n")
            sys.stderr.write(log.read_text(errors="replace")[-8000:] + "\n")


@pytest.fixture
def watchers() -> Iterator[Callable[..., Watcher]]:
    made: list[Watcher] = []

    def make(broker: Broker, credentials: tuple[str, str] | None = None) -> Watcher:
        made.append(Watcher(broker.host, broker.port, credentials))
        return made[-1]

    yield make
    for watcher in made:
        watcher.close()


@pytest.fixture
def bot_commands() -> Iterator[Callable[..., BotCommands]]:
    made: list[BotCommands] = []

    def make(broker: Broker, bot_id: str, credentials: tuple[str, str] = ("", "")) -> BotCommands:
        made.append(BotCommands(broker.host, broker.port, bot_id, credentials=credentials))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture
def bridge_origin(tmp_path: Path) -> Path:
    """A git origin holding the bot with its own MQTT bridge that the plugin-bot recipe runs."""
    origin = tmp_path / "bridge-origin"
    files = {"bridge_bot.py": (DATA / "bridge_bot.py").read_text(), "install.sh": "#!/bin/sh\necho installed\n"}
    make_origin(origin, files)
    return origin


def new_bridge_bot(manager: Manager, name: str, origin: Path, broker: Broker, *, delay: float = 0.0) -> None:
    manager.new(name, BRIDGE_BOT, repo=str(origin), settings=[f"mqtt_port={broker.port}", f"bridge_delay={delay}"])


def start_for_pid(manager: Manager, name: str) -> int:
    """Start instance ``name`` and return its bot's pid."""
    manager.start([name])
    pid = manager.status([name])[0].pid
    assert pid is not None
    return pid


def new_ticker(manager: Manager, name: str, origin: Path, *, start: bool = False, recipe: str = TICKER) -> int | None:
    manager.new(name, recipe, repo=str(origin))
    return start_for_pid(manager, name) if start else None


def console(manager: Manager, name: str) -> str:
    path = manager.paths.console_log(name)
    return path.read_text(errors="replace") if path.exists() else ""


def state(manager: Manager, name: str) -> str:
    return manager.status([name])[0].state


# --- tests --------------------------------------------------------------------------


@COMMLIB_PAHO_WARNING
def test_commlib_start_launches_the_bot_then_heartbeats_until_it_is_killed(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
    bot_commands: Callable[..., BotCommands],
) -> None:
    new_ticker(manager, "tb", bot_origin)
    assert state(manager, "tb") == "stopped"
    # A long first backoff keeps the agent from restarting the bot we kill below.
    agents.start(mosquitto.url, backoff=60)
    watcher = watchers(mosquitto)
    heartbeats = watcher.watch("hbot/tb/hb")
    updates = watcher.watch("hbot/tb/status_updates")
    wire = watcher.watch("#")

    reply = bot_commands(mosquitto, "tb").start()

    assert reply.status == 200, reply
    status = manager.status(["tb"])[0]
    assert status.state == "running"
    assert status.desired == "running"
    assert status.pid is not None and psutil.pid_exists(status.pid)
    assert "started: start" in console(manager, "tb")
    # What went over the wire is hbotrc's request and the bot's reply envelope, byte for byte.
    messages = drain(wire)
    [sent] = [m for m in messages if m.topic == "hbot/tb/start"]
    request = sent.json()
    assert request["data"] == {
        "log_level": None,
        "script": None,
        "conf": None,
        "is_quickstart": False,
        "async_backend": False,
    }
    # commlib has its reply; our separate watcher may still be receiving its copy.
    answers = [m for m in messages if m.topic == request["header"]["reply_to"]]
    if not answers:
        answers = [next_matching(wire, lambda m: m.topic == request["header"]["reply_to"], timeout=5)]
    [answer] = answers
    match = REPLY_RE.fullmatch(answer.payload)
    assert match is not None, answer.payload
    assert match.group(2) == b"200"
    assert abs(int(match.group(1)) / 1000 - time.time()) < 60  # milliseconds, as Hummingbot's bridge

    online = next_matching(updates, timeout=5)
    assert online.json()["msg"] == "online"
    assert online.json()["type"] == "availability"
    beats = [next_matching(heartbeats, timeout=5) for _ in range(4)]
    for beat in beats:
        assert re.fullmatch(rb'\{"ts":\d+\}', beat.payload), beat.payload
        assert abs(beat.json()["ts"] / 1_000_000 - time.time()) < 60  # microseconds
    # Beats keep coming, each newer than the last; how evenly spaced they arrive is the machine's business.
    stamps = [beat.json()["ts"] for beat in beats]
    assert stamps == sorted(set(stamps)), stamps

    os.kill(status.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    offline = next_matching(updates, timeout=5)
    assert offline.json()["msg"] == "offline"
    late = [b for b in drain(heartbeats) if b.at > killed_at]
    # At most the one heartbeat whose liveness check ran just before the kill (counted, not timed).
    assert len(late) <= 1, late
    assert_silent(heartbeats, HEARTBEAT * 3)


@COMMLIB_PAHO_WARNING
def test_commlib_stop_stops_the_strategy_and_our_own_stop_ends_the_process(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
    bot_commands: Callable[..., BotCommands],
) -> None:
    pid = new_ticker(manager, "tb", bot_origin, start=True)
    assert pid is not None
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)

    # A synchronous hbot status captures the console's answer; check that reply byte by byte.
    data, raw = watcher.request("hbot/tb/status", {"async_backend": False})
    assert REPLY_RE.fullmatch(raw), raw
    # The console's answer, among whatever tick lines the bot printed while the agent listened.
    answer = rb'"msg":"(?:[^"\\]|\\.)*status: running=False ticks=\d+(?:[^"\\]|\\.)*"'
    assert re.fullmatch(rb'.*"data":\{"status":200,' + answer + rb',"data":""\}\}', raw), raw
    assert data["status"] == 200

    client = bot_commands(mosquitto, "tb")
    assert "status: running=False" in client.status().msg
    reply = client.stop()

    # Hummingbot's stop is the strategy stop: the console's stop line; the process stays up.
    assert reply.status == 200, reply
    assert "stopped strategy" in reply.msg
    status = manager.status(["tb"])[0]
    assert (status.state, status.desired, status.pid) == ("running", "running", pid)
    assert "bye" not in console(manager, "tb")

    # The process stop is ours: the quit sequence, then the process is gone.
    data, _ = watcher.request(f"supervisor/{HOST}/tb/stop", {})
    assert data["status"] == 200 and "console quit sequence" in data["msg"], data
    text = console(manager, "tb")
    assert text.rindex("stopped strategy") < text.index("bye")
    wait_until(lambda: not psutil.pid_exists(pid), timeout=5, message="the bot process to be gone")
    status = manager.status(["tb"])[0]
    assert (status.state, status.desired) == ("stopped", "stopped")


def test_own_restart_gives_a_new_process_and_counts_it(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    pid = new_ticker(manager, "tb", bot_origin, start=True)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)

    data, raw = watcher.request(f"supervisor/{HOST}/tb/restart", {})

    assert data["status"] == 200, data
    assert REPLY_RE.fullmatch(raw), raw
    assert data["result"]["action"] == "restart"
    new_pid = data["result"]["status"]["pid"]
    assert new_pid is not None and new_pid != pid
    assert psutil.pid_exists(new_pid)
    assert pid is not None
    wait_until(lambda: not psutil.pid_exists(pid), timeout=5, message="the old process to be reaped")
    status = manager.status(["tb"])[0]
    assert (status.state, status.pid, status.restarts) == ("running", new_pid, 1)
    # The retained state record follows within a refresh (a look taken mid-restart may show the
    # new pid before the restart is counted; the next one corrects it).
    states = watcher.watch(f"supervisor/{HOST}/tb/state")
    record = next_matching(states, lambda m: (m.json()["pid"], m.json()["restarts"]) == (new_pid, 1), timeout=5)
    assert (record.json()["host"], record.json()["state"], record.json()["refresh"]) == (HOST, "running", 1.0)


def test_own_restart_beats_for_the_new_process_after_its_reply_not_at_the_next_tick(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    new_ticker(manager, "tb", bot_origin, start=True)
    watcher = watchers(mosquitto)
    beats = watcher.watch("hbot/tb/hb")  # before the agent: its first beat follows "online" at once
    agents.start(mosquitto.url, heartbeat=300.0)  # the tick is far away: only a launch can beat now
    next_matching(beats, timeout=10)  # the beat that announced the bot when the agent came up

    reply_to = f"test-reply-{uuid.uuid4().hex}"
    replies = watcher.watch(reply_to)
    watcher.publish(f"supervisor/{HOST}/tb/restart", envelope(reply_to, {}))
    reply = next_matching(replies, timeout=30)
    assert reply.json()["data"]["status"] == 200
    # The new process beats after the reply that says it was restarted, though the last beat was recent.
    next_matching(beats, lambda beat: beat.at >= reply.at, timeout=10)


def test_hbot_start_and_status_default_to_async_as_the_bot_does(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    new_ticker(manager, "tb", bot_origin)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    notify = watcher.watch("hbot/tb/notify")

    # No async_backend: the bot's default (true) answers at once, with an empty msg, then works.
    _, raw = watcher.request("hbot/tb/start", {})
    assert re.fullmatch(rb'.*"data":\{"status":200,"msg":""\}\}', raw), raw
    wait_until(lambda: "started: start" in console(manager, "tb"), timeout=15, message="the relayed start line")
    assert state(manager, "tb") == "running"
    # An async status answers "" and puts the console's answer on {p}/notify, with the "-1" quirk.
    _, raw = watcher.request("hbot/tb/status", {})
    assert re.fullmatch(rb'.*"data":\{"status":200,"msg":"","data":""\}\}', raw), raw
    note = next_matching(notify, lambda m: b"status: running=True" in m.payload, timeout=5)
    assert re.fullmatch(rb'\{"seq":0,"timestamp":"-1","msg":".*status: running=True ticks=\d+.*"\}', note.payload)


def test_bad_requests_get_400_or_silence_execute_nothing_and_the_agent_keeps_serving(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
    tmp_path: Path,
) -> None:
    pid = new_ticker(manager, "tb", bot_origin, start=True)
    agent = agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    marker = tmp_path / f"PWNED_{uuid.uuid4().hex}"

    # Not JSON: nobody to answer.
    silent = watcher.watch("r-malformed")
    watcher.publish("hbot/tb/start", b'{"header":{"reply_to":"r-malformed"},"data":{')
    # Too big (1 MB): refused before parsing; its header comes first, so the sender hears why.
    for topic, big in (
        ("hbot/tb/start", {"async_backend": False, "script": "x" * (1024 * 1024)}),
        (f"supervisor/{HOST}/tb/send", {"text": "y" * (1024 * 1024)}),
    ):
        reply_to = f"r-big-{uuid.uuid4().hex}"
        data, _ = watcher.request_raw(topic, envelope(reply_to, big), reply_to)
        assert data["status"] == 400 and "the limit is 65536" in data["msg"], data
    # Too big with the header last: only the start of a huge request is read, so nobody to answer.
    silent_big = watcher.watch("r-big")
    watcher.publish("hbot/tb/start", b'{"data":{"script":"%s"},"header":{"reply_to":"r-big"}}' % (b"x" * 70_000))
    # NaN is not JSON: refused, and answered (the header is readable).
    reply_to = f"r-nan-{uuid.uuid4().hex}"
    payload = b'{"header":{"reply_to":"%s"},"data":{"days":NaN}}' % reply_to.encode()
    data, _ = watcher.request_raw("hbot/tb/history", payload, reply_to)
    assert data["status"] == 400 and "NaN" in data["msg"], data
    # An id this host does not own: another agent or a real Hummingbot may answer, so we stay silent.
    silent_ghost = watcher.watch("r-ghost")
    watcher.publish("hbot/ghost/start", envelope("r-ghost", {"async_backend": False}))

    # Missing data: 400 (the bot would drop it; we can answer since reply_to is readable).
    reply_to = f"r-nodata-{uuid.uuid4().hex}"
    data, raw = watcher.request_raw("hbot/tb/stop", b'{"header":{"reply_to":"%s"}}' % reply_to.encode(), reply_to)
    assert data["status"] == 400 and "data is missing" in data["msg"], data
    assert REPLY_RE.fullmatch(raw), raw
    # A field of the wrong type.
    data, _ = watcher.request("hbot/tb/start", {"async_backend": "notabool"})
    assert data["status"] == 400 and "async_backend" in data["msg"], data
    data, _ = watcher.request("hbot/tb/stop", {"skip_order_cancellation": [1]})
    assert data["status"] == 400 and "skip_order_cancellation" in data["msg"], data
    # An unknown instance on our own namespace.
    data, _ = watcher.request(f"supervisor/{HOST}/ghost/status", {})
    assert (data["status"], data["code"]) == (400, "instance_not_found"), data
    # A multi-line send with shell metacharacters.
    data, _ = watcher.request(f"supervisor/{HOST}/tb/send", {"text": f"$(touch {marker}); rm -rf x | & \n"})
    assert (data["status"], data["code"]) == (400, "bad_request"), data
    assert "control character" in data["msg"]
    # One line with shell metacharacters is typed literally; no shell ever sees it.
    line = f"$(touch {marker}) ; echo hi `id` | cat && exit"
    data, _ = watcher.request(f"supervisor/{HOST}/tb/send", {"text": line})
    assert data["status"] == 200, data
    wait_until(lambda: f"echo: {line}" in console(manager, "tb"), timeout=5, message="the literal line")
    data, _ = watcher.request(f"supervisor/{HOST}/tb/tail", {"lines": 20})
    assert data["status"] == 200 and f"echo: {line}" in data["result"]["screen"], data
    # Missing required fields.
    data, _ = watcher.request(f"supervisor/{HOST}/tb/send", {})
    assert (data["status"], data["code"]) == (400, "bad_request") and "'text' is required" in data["msg"], data
    data, _ = watcher.request("hbot/tb/import", {})
    assert data["status"] == 400 and "'strategy' is required" in data["msg"], data

    assert_silent(silent, 1.0)
    assert_silent(silent_big, 0.2)
    assert_silent(silent_ghost, 0.2)
    assert not marker.exists()
    text = console(manager, "tb")
    assert "started:" not in text  # no start line was ever relayed
    assert "stopped strategy" not in text
    assert "bye" not in text
    assert agent.poll() is None
    # Still serving, and the bot is untouched.
    data, _ = watcher.request(f"supervisor/{HOST}/tb/status", {})
    assert data["status"] == 200
    assert (data["result"]["state"], data["result"]["pid"], data["result"]["restarts"]) == ("running", pid, 0)
    data, _ = watcher.request("hbot/tb/status", {"async_backend": False})
    assert data["status"] == 200 and "status: running=False" in data["msg"], data


class Tricky(t.NamedTuple):
    test_id: str
    text: str


TRICKY_LINES = [
    Tricky("trailing-separator", "ends with ;"),
    Tricky("escaped-separator", "a \\; b"),
    Tricky("key-names", "C-c Enter"),
    Tricky("key-name-alone", "Enter"),
    Tricky("carets-and-backslashes", "^C ^M \\n \\"),
    Tricky("shell-quoting", "'q' \"d\" ~ * ? [x] {a,b} #c %s $HOME"),
    Tricky("leading-dash", "-5 is a negative amount"),
    Tricky("option-like", "-l -t nowhere"),
]


@pytest.mark.parametrize("case", TRICKY_LINES, ids=[c.test_id for c in TRICKY_LINES])
def test_own_send_types_words_the_multiplexer_could_parse_literally(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
    case: Tricky,
) -> None:
    new_ticker(manager, "tb", bot_origin, start=True)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)

    data, _ = watcher.request(f"supervisor/{HOST}/tb/send", {"text": case.text})

    assert data["status"] == 200, data
    # (No "\n" after it: the bot's tick thread may print between the text and the line end.)
    wait_until(lambda: f"echo: {case.text}" in console(manager, "tb"), timeout=5, message=repr(case.text))


def test_kill_9_of_the_agent_leaves_bots_running_and_a_new_agent_adopts_them(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
    isolated_env: Path,
) -> None:
    pids = {name: new_ticker(manager, name, bot_origin, start=True) for name in ("tb1", "tb2")}
    (isolated_env / "agent.toml").write_text("[broker]\nkeepalive = 5\n")
    first = agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    records = watcher.watch(f"supervisor/{HOST}/agent")
    assert next_matching(records, lambda m: m.json()["pid"] == first.pid).json()["keepalive"] == 5

    first.send_signal(signal.SIGKILL)
    first.wait(5)

    will = next_matching(records, lambda m: m.json()["state"] == "offline", timeout=15)
    assert will.json()["pid"] == first.pid
    assert {s.name: s.pid for s in manager.status()} == pids
    assert all(psutil.pid_exists(pid) for pid in pids.values() if pid)

    heartbeats = watcher.watch("hbot/+/hb")
    agents.start(mosquitto.url)
    data, _ = watcher.request(f"supervisor/{HOST}/list", {})
    assert data["status"] == 200
    assert data["result"]["host"] == HOST
    assert {i["name"]: (i["state"], i["pid"]) for i in data["result"]["instances"]} == {
        name: ("running", pid) for name, pid in pids.items()
    }
    seen: set[str] = set()
    while seen != {"hbot/tb1/hb", "hbot/tb2/hb"}:
        seen.add(next_matching(heartbeats, timeout=5).topic)
    status = manager.status()
    assert [s.restarts for s in status] == [0, 0]


def test_sigterm_stops_the_agent_cleanly_and_the_bots_keep_running(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    pid = new_ticker(manager, "tb", bot_origin, start=True)
    watcher = watchers(mosquitto)
    updates = watcher.watch("hbot/tb/status_updates")
    agent = agents.start(mosquitto.url)
    assert next_matching(updates, timeout=5).json()["msg"] == "online"
    records = watcher.watch(f"supervisor/{HOST}/agent")
    next_matching(records, lambda m: m.json()["state"] == "online")

    agent.send_signal(signal.SIGTERM)

    assert agent.wait(10) == 0
    assert next_matching(updates, timeout=5).json()["msg"] == "offline"
    # Skipping "online" ones: the record goes out again once the first state records are (it counts them).
    record = next_matching(records, lambda m: m.json()["state"] != "online", timeout=5)
    assert (record.json()["state"], record.json()["pid"]) == ("offline", agent.pid)
    status = manager.status(["tb"])[0]
    assert (status.state, status.pid) == ("running", pid)


def test_logs_returns_the_end_of_the_console_log_also_of_a_stopped_bot(
    manager: Manager, bot_origin: Path, mosquitto: Broker, agents: AgentRunner
) -> None:
    new_ticker(manager, "tb", bot_origin, start=True)
    agents.start(mosquitto.url)
    watcher = Watcher(mosquitto.host, mosquitto.port)
    try:
        line = f"last-words-{uuid.uuid4().hex}"
        data, _ = watcher.request(f"supervisor/{HOST}/tb/send", {"text": line})
        assert data["status"] == 200, data
        wait_until(lambda: f"echo: {line}" in console(manager, "tb"), timeout=5, message="the echoed line")
        manager.stop(["tb"])
        data, _ = watcher.request(f"supervisor/{HOST}/tb/tail", {})
        assert (data["status"], data["code"]) == (400, "instance_not_running"), data  # no screen to read
        data, _ = watcher.request(f"supervisor/{HOST}/tb/logs", {"lines": 200})
        assert data["status"] == 200 and f"echo: {line}" in data["result"]["log"], data
        assert "\x1b" not in data["result"]["log"]
        data, _ = watcher.request(f"supervisor/{HOST}/tb/logs", {"lines": 0})
        assert (data["status"], data["code"]) == (400, "bad_request"), data
        data, _ = watcher.request(f"supervisor/{HOST}/ghost/logs", {})
        assert (data["status"], data["code"]) == (400, "instance_not_found"), data
    finally:
        watcher.close()


def test_broker_outage_the_agent_reconnects_and_never_executes_a_request_twice(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    new_ticker(manager, "tb", bot_origin, start=True)
    agent = agents.start(mosquitto.url)
    before = Watcher(mosquitto.host, mosquitto.port)
    line = f"before-outage-{uuid.uuid4().hex}"
    payload = envelope(f"r-{uuid.uuid4().hex}", {"text": line})
    topic = f"supervisor/{HOST}/tb/send"
    replies = before.watch(json.loads(payload)["header"]["reply_to"])
    before.publish(topic, payload)
    first_reply = replies.get(timeout=10).payload
    assert json.loads(first_reply)["data"]["status"] == 200
    # The same request bytes again at once, without the DUP flag: a second request, run as Hummingbot would.
    before.publish(topic, payload)
    again = replies.get(timeout=10).payload
    assert json.loads(again)["data"] == json.loads(first_reply)["data"]
    wait_until(lambda: console(manager, "tb").count(f"echo: {line}") == 2, timeout=5, message="both typed")
    before.close()

    stop_process(mosquitto.process)
    stopped = time.monotonic()
    # The outage is the scenario: the broker is back only once the agent has noticed it is gone,
    # and after 30 s, by when a backoff without a low cap would have grown long.
    wait_until(
        lambda: re.search(r"connection to \S+ lost", agents.output(agent)),
        timeout=30,
        message="the agent noticing the outage",
    )
    time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
    restarted = start_mosquitto(tmp_path / "broker", port=mosquitto.port)
    request.addfinalizer(lambda: stop_process(restarted.process))

    after = Watcher(restarted.host, restarted.port)
    try:
        records = after.watch(f"supervisor/{HOST}/agent")
        # Reconnect backoff is jittered and capped at 3 s, so the agent is back well within this
        # generous wait (about 1 s on loopback); with the former 30 s cap it often was not.
        next_matching(records, lambda m: m.json()["state"] == "online", timeout=12)
        # The restarted broker lost every retained message; the agent publishes the state again.
        states = after.watch(f"supervisor/{HOST}/tb/state")
        assert next_matching(states, timeout=5).json()["state"] == "running"
        # A new request is executed.
        fresh = f"after-outage-{uuid.uuid4().hex}"
        data, _ = after.request(topic, {"text": fresh})
        assert data["status"] == 200
        wait_until(lambda: f"echo: {fresh}" in console(manager, "tb"), timeout=5, message="the new line")
        assert console(manager, "tb").count(f"echo: {line}") == 2  # nothing from before the outage ran again
    finally:
        after.close()


def test_a_crash_loop_is_restarted_with_backoff_then_marked_fatal(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    manager.new("cr", CRASHER, repo=str(bot_origin))
    watcher = watchers(mosquitto)
    events = watcher.watch(f"supervisor/{HOST}/cr/events")
    agents.start(mosquitto.url, backoff=0.5, fatal_after=3)

    data, _ = watcher.request(f"supervisor/{HOST}/cr/start", {})
    assert data["status"] == 200, data

    restarts = [next_matching(events, timeout=10).json() for _ in range(3)]
    assert [re.search(r"restart #(\d+)", e["msg"]) is not None for e in restarts] == [True] * 3, restarts
    fatal = next_matching(events, timeout=10).json()
    assert "marked fatal" in fatal["msg"] and "exit code 3" in fatal["msg"], fatal
    times = [e["ts"] for e in restarts]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Backoff 0.5 s doubling: restart 1 waits 0.5 s after the crash, 2 waits 1 s, 3 waits 2 s (plus each run).
    # Only floors: a busy machine makes each run, so each gap, longer, never shorter.
    assert gaps[0] >= 0.9 and gaps[1] >= 1.8, gaps
    # The fourth fast failure is not restarted: it is marked fatal as soon as it is seen.
    status = manager.status(["cr"])[0]
    assert (status.state, status.restarts) == ("fatal", 3)
    assert status.last_error is not None and "marked fatal" in status.last_error
    states = watcher.watch(f"supervisor/{HOST}/cr/state")
    next_matching(states, lambda m: m.json()["state"] == "fatal", timeout=5)
    # Nothing more happens: a fatal instance stays down.
    assert_silent(events, 1.5)
    assert manager.status(["cr"])[0].restarts == 3


def test_a_killed_bot_is_reported_crashed_then_restarted_without_waiting_for_a_tick(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    old = new_ticker(manager, "tb", bot_origin, start=True)
    watcher = watchers(mosquitto)
    states = watcher.watch(f"supervisor/{HOST}/tb/state")
    updates = watcher.watch("hbot/tb/status_updates")
    # Every periodic timer is far longer than the waits below: only events can explain what happens.
    agents.start(mosquitto.url, heartbeat=60, state_interval=120, check_interval=None, backoff=0.5)
    next_matching(states, lambda m: m.json()["state"] == "running" and m.json()["pid"] == old, timeout=10)
    next_matching(updates, lambda m: m.json()["msg"] == "online", timeout=5)

    os.kill(t.cast("int", old), signal.SIGKILL)

    crashed = next_matching(states, lambda m: m.json()["state"] == "crashed", timeout=5).json()
    assert (crashed["exit_code"], crashed["desired"], crashed["pid"]) == (137, "running", None), crashed
    next_matching(updates, lambda m: m.json()["msg"] == "offline", timeout=5)
    back = next_matching(states, lambda m: m.json()["state"] == "running", timeout=10).json()
    assert back["pid"] not in (None, old) and back["restarts"] == 1, back
    next_matching(updates, lambda m: m.json()["msg"] == "online", timeout=5)


def test_a_stop_and_a_start_on_the_host_show_in_the_state_record_without_waiting_for_a_tick(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    pid = new_ticker(manager, "tb", bot_origin, start=True)
    watcher = watchers(mosquitto)
    states = watcher.watch(f"supervisor/{HOST}/tb/state")
    agents.start(mosquitto.url, heartbeat=60, state_interval=120, check_interval=None)
    next_matching(states, lambda m: m.json()["state"] == "running" and m.json()["pid"] == pid, timeout=10)

    manager.stop(["tb"])  # what `supervisor stop tb` does, from another process than the agent's
    stopped = next_matching(states, lambda m: m.json()["state"] == "stopped", timeout=5).json()
    assert stopped["desired"] == "stopped" and stopped["pid"] is None, stopped

    manager.start(["tb"])
    started = next_matching(states, lambda m: m.json()["state"] == "running", timeout=5).json()
    assert started["desired"] == "running" and started["pid"] not in (None, pid), started
    assert_silent(states, 1.0)  # nothing restarts a bot the user started or stopped


def test_a_plugin_instance_that_is_up_gets_no_reply_from_the_agent(
    manager: Manager,
    bridge_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    new_bridge_bot(manager, "pb", bridge_origin, mosquitto, delay=0.5)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)

    # Down: the agent stands in, but only start can help.
    data, _ = watcher.request("hbot/pb/status", {"async_backend": False})
    assert data["status"] == 400 and "not running" in data["msg"], data
    # A start launches the bot, then its own bridge answers the very request.
    data, _ = watcher.request("hbot/pb/start", {"async_backend": False})
    assert data == {"status": 200, "msg": "bridge start"}, data
    status = manager.status(["pb"])[0]
    assert status.state == "running" and status.plugin
    assert status.pid is not None and psutil.pid_exists(status.pid)
    heartbeats = watcher.watch("hbot/pb/hb")
    agent_beats = [m for m in drain(heartbeats) if m.topic == "hbot/pb/hb"]

    # Up: the bot's own bridge answers; the agent must not (no double replies).
    for command in ("status", "stop", "start"):
        replies = watcher.watch(f"r-plugin-{command}")
        watcher.publish(f"hbot/pb/{command}", envelope(f"r-plugin-{command}", {"async_backend": False}))
        assert replies.get(timeout=10).json()["data"]["msg"] == f"bridge {command}"
        assert_silent(replies, 2.0 if command == "status" else 0.3)  # exactly one reply: the bot's
    assert "stopped strategy" not in console(manager, "pb")
    assert manager.status(["pb"])[0].pid == status.pid
    data, _ = watcher.request(f"supervisor/{HOST}/pb/status", {})
    assert data["status"] == 200 and data["result"]["plugin"] is True and data["result"]["state"] == "running"
    assert not agent_beats


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"header":{"reply_to":"r-plugin-bad"}}', id="no-data"),
        pytest.param(b'{"header":{"reply_to":"r-plugin-bad"},"data":[]}', id="data-not-an-object"),
        pytest.param(b'{"header":{"reply_to":"r-plugin-bad"},"data":{"async_backend":"maybe"}}', id="bad-field"),
    ],
)
def test_a_plugin_instance_that_is_up_gets_no_reply_even_to_a_malformed_request(
    manager: Manager,
    bridge_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
    payload: bytes,
) -> None:
    # The bot's bridge owns its topics while it is up: Hummingbot's aiomqtt bridge runs a request
    # without data as {} and answers 200, so a 400 from the agent would be a second, contrary reply.
    new_bridge_bot(manager, "pb", bridge_origin, mosquitto)
    manager.start(["pb"])
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    replies = watcher.watch("r-plugin-bad")

    watcher.publish("hbot/pb/stop", payload)

    assert_silent(replies, 1.0)
    assert state(manager, "pb") == "running"


def test_a_plugin_bot_is_launched_with_the_requested_conf_and_restarted_with_it_after_kill_9(
    manager: Manager,
    bridge_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    """A start for a down plugin bot launches it with its conf; the bot answers; a crash restart keeps the conf."""
    new_bridge_bot(manager, "pb", bridge_origin, mosquitto, delay=1.0)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    reply_to = f"r-start-{uuid.uuid4().hex}"
    replies = watcher.watch(reply_to)
    watcher.publish("hbot/pb/start", envelope(reply_to, {"script": "probe.py", "conf": "probe.yml"}))
    first = replies.get(timeout=30)
    assert first.json()["data"] == {"status": 200, "msg": "bridge start --conf probe.yml"}
    assert_silent(replies, 1.0)  # exactly one reply: the bot's
    audit = [json.loads(line) for line in manager.paths.audit_log.read_text().splitlines()]
    assert [e["result"] for e in audit if e.get("reply_to") == reply_to] == ["forwarded"]
    assert manager.registry.get("pb").strategy == {"script": "probe.py", "conf": "probe.yml"}

    old = manager.status(["pb"])[0].pid
    assert old is not None
    os.kill(old, signal.SIGKILL)

    def restarted() -> list[str] | None:
        pid = manager.status(["pb"])[0].pid
        if pid in (None, old):
            return None
        with contextlib.suppress(psutil.Error):  # the dying wrapper's last commands come and go
            argv = psutil.Process(pid).cmdline()
            return argv if any(a.endswith("bridge_bot.py") for a in argv) else None
        return None

    argv = wait_until(restarted, timeout=30, message="the agent restarts the bot")
    assert argv[-2:] == ["--conf", "probe.yml"]


def test_a_request_in_the_startup_window_is_held_until_the_bridge_is_up(
    manager: Manager,
    bridge_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    """Between the process appearing and its bridge subscribing, requests are held, then the bot answers."""
    new_bridge_bot(manager, "pb", bridge_origin, mosquitto, delay=2.0)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    manager.start(["pb"], wait=False)
    wait_until(lambda: manager.status(["pb"])[0].pid, timeout=10, message="the process is up")
    reply_to = f"r-early-{uuid.uuid4().hex}"
    replies = watcher.watch(reply_to)
    watcher.publish("hbot/pb/status", envelope(reply_to, {"async_backend": False}))
    assert replies.get(timeout=30).json()["data"] == {"status": 200, "msg": "bridge status"}
    assert_silent(replies, 1.0)
    audit = [json.loads(line) for line in manager.paths.audit_log.read_text().splitlines()]
    assert [e["result"] for e in audit if e.get("reply_to") == reply_to] == ["forwarded"]


def test_after_a_reboot_the_agent_starts_what_should_run_and_leaves_stopped_bots_alone(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
    tmux_socket: str,
) -> None:
    old = new_ticker(manager, "up", bot_origin, start=True)
    new_ticker(manager, "down", bot_origin, start=True)
    manager.stop(["down"])
    subprocess.run(["tmux", "-L", tmux_socket, "kill-server"], check=False, capture_output=True)
    wait_until(lambda: old is not None and not psutil.pid_exists(old), timeout=5, message="the bot to die")
    assert {s.name: s.state for s in manager.status()} == {"down": "stopped", "up": "crashed"}
    watcher = watchers(mosquitto)
    events = watcher.watch(f"supervisor/{HOST}/up/events")

    agents.start(mosquitto.url)

    event = next_matching(events, timeout=15).json()
    assert "restarted" in event["msg"], event
    status = wait_until(
        lambda: (s := manager.status(["up"])[0]).state == "running" and s, timeout=10, message="'up' running"
    )
    assert status.pid != old and status.restarts == 1
    assert "ticker-bot ready" in console(manager, "up")
    down_events = watcher.watch(f"supervisor/{HOST}/down/events")
    assert_silent(down_events, 1.0)
    down = manager.status(["down"])[0]
    assert (down.state, down.desired, down.restarts) == ("stopped", "stopped", 0)


# --- issue 11: retained and replayed requests, floods, bursts, reply topics, duplicate agents ---
HARDENING_SECRET = "hardening-secret"


def signed_envelope(topic: str, reply_to: str, data: dict[str, t.Any], **auth: t.Any) -> bytes:
    header = {"reply_to": reply_to, "auth": sign(HARDENING_SECRET, topic, reply_to, data, **auth)}
    return json.dumps({"header": header, "data": data}).encode()


def restart_agent(
    agents: AgentRunner, proc: subprocess.Popen[bytes], url: str, **kwargs: t.Any
) -> subprocess.Popen[bytes]:
    stop_process(proc, timeout=10)
    return agents.start(url, **kwargs)


# --- item 3: retained requests, replays across restarts ------------------------------


def test_retained_requests_are_never_executed_across_agent_restarts(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    new_ticker(manager, "tb", bot_origin, start=True)
    watcher = watchers(mosquitto)
    line = f"retained-{uuid.uuid4().hex[:8]}"
    replies = watcher.watch("r-retained")
    hbot_replies = watcher.watch("r-retained-hbot")
    # Left on the broker while no agent runs, as an attacker (or a misconfigured client) would.
    watcher.publish(f"supervisor/{HOST}/tb/send", envelope("r-retained", {"text": line}), retain=True)
    watcher.publish("hbot/tb/stop", envelope("r-retained-hbot", {"async_backend": False}), retain=True)

    proc = agents.start(mosquitto.url)
    for _ in range(3):
        for got in (replies, hbot_replies):
            answer = next_matching(got, timeout=10).json()["data"]
            assert answer["status"] == 400 and "retained" in answer["msg"], answer
        proc = restart_agent(agents, proc, mosquitto.url)

    # A live request after all that still runs: the agent serves, and only the retained ones were refused.
    sentinel = f"sentinel-{uuid.uuid4().hex[:8]}"
    data, _ = watcher.request(f"supervisor/{HOST}/tb/send", {"text": sentinel})
    assert data["status"] == 200, data
    wait_until(lambda: f"echo: {sentinel}" in console(manager, "tb"), message="the sentinel line")
    assert line not in console(manager, "tb")
    assert manager.status(["tb"])[0].state == "running"  # the retained stop never ran


def test_a_signed_request_is_not_executed_again_after_an_agent_restart(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    new_ticker(manager, "tb", bot_origin, start=True)
    env = {"SUPERVISOR_SECRET": HARDENING_SECRET}
    proc = agents.start(mosquitto.url, env_extra=env)
    watcher = watchers(mosquitto)
    topic = f"supervisor/{HOST}/tb/send"
    line = f"once-{uuid.uuid4().hex[:8]}"
    payload = signed_envelope(topic, "r-once", {"text": line})
    replies = watcher.watch("r-once")
    watcher.publish(topic, payload)
    assert next_matching(replies, timeout=10).json()["data"]["status"] == 200
    wait_until(lambda: f"echo: {line}" in console(manager, "tb"), message="the first line")

    proc = restart_agent(agents, proc, mosquitto.url, env_extra=env)
    # A signed request published retained: a copy of it reaches every future agent.
    retained_line = f"retained-signed-{uuid.uuid4().hex[:8]}"
    retained_payload = signed_envelope(topic, "r-kept", {"text": retained_line})
    kept = watcher.watch("r-kept")
    watcher.publish(topic, retained_payload, retain=True)
    first = next_matching(kept, timeout=10).json()["data"]  # live delivery: executed once, as any request
    assert first["status"] == 200, first

    # Within the 30 s skew window, the exact bytes of the first request again: refused, not executed.
    watcher.publish(topic, payload)
    again = next_matching(replies, timeout=10).json()["data"]
    assert again["status"] == 401 and "before this agent started" in again["msg"], again
    proc = restart_agent(agents, proc, mosquitto.url, env_extra=env)
    answer = next_matching(kept, timeout=10).json()["data"]  # the retained copy, at the new subscription
    assert answer["status"] == 400 and "retained" in answer["msg"], answer

    sentinel = f"sentinel-{uuid.uuid4().hex[:8]}"
    assert watcher.request_raw(topic, signed_envelope(topic, "r-s", {"text": sentinel}), "r-s")[0]["status"] == 200
    wait_until(lambda: f"echo: {sentinel}" in console(manager, "tb"), message="the sentinel line")
    text = console(manager, "tb")
    assert text.count(f"echo: {line}") == 1
    assert text.count(f"echo: {retained_line}") == 1


# --- item 15: reply topics that are command topics ------------------------------------


def test_a_flood_of_identical_requests_is_logged_at_a_bounded_rate(
    mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    agent = agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    replies = watcher.watch("flood-reply")
    payload = envelope("flood-reply", {"text": "x" * 1000})
    watcher.publish(f"supervisor/{HOST}/nope/send", payload)
    assert replies.get(timeout=15).json()["data"]["status"] == 400
    for _ in range(200):  # the same bytes again and again: each a request (or, past one bot's share, a 503)
        watcher.publish(f"supervisor/{HOST}/nope/send", payload)
    for _ in range(200):  # every copy is answered: all were handled
        assert replies.get(timeout=15).json()["data"]["status"] in (400, 503)
    lines = agents.started[-1][1].read_text().splitlines()
    assert agents.started[-1][0] is agent
    assert len([line for line in lines if "nope/send" in line]) <= 21, lines[-5:]


def test_a_reply_to_on_a_command_topic_is_refused_and_nothing_is_published_there(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    new_ticker(manager, "tb", bot_origin, start=True)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    targets = [
        "supervisor/otherhost/x/stop",
        f"supervisor/{HOST}/tb/stop",
        "supervisor/otherhost/list",
        "supervisor/otherhost/agent",
        "hbot/x/stop",
        "hbot/tb/start",
    ]
    seen = [watcher.watch(target) for target in targets]
    lines = []
    for target in targets:
        line = f"reply-{uuid.uuid4().hex[:8]}"
        lines.append(line)
        watcher.publish(f"supervisor/{HOST}/tb/send", envelope(target, {"text": line}))
        watcher.publish("hbot/tb/status", envelope(target, {"async_backend": False}))

    sentinel = f"sentinel-{uuid.uuid4().hex[:8]}"
    data, _ = watcher.request(f"supervisor/{HOST}/tb/send", {"text": sentinel})
    assert data["status"] == 200, data
    wait_until(lambda: f"echo: {sentinel}" in console(manager, "tb"), message="the sentinel line")
    for got, target in zip(seen, targets, strict=True):
        assert [m.payload[:200] for m in drain(got)] == [], target  # no reply (nor anything else) landed there
    assert_silent(seen[0], 0.3)
    text = console(manager, "tb")
    assert not any(line in text for line in lines)


def test_a_flood_of_oversized_refused_requests_adds_a_bounded_number_of_bytes_to_the_logs(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
    isolated_env: Path,
) -> None:
    new_ticker(manager, "tb", bot_origin, start=True)
    proc = agents.start(mosquitto.url, env_extra={"SUPERVISOR_SECRET": HARDENING_SECRET})
    watcher = watchers(mosquitto)

    def log_bytes() -> int:
        files = [*isolated_env.glob("audit.log*"), *isolated_env.glob("agent.log*")]
        return sum(f.stat().st_size for f in files) + len(agents.output(proc).encode())

    def sentinel() -> None:
        topic = f"supervisor/{HOST}/tb/status"
        reply_to = f"r-{uuid.uuid4().hex}"
        data, _ = watcher.request_raw(topic, signed_envelope(topic, reply_to, {}), reply_to, timeout=30)
        assert data["status"] == 200, data

    sentinel()
    before = log_bytes()
    received = 0
    for i in range(300):
        topic = f"supervisor/{HOST}/{'x' * 60_000}{i}/send"
        if i % 2:  # not JSON: nobody to answer
            payload = b'{"header":{"reply_to":"r-flood"},"data":' + b"[" * 2000
        else:  # well formed but unsigned: 401
            payload = envelope("r-flood", {"text": "y" * 2000})
        watcher.client.publish(topic, payload, qos=1)
        received += len(topic) + len(payload)
    sentinel()  # answered after the flood (the pool is first in, first out) ...
    sentinel()  # ... and this one after every flood request has finished
    added = log_bytes() - before

    assert received > 18_000_000
    assert added < 100_000, f"{added} bytes of logs for {received} bytes of refused requests"
    assert proc.poll() is None


def test_a_burst_of_2000_requests_every_executed_one_is_answered_the_rest_get_503(
    manager: Manager,
    bot_origin: Path,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    # mosquitto queues at most 1000 QoS 1 messages per client by default and drops the rest, on
    # its way to the agent and to the client alike; this broker holds the whole burst.
    mosquitto = start_mosquitto(tmp_path / "burst-broker", extra_conf="max_queued_messages 10000\n")
    request.addfinalizer(lambda: stop_process(mosquitto.process))
    new_ticker(manager, "tb", bot_origin, start=True)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    replies = watcher.watch("r-burst/+")
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"burst-{uuid.uuid4().hex[:8]}")
    sender.max_inflight_messages_set(0)  # no client-side throttle: the whole burst at once
    sender.connect(mosquitto.host, mosquitto.port)
    sender.loop_start()
    tag = uuid.uuid4().hex[:6]
    try:
        infos = [
            sender.publish(
                f"supervisor/{HOST}/tb/send", envelope(f"r-burst/{i}", {"text": f"burst-{tag}-{i}-end"}), qos=1
            )
            for i in range(2000)
        ]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        sender.disconnect()
        sender.loop_stop()

    status: dict[int, int] = {}
    deadline = time.monotonic() + 120
    while len(status) < 2000 and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            message = replies.get(timeout=1)
            status[int(message.topic.rsplit("/", 1)[1])] = message.json()["data"]["status"]
    assert len(status) == 2000, f"{2000 - len(status)} requests got no reply"
    executed = {i for i, code in status.items() if code == 200}
    refused = {i for i, code in status.items() if code == 503}
    assert executed | refused == set(status), set(status.values())
    assert executed and refused, (len(executed), len(refused))
    # What ran is exactly what was answered 200: the console shows those lines and no other.
    wait_until(
        lambda: all(f"burst-{tag}-{i}-end" in console(manager, "tb") for i in executed),
        timeout=30,
        message="every executed line in the console",
    )
    text = console(manager, "tb")
    assert not [i for i in refused if f"burst-{tag}-{i}-end" in text]


def test_a_second_agent_with_the_same_host_id_refuses_to_run_and_the_live_one_stays_online(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    new_ticker(manager, "tb", bot_origin, start=True)
    first = agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    records = watcher.watch(f"supervisor/{HOST}/agent")
    assert next_matching(records).json()["pid"] == first.pid  # the retained record

    second = agents.start(mosquitto.url, wait=False)
    assert second.wait(30) == 1
    assert "another agent already serves it" in agents.output(second)
    assert "Stop that agent, or give this one another --host-id" in agents.output(second)

    # Whatever came and went, the record ends as the live agent's and it still serves.
    wait_until(lambda: _retained_agent(mosquitto)["pid"] == first.pid, message="the live agent's record")
    assert _retained_agent(mosquitto)["state"] == "online"
    data, _ = watcher.request(f"supervisor/{HOST}/list", {})
    assert data["status"] == 200
    # An "offline" of another run (a second agent's last will, or a stranger) never sticks.
    drain(records)
    fake = {"host": HOST, "state": "offline", "ts": time.time(), "run": "0123456789ab", "pid": 1}
    watcher.publish(f"supervisor/{HOST}/agent", json.dumps(fake).encode(), retain=True)
    next_matching(records, lambda m: m.json()["state"] == "online" and m.json()["pid"] == first.pid)
    assert _retained_agent(mosquitto)["pid"] == first.pid
    assert "lost" not in agents.output(first)  # never kicked off the broker
    assert first.poll() is None


def test_two_agents_started_together_with_one_host_id_leave_exactly_one_serving(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    new_ticker(manager, "tb", bot_origin, start=True)
    pair = [agents.start(mosquitto.url, wait=False) for _ in range(2)]

    wait_until(lambda: any(p.poll() is not None for p in pair), timeout=30, message="one agent to give way")
    [loser] = [p for p in pair if p.poll() is not None]
    [winner] = [p for p in pair if p is not loser]
    assert loser.returncode == 1, agents.output(loser)
    assert "another agent already serves it" in agents.output(loser)
    agents.wait_online(winner, mosquitto.url)
    assert _retained_agent(mosquitto)["pid"] == winner.pid
    data, _ = watchers(mosquitto).request(f"supervisor/{HOST}/tb/status", {})
    assert data["status"] == 200
    assert winner.poll() is None


def _retained_agent(broker: Broker) -> dict[str, t.Any]:
    """Return the retained availability record a new subscriber gets now."""
    fresh = Watcher(broker.host, broker.port)
    try:
        record: dict[str, t.Any] = next_matching(fresh.watch(f"supervisor/{HOST}/agent")).json()
        return record
    finally:
        fresh.close()


# --- the same flow on another broker: NATS's MQTT listener ---------------------------
# commlib (so hbotrc, and Hummingbot up to v2.14) always sends the user-name flag, empty by
# default, and nats-server refuses an empty user name ("empty user name not allowed"). So this
# broker gets credentials, as a production NATS would, and every client uses them.
NATS_CREDENTIALS = ("bots", "test-password")


@pytest.fixture
def nats_mqtt(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A private nats-server with JetStream and its MQTT listener on free loopback ports."""
    binary = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )
    if binary is None:
        missing("'nats-server' is not installed")
    workdir = tmp_path / "nats"
    workdir.mkdir()
    port, mqtt_port = free_port(), free_port()
    conf = workdir / "nats.conf"
    log = workdir / "nats.log"
    user, password = NATS_CREDENTIALS
    conf.write_text(
        f'server_name: "supervisor-test-{port}"\n'
        f"listen: 127.0.0.1:{port}\n"
        f'jetstream {{ store_dir: "{workdir / "js"}" }}\n'
        f"mqtt {{\n  listen: 127.0.0.1:{mqtt_port}\n"
        f'  authorization {{ username: "{user}", password: "{password}" }}\n}}\n'
    )
    proc = subprocess.Popen(
        [binary, "-c", str(conf), "-l", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", mqtt_port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_process(proc)
                pytest.fail(f"nats-server did not start: {log.read_text() if log.exists() else ''}")
            time.sleep(0.05)
    yield Broker("127.0.0.1", mqtt_port, proc, log)
    stop_process(proc)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and log.exists():
        sys.stderr.write(f"--- nats-server log ---\n{log.read_text()[-5000:]}\n")


@COMMLIB_PAHO_WARNING
def test_commlib_start_stop_and_own_status_through_nats_mqtt(
    manager: Manager,
    bot_origin: Path,
    nats_mqtt: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
    bot_commands: Callable[..., BotCommands],
) -> None:
    new_ticker(manager, "tb", bot_origin)
    agents.start(nats_mqtt.url, credentials=NATS_CREDENTIALS)
    watcher = watchers(nats_mqtt, NATS_CREDENTIALS)
    heartbeats = watcher.watch("hbot/tb/hb")
    client = bot_commands(nats_mqtt, "tb", NATS_CREDENTIALS)

    started = client.start()
    assert started.status == 200, started
    pid = manager.status(["tb"])[0].pid
    assert pid is not None and psutil.pid_exists(pid)
    beat = next_matching(heartbeats, timeout=5)
    assert re.fullmatch(rb'\{"ts":\d+\}', beat.payload), beat.payload
    data, raw = watcher.request(f"supervisor/{HOST}/tb/status", {})
    assert REPLY_RE.fullmatch(raw), raw
    assert (data["status"], data["result"]["state"], data["result"]["pid"]) == (200, "running", pid)

    stopped = client.stop()
    assert stopped.status == 200 and "stopped strategy" in stopped.msg, stopped
    data, _ = watcher.request(f"supervisor/{HOST}/tb/stop", {})
    assert data["status"] == 200, data
    assert "bye" in console(manager, "tb")
    data, _ = watcher.request(f"supervisor/{HOST}/tb/status", {})
    assert (data["status"], data["result"]["state"]) == (200, "stopped")


def test_hbot_relay_refuses_control_characters_in_any_typed_field_and_types_nothing(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    pid = new_ticker(manager, "tb", bot_origin, start=True)
    new_ticker(manager, "down", bot_origin)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)

    # Ctrl-U would erase the typed "import " and run "history"; Ctrl-C would kill the bot.
    data, _ = watcher.request("hbot/tb/import", {"strategy": "\u0015history"})
    assert data["status"] == 400, data
    assert "field 'strategy' holds control characters (U+0015)" in data["msg"], data
    data, _ = watcher.request("hbot/tb/import", {"strategy": "x\u0003"})
    assert data["status"] == 400 and "U+0003" in data["msg"], data
    data, _ = watcher.request("hbot/tb/start", {"async_backend": False, "script": "a\u001b[A.py"})
    assert data["status"] == 400 and "field 'script'" in data["msg"], data
    # A stopped bot is not launched for a start whose values are refused.
    data, _ = watcher.request("hbot/down/start", {"async_backend": False, "conf": "c\u0085"})
    assert data["status"] == 400 and "field 'conf'" in data["msg"], data
    # Hummingbot's clients start asynchronously by default: the refusal still comes as the reply, not a 200.
    data, _ = watcher.request("hbot/tb/start", {"script": "a\u0003.py"})
    assert data["status"] == 400 and "field 'script'" in data["msg"], data
    data, _ = watcher.request("hbot/down/start", {"conf": "c\u001b"})
    assert data["status"] == 400 and "field 'conf'" in data["msg"], data
    data, _ = watcher.request(f"supervisor/{HOST}/tb/send", {"text": "status\t"})
    assert data["status"] == 400, data

    data, _ = watcher.request("hbot/tb/status", {"async_backend": False})
    assert data["status"] == 200 and "status: running=False" in data["msg"], data
    text = console(manager, "tb")
    assert "import" not in text and "history" not in text and "started:" not in text
    assert "status\t" not in text
    assert manager.status(["tb"])[0].pid == pid
    assert state(manager, "down") == "stopped"


def test_the_agent_reports_sessions_of_ours_that_lost_their_record(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    pid = new_ticker(manager, "lost", bot_origin, start=True)
    agent = agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    events = watcher.watch(f"supervisor/{HOST}/lost/events")
    manager.paths.registry.unlink()

    event = next_matching(events, timeout=10).json()
    assert event["msg"].startswith("session 'sup-lost' runs without a record, so nothing supervises it"), event
    assert "supervisor adopt sup-lost --name NAME -r RECIPE" in event["msg"]
    assert_silent(events, 1.0)  # once, not at every check
    assert psutil.pid_exists(t.cast("int", pid))
    assert "runs without a record" in agents.output(agent)


def test_a_broken_registry_pauses_supervision_and_the_agent_keeps_serving(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    pid = new_ticker(manager, "tb", bot_origin, start=True)
    agent = agents.start(mosquitto.url)
    registry = manager.paths.registry
    good = registry.read_bytes()
    registry.write_text('{"version": 1, "instances": []}')  # not a mapping: unreadable as a registry

    wait_until(lambda: "cannot read this host's state" in agents.output(agent), timeout=10, message="the error")
    time.sleep(1.0)  # several checks (every 0.2 s) while it stays broken
    assert agent.poll() is None, agents.output(agent)
    assert agents.output(agent).count("cannot read this host's state") == 1
    assert psutil.pid_exists(t.cast("int", pid))
    # The agent still answers on its own namespace while the registry is broken.
    watcher = watchers(mosquitto)
    data, _ = watcher.request(f"supervisor/{HOST}/tb/status", {})
    assert data["status"] >= 400 and "registry" in data["msg"], data

    registry.write_bytes(good)
    wait_until(lambda: "can be read again" in agents.output(agent), timeout=10, message="the mending")
    # Supervision is back: a killed bot is restarted.
    os.kill(t.cast("int", pid), signal.SIGKILL)
    wait_until(
        lambda: (alive := manager.status(["tb"])[0]).pid not in (None, pid) and alive.is_running,
        timeout=20,
        message="the bot restarted",
    )


def test_a_status_reply_from_the_snapshot_is_byte_for_byte_what_the_protocol_encodes() -> None:
    from supervisor.agent.wire import envelope
    from supervisor.mqtt import protocol

    data = {"status": 200, "msg": "running", "result": {"name": "tb", "pid": 12, "cpu_percent": 0.5, "adopted": False}}
    body = envelope(protocol.dumps(protocol.make_primitive(data)))
    stamp = json.loads(body)["header"]["timestamp"]
    assert body == protocol.encode_reply(data, now_ms=stamp)
    assert abs(stamp / 1000 - time.time()) < 60
    assert REPLY_RE.fullmatch(body), body


def test_the_snapshot_provider_gives_the_records_ls_gives(manager: Manager, bot_origin: Path) -> None:
    from supervisor.agent.host import Agent
    from supervisor.mqtt.config import load_agent_config

    new_ticker(manager, "tb", bot_origin, start=True)
    new_ticker(manager, "idle", bot_origin)
    config = load_agent_config(None, {}, {"url": "mqtt://127.0.0.1:1", "host_id": HOST})
    agent = Agent(manager, config)  # never run: the provider alone, as the snapshot socket calls it
    volatile = {"cpu_percent", "rss", "uptime"}

    def stable(records: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
        return [{k: v for k, v in r.items() if k not in volatile} for r in records]

    try:
        answer = agent.view.provide([], True)
        assert stable(answer["instances"]) == stable([s.to_dict() for s in manager.status()])
        assert answer["foreign"] == [f.to_dict() for f in manager.foreign_sessions()]
        again = agent.view.provide(["tb"], False)  # from the snapshot now (fresh), same records
        assert stable(again["instances"]) == stable([manager.status(["tb"])[0].to_dict()])
        assert again["foreign"] == []
        manager.stop(["tb"])
        assert agent.view.provide(["tb"], False)["instances"][0]["state"] == "stopped"
        with pytest.raises(InstanceNotFound):
            agent.view.provide(["ghost"], False)
    finally:
        agent.probe.close()


def test_the_snapshot_shows_the_commit_an_update_from_another_process_checked_out(
    manager: Manager, bot_origin: Path
) -> None:
    """The agent caches HEADs for a state interval; an update recorded by a CLI is seen at once."""
    from supervisor.agent.host import Agent
    from supervisor.mqtt.config import load_agent_config

    new_ticker(manager, "tb", bot_origin)
    config = load_agent_config(None, {}, {"url": "mqtt://127.0.0.1:1", "host_id": HOST})
    agent = Agent(manager, config)  # never run: the provider alone, as the snapshot socket calls it
    try:
        before = agent.view.provide(["tb"], False)["instances"][0]["commit"]
        with git.Repo(bot_origin) as repo:
            head = commit_files(repo, {"NEWS.md": "later\n"}, "news")
        cli = Manager(manager.paths)  # another process's manager, with caches of its own
        cli.update("tb")
        assert before != head
        assert agent.view.provide(["tb"], False)["instances"][0]["commit"] == head
    finally:
        agent.probe.close()


def test_a_running_agent_answers_ls_on_its_snapshot_socket_and_removes_it_when_it_stops(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
) -> None:
    from supervisor.agent.snapshot import ask

    new_ticker(manager, "tb", bot_origin, start=True)
    agent = agents.start(mosquitto.url)
    socket_path = manager.paths.agent_socket
    answer = wait_until(lambda: ask(socket_path, tmux_socket=manager.paths.tmux_socket), message="the socket")
    volatile = {"cpu_percent", "rss", "uptime"}
    assert [{k: v for k, v in r.items() if k not in volatile} for r in answer["instances"]] == [
        {k: v for k, v in manager.status(["tb"])[0].to_dict().items() if k not in volatile}
    ]
    manager.stop(["tb"])  # the next answer says so: states are kept current by events
    [record] = t.cast("dict[str, t.Any]", ask(socket_path, ["tb"], foreign=False))["instances"]
    assert (record["state"], record["pid"]) == ("stopped", None)

    stop_process(agent)
    assert not socket_path.exists()
