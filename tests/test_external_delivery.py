"""External events end to end: every event acts, our re-sends are typed once, delivery is confirmed.

Real parts: a real mosquitto, real agents (``python -m supervisor agent``) and
example bots in tmux, the receiver in-process, paho clients standing in for a
foreign sender (hbot-remote-client-py repeats byte-identical events).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from supervisor.cli import cli
from supervisor.core.manager import Manager
from supervisor.events.config import load_events_config
from supervisor.events.journal import Journal
from supervisor.events.receiver import Receiver
from supervisor.mqtt.auth import sign_record
from supervisor.mqtt.config import load_agent_config
from tests.conftest import Broker, wait_until
from tests.test_agent import HOST, AgentRunner, Watcher, agents, drain, next_matching
from tests.test_events import TOKEN, Receivers, announce, hook, post, receivers, routes_toml, watcher

__all__ = ["agents", "receivers", "watcher"]  # fixtures shared with test_agent and test_events

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator

RECEIVER_ID = "0123456789abcdef"


def alerts(manager: Manager, name: str, text: str) -> Callable[[], int]:
    """Count the bot's ``ALERT`` lines holding ``text`` (its console log)."""
    return lambda: manager.log_path(name).read_text(errors="replace").count(text)


def test_identical_foreign_events_all_act_as_in_hummingbot(
    mosquitto: Broker, watcher: Watcher, manager: Manager, agents: AgentRunner
) -> None:
    manager.new("ex-1", "example-bot")
    manager.start(["ex-1"])
    agents.start(mosquitto.url)
    # hbot-remote-client-py's BotEventEmitter: timestamp -1, sequence 0, so repeats are byte-identical.
    payload = b'{"timestamp":"-1","sequence":0,"type":"eevent","data":{"message":"rep-7"}}'
    for _ in range(3):
        watcher.publish("hbot/ex-1/external/event/sig", payload)
    wait_until(lambda: alerts(manager, "ex-1", "ALERT sig: rep-7")() == 3, timeout=10, message="three alerts")


def test_malformed_events_are_refused_and_reported_and_a_cleared_retained_event_is_silent(
    mosquitto: Broker, watcher: Watcher, manager: Manager, agents: AgentRunner
) -> None:
    manager.new("ex-1", "example-bot")
    manager.start(["ex-1"])
    agents.start(mosquitto.url)
    events = watcher.watch(f"supervisor/{HOST}/ex-1/events")
    cases = {
        "empty": (b"", "its payload is empty"),
        "notjson": (b"SELL 100", "its payload is not JSON"),
        "alist": (b"[1,2]", "its payload is a list, not an object"),
        "anumber": (b"42", "its payload is a number, not an object"),
        "nan": (b'{"data":{"x":NaN}}', "its payload is not JSON"),
        "listdata": (b'{"data":[1]}', "its 'data' is a list, not an object"),
        "textdata": (b'{"data":"x"}', "its 'data' is a string, not an object"),
        "nulldata": (b'{"data":null}', "its 'data' is null, not an object"),
    }
    for name, (payload, _) in cases.items():
        watcher.publish(f"hbot/ex-1/external/event/{name}", payload)
    seen: dict[str, str] = {}
    while len(seen) < len(cases):
        message = next_matching(events, lambda m: "refused" in m.json()["msg"], timeout=10).json()["msg"]
        seen[message.split("'")[1]] = message
    for name, (_, why) in cases.items():
        assert seen[name] == f"external event '{name}' refused: {why}. Not typed."
    # Clearing a retained event (an empty retained publish) fires nothing and says nothing.
    watcher.publish("hbot/ex-1/external/event/clr", b"", retain=True)
    watcher.publish("hbot/ex-1/external/event/clr", b'{"data":{"message":"after"}}')
    wait_until(alerts(manager, "ex-1", "ALERT clr: after"), timeout=10)
    next_matching(events, lambda m: "typed into the console" in m.json()["msg"])
    assert [m.json()["msg"] for m in drain(events) if "clr" in m.json()["msg"]] == []
    log = manager.log_path("ex-1").read_text(errors="replace")
    assert all(f"ALERT {name}" not in log for name in cases)


