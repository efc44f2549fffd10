"""The README's Mosquitto ACL sample (docs/mosquitto/acl) in a real mosquitto: it loads, allows and denies."""

from __future__ import annotations

import subprocess
import typing as t
from pathlib import Path

import pytest

from tests.conftest import Broker, require_binary, start_mosquitto, stop_process
from tests.test_agent import Watcher, assert_silent

if t.TYPE_CHECKING:
    from collections.abc import Iterator

ACL = Path(__file__).parent.parent / "docs" / "mosquitto" / "acl"
README = Path(__file__).parent.parent / "README.md"
USERS = ("host-1", "dashboard", "hummingbot-api", "hummingbot")


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

    agent, dashboard, api, bot = (login(user) for user in USERS)
    try:
        # Requests reach the agent, 4-level balance topics included.
        requests = agent.watch("hbot/+/+")
        balance = agent.watch("hbot/+/balance/+")
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

        # Denied: a host writing another host's records, Hummingbot's clients writing our namespace,
        # a host typing requests into Hummingbot's topics.
        records = dashboard.watch("supervisor/#")
        agent.publish("supervisor/host-2/ex/state", b"{}", retain=True)
        api.publish("supervisor/host-1/ex/stop", b"{}")
        bot.publish("supervisor/host-1/ex/send", b"{}")
        agent.publish("hbot/ex/start", b"{}")
        assert_silent(records, 1.0)
        assert_silent(own, 0.2)
        assert_silent(requests, 0.2)
    finally:
        for watcher in (agent, dashboard, api, bot):
            watcher.close()
