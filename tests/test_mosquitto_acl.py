"""The README's Mosquitto ACL sample (docs/mosquitto/acl) in a real mosquitto: it loads, allows and denies."""

from __future__ import annotations

import json
import subprocess
import typing as t
import uuid
from pathlib import Path

import pytest

from tests.conftest import Broker, require_binary, start_mosquitto, stop_process, wait_until
from tests.test_agent import (
    BRIDGE_BOT,
    AgentRunner,
    Watcher,
    agents,
    assert_silent,
    bridge_origin,
    console,
    envelope,
    next_matching,
)
from tests.test_events import TOKEN, Receivers, hook, post, receivers

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from supervisor.core.manager import Manager

__all__ = ["agents", "bridge_origin", "receivers"]  # fixtures, used by name

ACL = Path(__file__).parent.parent / "docs" / "mosquitto" / "acl"
README = Path(__file__).parent.parent / "README.md"
USERS = ("host-1", "dashboard", "events", "hummingbot-api", "hummingbot")


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Broker]:
    passwd = require_binary("mosquitto_passwd")
    passwords = tmp_path / "passwd"
    for i, user in enumerate(USERS):
        argv = [passwd, "-b", *(["-c"] if i == 0 else []), str(passwords), user, f"pw-{user}"]
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
    broker = start_mosquitto(
        tmp_path / "broker", extra_conf=f"allow_anonymous false\npassword_file {passwords}\nacl_file {ACL}\n"
    )
    yield broker
    stop_process(broker.process)


def test_the_readme_shows_the_sample_file_as_it_is() -> None:
    assert f"```\n{ACL.read_text()}```" in README.read_text()


def test_the_sample_loads_and_allows_and_denies_as_documented(acl_broker: Broker) -> None:
    log = acl_broker.log.read_text()
    assert "Invalid" not in log and "Error" not in log, log
    assert acl_broker.process.poll() is None

    def login(user: str) -> Watcher:
        return Watcher(acl_broker.host, acl_broker.port, (user, f"pw-{user}"))

    agent, dashboard, events, api, bot = (login(user) for user in USERS)
    try:
        # Requests reach the agent, 4-level balance topics included, and so do external events.
        requests = agent.watch("hbot/+/+")
        balance = agent.watch("hbot/+/balance/+")
        external = agent.watch("hbot/+/external/event/#")
        api.publish("hbot/ex/external/event/signals/btc", b"{}")
        events.publish("hbot/ex/external/event/signals/eth", b"{}")
        assert [external.get(timeout=5).topic for _ in range(2)] == [
            "hbot/ex/external/event/signals/btc",
            "hbot/ex/external/event/signals/eth",
        ]
        api.publish("hbot/ex/stop", b"{}")
        api.publish("hbot/ex/balance/paper", b"{}")
        assert requests.get(timeout=5).topic == "hbot/ex/stop"
        assert balance.get(timeout=5).topic == "hbot/ex/balance/paper"
        dashboard.publish("hbot/ex/start", b"{}")
        assert requests.get(timeout=5).topic == "hbot/ex/start"

        # The agent's replies: commlib's rpc-<uuid>, hummingbot-api/response/..., the fleet's.
        rpc = api.watch("+")
        responses = api.watch("hummingbot-api/#")
        fleet = dashboard.watch("supervisor-fleet/#")
        agent.publish("rpc-0610209bdb0c4330af42db67217eadcb", b"{}")
        agent.publish("hummingbot-api/response/1795548820614", b"{}")
        agent.publish("supervisor-fleet/abc/1", b"{}")
        assert rpc.get(timeout=5).topic == "rpc-0610209bdb0c4330af42db67217eadcb"
        assert responses.get(timeout=5).topic == "hummingbot-api/response/1795548820614"
        assert fleet.get(timeout=5).topic == "supervisor-fleet/abc/1"

        # Streams for plugin-less bots, and a plugin bot's own.
        streams = api.watch("hbot/+/#")
        for topic in ("hb", "status_updates", "notify", "log", "events", "performance"):
            agent.publish(f"hbot/ex/{topic}", b"{}")
            assert streams.get(timeout=5).topic == f"hbot/ex/{topic}"
        bot.publish("hbot/hb-1/hb", b"{}")
        assert streams.get(timeout=5).topic == "hbot/hb-1/hb"
        heard = [requests.get(timeout=5).topic for _ in range(7)]  # the agent hears the streams too (hbot/+/+)
        assert heard[-1] == "hbot/hb-1/hb", heard

        # The fleet and dashboard command hosts; each host reads its own namespace.
        own = agent.watch("supervisor/host-1/#")
        dashboard.publish("supervisor/host-1/ex/restart", b"{}")
        dashboard.publish("supervisor/host-1/list", b"{}")
        assert [own.get(timeout=5).topic for _ in range(2)] == [
            "supervisor/host-1/ex/restart",
            "supervisor/host-1/list",
        ]

        # The agent hands a held request to a plugin bot's bridge, and reads what the bridge answers
        # on the client's reply topic (commlib's rpc-<uuid>, hummingbot-api's).
        bridge = bot.watch("hbot/pb3/+")
        agent.publish("hbot/pb3/start", b"{}")
        agent.publish("hbot/pb3/balance/paper", b"{}")
        assert bridge.get(timeout=5).topic == "hbot/pb3/start"
        replies = agent.watch("rpc-849f7f8779aa4eabb9dae3aee44a6016")
        api_replies = agent.watch("hummingbot-api/response/#")
        bot.publish("rpc-849f7f8779aa4eabb9dae3aee44a6016", b"{}")
        bot.publish("hummingbot-api/response/1795548820614", b"{}")
        assert replies.get(timeout=5).topic == "rpc-849f7f8779aa4eabb9dae3aee44a6016"
        assert api_replies.get(timeout=5).topic == "hummingbot-api/response/1795548820614"

        # The webhook receiver reads state records (to resolve patterns) and writes event records.
        states = events.watch("supervisor/+/+/state")
        event_records = dashboard.watch("supervisor/+/+/events")
        agent.publish("supervisor/host-1/ex/state", b"{}")
        events.publish("supervisor/host-2/ex/events", b"{}")
        assert states.get(timeout=5).topic == "supervisor/host-1/ex/state"
        assert own.get(timeout=5).topic == "supervisor/host-1/ex/state"
        assert event_records.get(timeout=5).topic == "supervisor/host-2/ex/events"

        # Denied: a host writing another host's records, Hummingbot's clients writing our namespace,
        # a host sending external events, the receiver sending commands or writing records.
        records = dashboard.watch("supervisor/#")
        drain = dashboard.watch("hbot/#")
        agent.publish("supervisor/host-2/ex/state", b"{}", retain=True)
        api.publish("supervisor/host-1/ex/stop", b"{}")
        bot.publish("supervisor/host-1/ex/send", b"{}")
        agent.publish("hbot/ex/external/event/x", b"{}")
        events.publish("hbot/ex/start", b"{}")
        events.publish("supervisor/host-1/ex/stop", b"{}")
        events.publish("supervisor/host-1/ex/state", b"{}", retain=True)
        assert_silent(records, 1.0)
        assert_silent(drain, 0.2)
        assert_silent(own, 0.2)
    finally:
        for watcher in (agent, dashboard, events, api, bot):
            watcher.close()