def test_a_receiver_resend_is_typed_once_even_after_the_agent_is_killed(
    mosquitto: Broker, watcher: Watcher, manager: Manager, agents: AgentRunner
) -> None:
    manager.new("ex-1", "example-bot")
    manager.start(["ex-1"])
    first = agents.start(mosquitto.url)
    confirmations = watcher.watch(f"supervisor/{HOST}/ex-1/delivery")
    event = {"timestamp": 1, "sequence": 7, "type": "webhook", "data": {"message": "once-7"}, "receiver": RECEIVER_ID}
    payload = json.dumps(event).encode()
    watcher.publish("hbot/ex-1/external/event/sig", payload)
    confirmed = next_matching(confirmations, timeout=10).json()
    assert (confirmed["receiver"], confirmed["sequence"], confirmed["result"]) == (RECEIVER_ID, 7, "typed")
    assert (confirmed["host"], confirmed["instance"]) == (HOST, "ex-1")
    # The confirmation was lost (say): the receiver re-sends, and the agent confirms again without typing.
    watcher.publish("hbot/ex-1/external/event/sig", payload)
    assert next_matching(confirmations, timeout=10).json()["msg"] == "typed before (a re-send)"
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    agents.start(mosquitto.url)
    watcher.publish("hbot/ex-1/external/event/sig", payload)
    assert next_matching(confirmations, timeout=10).json()["result"] == "typed"
    # An event that reaches the agent after its deadline is refused, and the refusal confirmed.
    late = {**event, "sequence": 9, "expires": 1000, "data": {"message": "stale-9"}}
    watcher.publish("hbot/ex-1/external/event/sig", json.dumps(late).encode())
    refused = next_matching(confirmations, timeout=10).json()
    assert (refused["sequence"], refused["result"]) == (9, "refused")
    assert refused["msg"] == "external event 'sig' #9 refused: it expired before it arrived. Not typed."
    # The topic names no host: an event our receiver meant for another host's ex-1 is left alone.
    elsewhere = {**event, "sequence": 10, "data": {"message": "not-mine-10"}, "to": ["h2/ex-1"]}
    watcher.publish("hbot/ex-1/external/event/sig", json.dumps(elsewhere).encode())
    # Another sequence from the same receiver is a new event.
    mine = {**event, "sequence": 8, "to": [f"{HOST}/ex-1"]}
    watcher.publish("hbot/ex-1/external/event/sig", json.dumps(mine).encode())
    assert next_matching(confirmations, timeout=10).json()["sequence"] == 8
    wait_until(lambda: alerts(manager, "ex-1", "ALERT sig: once-7")() == 2, message="seq 7 once, seq 8 once")
    assert "stale-9" not in manager.log_path("ex-1").read_text(errors="replace")
    assert "not-mine-10" not in manager.log_path("ex-1").read_text(errors="replace")
    assert [m.json()["sequence"] for m in drain(confirmations)] == []


def test_webhook_reaches_console_once_and_is_confirmed_delivered(
    mosquitto: Broker, manager: Manager, agents: AgentRunner, receivers: Receivers
) -> None:
    manager.new("ex-1", "example-bot")
    manager.start(["ex-1"])
    agents.start(mosquitto.url)
    receiver = receivers.start(mosquitto.url, routes_toml(targets=[f"{HOST}/ex-1"]))
    answer = post(hook(receiver), b"buy-once", token=TOKEN, content_type="text/plain")
    assert answer.status == 202
    wait_until(lambda: receiver.journal.get(answer.body["id"]).status == "delivered", timeout=15)  # type: ignore[union-attr]
    assert alerts(manager, "ex-1", "ALERT signals.btc.long: buy-once")() == 1


def two_routes(host: str, name: str, *, slow_max_age: float) -> str:
    """Route ``btc`` (short ``max_age``) and route ``eth`` (long), both to ``host/name``."""
    base = routes_toml(targets=[f"{host}/{name}"], max_age=slow_max_age)
    extra = routes_toml(targets=[f"{host}/{name}"], event="signals.eth", max_age=600).split("[routes.btc]")[1]
    return base + "\n[routes.eth]" + extra


def events_ls() -> dict[int, dict[str, t.Any]]:
    result = CliRunner().invoke(cli, ["events", "ls", "--json"])
    assert result.exit_code == 0, result.output
    return {entry["id"]: entry for entry in json.loads(result.stdout)}


