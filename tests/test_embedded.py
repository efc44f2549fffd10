from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import typing as t
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import IN_CI, free_port, stop_process, wait_until

try:
    import amqtt  # noqa: F401 - only checks that the optional extra is installed
except ImportError:  # pragma: no cover - the dev group installs it
    if IN_CI:
        pytest.fail("amqtt is not installed but CI=true: 'make test' installs the dev group", pytrace=False)
    pytest.skip("amqtt (bot-supervisor[embedded]) is not installed", allow_module_level=True)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture
def embedded_agent(isolated_env: Path, tmux_socket: str) -> t.Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    env = {**os.environ, "SUPERVISOR_HOME": str(isolated_env), "SUPERVISOR_TMUX_SOCKET": tmux_socket}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "supervisor", "agent", "--embedded-broker", "--broker", f"mqtt://127.0.0.1:{port}"),
            *("--host-id", "emb", "--heartbeat-interval", "0.5", "--state-interval", "1"),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: listening(port) or proc.poll() is not None, timeout=15, message="embedded broker")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield proc, port
    finally:
        stop_process(proc)
        if proc.stderr is not None:
            proc.stderr.close()


def test_agent_serves_on_its_embedded_broker(embedded_agent: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = embedded_agent
    messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, m: messages.put((m.topic, bytes(m.payload)))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        reply_to = f"test-{uuid.uuid4().hex}"
        client.subscribe([("supervisor/emb/agent", 1), (reply_to, 1)])

        def next_on(topic: str) -> bytes:
            while True:
                got_topic, payload = messages.get(timeout=10)
                if got_topic == topic:
                    return payload

        assert json.loads(next_on("supervisor/emb/agent"))["state"] == "online"
        request = {"header": {"reply_to": reply_to}, "data": {}}
        client.publish("supervisor/emb/list", json.dumps(request), qos=1)
        reply = json.loads(next_on(reply_to))
        assert reply["data"]["status"] == 200
        assert reply["data"]["result"] == {"host": "emb", "instances": []}
    finally:
        client.loop_stop()
        client.disconnect()
    assert proc.poll() is None


def test_embedded_broker_refuses_a_taken_port(isolated_env: Path, tmux_socket: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "SUPERVISOR_HOME": str(isolated_env), "SUPERVISOR_TMUX_SOCKET": tmux_socket}
        result = subprocess.run(
            [sys.executable, "-m", "supervisor", "agent", "--embedded-broker", "--broker", f"mqtt://127.0.0.1:{port}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert f"embedded broker: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "drop --embedded-broker" in result.stderr