def login(broker: Broker, user: str) -> Watcher:
    return Watcher(broker.host, broker.port, (user, f"pw-{user}"))


def start_agent(agents: AgentRunner, broker: Broker) -> None:
    """Run the agent as the README says: user host-1, --host-id host-1; wait for its online record."""
    proc = agents.start(broker.url, "--host-id", "host-1", credentials=("host-1", "pw-host-1"), wait=False)
    dashboard = login(broker, "dashboard")
    try:
        records = dashboard.watch("supervisor/host-1/agent")

        def online(message: t.Any) -> bool:
            assert proc.poll() is None, agents.output(proc)
            record = message.json()
            return bool(record.get("state") == "online" and record.get("pid") == proc.pid)

        next_matching(records, online, timeout=20)
    finally:
        dashboard.close()


def test_external_events_from_a_hummingbot_api_client_and_the_receiver_reach_a_plugin_less_bot(
    acl_broker: Broker, manager: Manager, agents: AgentRunner, receivers: Receivers
) -> None:
    manager.new("ex-1", "example-bot")
    manager.start(["ex-1"])
    start_agent(agents, acl_broker)
    api, dashboard = login(acl_broker, "hummingbot-api"), login(acl_broker, "dashboard")
    try:
        event_records = dashboard.watch("supervisor/host-1/ex-1/events")
        api.publish("hbot/ex-1/external/event/signals/api", json.dumps({"data": {"message": "from api"}}).encode())
        wait_until(lambda: "ALERT signals.api: from api" in console(manager, "ex-1"), timeout=15)

        # The receiver logs in as 'events'; "*/ex-*" is resolved through the agent's state records.
        url = acl_broker.url.replace("mqtt://", "mqtt://events:pw-events@")
        routes = (
            f'[receiver]\nlisten = "127.0.0.1:0"\n\n[routes.btc]\ntoken = "{TOKEN}"\n'
            'event = "signals.hook"\ntargets = ["host-1/ex-1", "*/ex-*"]\n'
        )
        receiver = receivers.start(url, routes)
        assert post(hook(receiver), b"from hook", token=TOKEN, content_type="text/plain").status == 202
        wait_until(lambda: "ALERT signals.hook: from hook" in console(manager, "ex-1"), timeout=15)
        record = next_matching(event_records, lambda m: "from route 'btc' delivered" in m.json()["msg"], timeout=15)
        assert record.json()["host"] == "host-1", record.json()
    finally:
        api.close()
        dashboard.close()


def test_a_start_for_a_down_plugin_bot_is_launched_by_the_agent_and_answered_by_its_bridge(
    acl_broker: Broker, manager: Manager, bridge_origin: Path, agents: AgentRunner
) -> None:
    settings = [f"mqtt_port={acl_broker.port}", "bridge_delay=1", "mqtt_username=hummingbot"]
    manager.new("pb3", BRIDGE_BOT, repo=str(bridge_origin), settings=[*settings, "mqtt_password=pw-hummingbot"])
    start_agent(agents, acl_broker)
    client = login(acl_broker, "hummingbot-api")
    try:
        reply_to = f"rpc-{uuid.uuid4().hex}"  # commlib's reply topic
        replies = client.watch(reply_to)
        client.publish("hbot/pb3/start", envelope(reply_to, {"script": "probe.py", "conf": "probe.yml"}))
        assert replies.get(timeout=30).json()["data"] == {"status": 200, "msg": "bridge start --conf probe.yml"}
        assert_silent(replies, 1.0)
    finally:
        client.close()