def test_an_event_waits_for_a_stopped_agent_and_is_delivered_once_when_it_returns(
    mosquitto: Broker, watcher: Watcher, manager: Manager, agents: AgentRunner, receivers: Receivers
) -> None:
    manager.new("ex-1", "example-bot")
    manager.start(["ex-1"])
    first = agents.start(mosquitto.url)
    receiver = receivers.start(mosquitto.url, two_routes(HOST, "ex-1", slow_max_age=1))
    shown = watcher.watch(f"supervisor/{HOST}/ex-1/events")
    first.send_signal(signal.SIGTERM)  # a graceful stop: its record says offline
    first.wait(15)
    # Route eth (max_age 600 s) waits for the agent; route btc (1 s) expires, loudly.
    waited = post(hook(receiver, "eth"), b"wait-for-me", token=TOKEN, content_type="text/plain")
    stale = post(hook(receiver), b"too-late", token=TOKEN, content_type="text/plain")
    assert (waited.status, stale.status) == (202, 202)
    wait_until(lambda: events_ls()[waited.body["id"]]["status"] == "waiting", message="waiting for the agent")
    wait_until(lambda: events_ls()[stale.body["id"]]["status"] == "expired", timeout=10, message="expired")
    alert = next_matching(shown, lambda m: "expired" in m.json()["msg"], timeout=10).json()
    assert alert["level"] == "error"
    assert (
        alert["msg"]
        == f"external event 'signals.btc.long' #{stale.body['id']} from route 'btc' expired (not delivered within 1 s)"
    )
    assert events_ls()[stale.body["id"]]["error"] == "not delivered within 1 s"

    agents.start(mosquitto.url)
    wait_until(lambda: events_ls()[waited.body["id"]]["status"] == "delivered", timeout=20, message="delivered")
    assert events_ls()[waited.body["id"]]["outcomes"] == {f"{HOST}/ex-1": "delivered"}
    # Once, and the expired one never: the next event on the lane proves the console has caught up.
    assert post(hook(receiver, "eth"), b"marker", token=TOKEN, content_type="text/plain").status == 202
    wait_until(alerts(manager, "ex-1", "ALERT signals.eth: marker"), timeout=20)
    log = manager.log_path("ex-1").read_text(errors="replace")
    assert log.count("ALERT signals.eth: wait-for-me") == 1
    assert "too-late" not in log
    audit = [json.loads(line) for line in (manager.paths.home / "audit.log").read_text().splitlines()]
    assert any(e.get("id") == stale.body["id"] and e.get("result") == "expired" for e in audit)


def test_a_target_that_does_not_exist_fails_at_once_and_a_plugin_bot_is_held_while_down(
    mosquitto: Broker, watcher: Watcher, receivers: Receivers
) -> None:
    announce(mosquitto, "h1", "pb", plugin=True, state="stopped")
    got = watcher.watch("hbot/+/external/event/#")
    receiver = receivers.start(mosquitto.url, routes_toml(targets=["h1/nonexistent", "nobot"]))
    missing = post(hook(receiver), b"{}", token=TOKEN)
    wait_until(lambda: events_ls()[missing.body["id"]]["status"] == "failed", message="failed at once")
    assert events_ls()[missing.body["id"]]["error"] == (
        "h1/nonexistent: no instance matches h1/nonexistent; nobot: no instance matches nobot"
    )
    receivers.close()
    receiver = receivers.start(mosquitto.url, routes_toml(targets=["h1/pb"]))
    held = post(hook(receiver), b'{"side":"buy"}', token=TOKEN)
    wait_until(lambda: events_ls()[held.body["id"]]["status"] == "waiting", message="held: the bot is down")
    assert got.empty()
    announce(mosquitto, "h1", "pb", plugin=True, state="running")
    assert got.get(timeout=10).json()["data"] == {"side": "buy"}
    wait_until(lambda: events_ls()[held.body["id"]]["status"] == "published", message="published")


def test_with_a_secret_only_signed_records_expand_a_pattern(
    mosquitto: Broker, watcher: Watcher, receivers: Receivers
) -> None:
    secret = "shared-secret-0123456789"
    for host, name, signed in (("h1", "good", True), ("h1", "forged", False), ("h1", "badsig", True)):
        topic = f"supervisor/{host}/{name}/state"
        record = {"name": name, "host": host, "state": "running", "plugin": True}
        if signed:
            record = sign_record(secret if name == "good" else "another-secret-0123456789", topic, record)
        watcher.publish(topic, json.dumps(record).encode(), retain=True)
    agent = sign_record(secret, "supervisor/h1/agent", {"host": "h1", "state": "online"})
    watcher.publish("supervisor/h1/agent", json.dumps(agent).encode(), retain=True)
    got = watcher.watch("hbot/+/external/event/#")
    receiver = receivers.start(mosquitto.url, routes_toml(targets=["h1/*"]), secret=secret)
    sent = post(hook(receiver), b'{"side":"sell"}', token=TOKEN)
    wait_until(lambda: events_ls()[sent.body["id"]]["status"] == "published", message="published to h1/good")
    assert events_ls()[sent.body["id"]]["outcomes"] == {"h1/good": "published"}
    assert [m.topic for m in drain(got)] == ["hbot/good/external/event/signals/btc/long"]


@contextlib.contextmanager
def small_disk(where: Path, size: str = "2m") -> Iterator[Path]:
    """A real, small filesystem (tmpfs; needs root), unmounted however the test ends."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the full-disk test needs root and mount(8)")
        pytest.skip("the full-disk test needs root and mount(8)")
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=700", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem is full."""
    with path.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)


def health(receiver: Receiver) -> tuple[int, dict[str, t.Any]]:
    try:
        with urllib.request.urlopen(f"{receiver.url}healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def test_a_full_disk_stops_sending_says_so_once_and_resumes_without_repeating(
    mosquitto: Broker, watcher: Watcher, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with small_disk(tmp_path / "disk") as disk:
        announce(mosquitto, "h1", "pb", plugin=True, state="stopped")
        (disk / "events.toml").write_text(routes_toml(targets=["h1/pb"]))
        events = load_events_config(disk / "events.toml")
        config = load_agent_config(None, {}, {"url": mosquitto.url, "host_id": "rx"})
        receiver = Receiver(events, config, Journal(disk / "events.sqlite"), audit_path=disk / "audit.log")
        receiver.start()
        try:
            got = watcher.watch("hbot/+/external/event/#")
            shown = watcher.watch("supervisor/h1/pb/events")
            held = post(hook(receiver), b'{"side":"sell"}', token=TOKEN)
            assert held.status == 202
            wait_until(lambda: receiver.journal.get(held.body["id"]).status == "waiting")  # type: ignore[union-attr]
            fill(disk / "filler")
            announce(mosquitto, "h1", "pb", plugin=True, state="running")
            wait_until(lambda: health(receiver)[0] == 503, timeout=10, message="healthz says it cannot record")
            assert "database or disk is full" in health(receiver)[1]["journal"]
            assert got.get(timeout=5).json()["data"] == {"side": "sell"}
            alert = next_matching(shown, lambda m: "held" in m.json()["msg"]).json()
            assert alert["level"] == "error"
            assert alert["msg"].startswith("external events held: the receiver cannot record their delivery (")
            (disk / "filler").unlink()
            wait_until(lambda: receiver.journal.get(held.body["id"]).status == "published", timeout=10)  # type: ignore[union-attr]
            assert health(receiver) == (200, {"ok": True, "broker": True, "journal": "ok"})
            assert drain(got) == []  # published once, never repeated while the journal was full
        finally:
            receiver.close()
    said = [r for r in caplog.records if "cannot record external events" in r.getMessage()]
    assert len(said) == 1
    assert all(r.exc_info is None for r in caplog.records if r.name.startswith("supervisor.events"))


OLD_SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, route TEXT NOT NULL, event TEXT NOT NULL, targets TEXT NOT NULL,
    body BLOB NOT NULL, text INTEGER NOT NULL, digest TEXT NOT NULL, source TEXT, received REAL NOT NULL,
    status TEXT NOT NULL, delivered TEXT NOT NULL DEFAULT '[]', published REAL, error TEXT
);
"""


def test_a_journal_from_before_delivery_tracking_is_listed_and_upgraded(
    mosquitto: Broker, watcher: Watcher, receivers: Receivers, isolated_env: Path
) -> None:
    path = isolated_env / "events.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(OLD_SCHEMA)
        db.execute(
            "INSERT INTO events (route, event, targets, body, text, digest, received, status) "
            "VALUES ('btc', 'signals.btc.long', '[\"h1/mm-1\"]', ?, 0, 'x', ?, 'queued')",
            (b'{"old":1}', time.time()),
        )
    assert events_ls()[1]["status"] == "queued"
    announce(mosquitto, "h1", "mm-1")
    got = watcher.watch("hbot/+/external/event/#")
    receivers.start(mosquitto.url, routes_toml())
    assert got.get(timeout=10).json()["data"] == {"old": 1}
    wait_until(lambda: events_ls()[1]["status"] == "published")


def test_an_instance_of_an_agent_that_just_came_online_is_waited_for_not_failed(
    mosquitto: Broker, watcher: Watcher, receivers: Receivers
) -> None:
    """An agent publishes its availability first and its instances' records after: no false 'failed'."""
    record = {"host": "h5", "state": "online", "ts": time.time()}
    watcher.publish("supervisor/h5/agent", json.dumps(record).encode(), retain=True)
    got = watcher.watch("hbot/+/external/event/#")
    receiver = receivers.start(mosquitto.url, routes_toml(targets=["h5/late"]))
    sent = post(hook(receiver), b'{"side":"buy"}', token=TOKEN)
    wait_until(lambda: events_ls()[sent.body["id"]]["status"] == "waiting", message="waiting for the records")
    state = {"name": "late", "host": "h5", "state": "running", "plugin": True}
    watcher.publish("supervisor/h5/late/state", json.dumps(state).encode(), retain=True)
    assert got.get(timeout=10).json()["data"] == {"side": "buy"}
    wait_until(lambda: events_ls()[sent.body["id"]]["status"] == "published")
