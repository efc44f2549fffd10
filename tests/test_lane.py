"""One ordered lane per bot: requests run one at a time in arrival order, each reply its own command's answer.

Also: identical requests both run, a console answer ends at the prompt, and a plugin
bot's strategy is recorded only from a start its bridge accepted. Real agent, real
mosquitto, real example-bot in tmux, real commlib clients of both generations.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import threading
import typing as t
from pathlib import Path

from supervisor.agent.lane import Lanes
from supervisor.core.manager import Manager
from supervisor.logfiles import is_answered, wait_for_answer
from tests.conftest import Broker, wait_until
from tests.test_agent import (
    BRIDGE_BOT,
    COMMLIB_PAHO_WARNING,
    AgentRunner,
    BotCommands,
    Watcher,
    agents,
    assert_silent,
    bot_commands,
    bridge_origin,
    console,
    envelope,
    next_matching,
    watchers,
)
from tests.test_hbot_clients import COMMLIB011_CLIENT, commlib011_python, new_example

if t.TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["agents", "bot_commands", "bridge_origin", "watchers"]  # fixtures shared with test_agent

STATUS_RUNNING = re.compile(r"Strategy \S+ running for \d+s, ticks \d+\.")


# --- the lanes themselves ------------------------------------------------------------


def test_lanes_run_one_keys_jobs_in_order_one_at_a_time_and_other_keys_alongside() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    lanes = Lanes(pool)
    release = threading.Event()
    b_ran = threading.Event()
    done: list[str] = []
    running: set[str] = set()
    overlap: list[str] = []
    lock = threading.Lock()

    def job(name: str, *, block: bool = False) -> Callable[[], None]:
        def run() -> None:
            with lock:
                if name[0] in {r[0] for r in running}:
                    overlap.append(name)
                running.add(name)
            if block:
                assert release.wait(10)
            if name == "b1":
                b_ran.set()
            with lock:
                running.discard(name)
                done.append(name)

        return run

    try:
        lanes.submit("a", job("a1", block=True))
        for i in range(2, 7):
            lanes.submit("a", job(f"a{i}"))
        lanes.submit("b", job("b1"))
        # b's lane runs while a's first job blocks; a's others wait behind it.
        assert b_ran.wait(10)
        assert not lanes.is_idle("a")
        assert [n for n in done if n.startswith("a")] == []
        release.set()
        wait_until(lambda: lanes.is_idle("a") and lanes.is_idle("b"), timeout=10)
        assert [n for n in done if n.startswith("a")] == ["a1", "a2", "a3", "a4", "a5", "a6"]
        assert overlap == []
    finally:
        release.set()
        pool.shutdown(wait=True)


def test_a_failing_job_does_not_stop_its_lane() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    lanes = Lanes(pool)
    done: list[int] = []

    def boom() -> None:
        msg = "boom"
        raise RuntimeError(msg)

    try:
        lanes.submit("a", boom)
        lanes.submit("a", lambda: done.append(1))
        wait_until(lambda: done == [1], timeout=10)
    finally:
        pool.shutdown(wait=True)


# --- the end of an answer --------------------------------------------------------------


def test_an_answer_is_complete_once_the_prompt_shows_after_the_typed_line() -> None:
    prompt = re.compile(r"example-bot >>> ?")
    assert not is_answered("status\r\n12:00:00 [ex] console command: status\n", "status", prompt)
    assert is_answered("status\r\nNo strategy is currently running!\nexample-bot >>> ", "status", prompt)
    # The prompt before the typed line (or no echo at all) says nothing about this answer.
    assert not is_answered("example-bot >>> 12:00:00 [ex] tick 4\n", "status", prompt)
    # A log line printed right after the new prompt still ends it.
    assert is_answered("status\r\nok\nexample-bot >>> 12:00:01 [ex] tick 5\n", "status", prompt)


def test_waiting_for_an_answer_ends_at_the_prompt_not_at_the_upper_bound(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("example-bot >>> ")
    offset = log.stat().st_size
    result: list[str] = []

    def wait() -> None:
        result.append(wait_for_answer(log, offset, "status", re.compile("example-bot >>> ?"), 600.0))

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    with log.open("a") as handle:
        handle.write("status\r\nNo strategy is currently running!\nexample-bot >>> ")
    waiter.join(60)  # the bound is 600 s: returning at all shows the prompt ended the wait
    assert not waiter.is_alive()
    assert result == ["status\r\nNo strategy is currently running!\nexample-bot >>> "]


# --- one lane per bot, end to end -------------------------------------------------------


def start_strategy_with_fills(manager: Manager, client: BotCommands) -> None:
    reply = client.start()
    assert (reply.status, reply.msg) == (200, "Strategy default started."), reply
    wait_until(lambda: "(order ex-2)" in console(manager, "ex"), timeout=15, message="two simulated fills")


def together(*calls: Callable[[], t.Any]) -> list[t.Any]:
    """Run ``calls`` at the same moment (one thread each, released by one barrier); return their results."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], t.Any]) -> t.Any:
        barrier.wait(10)
        return call()

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


@COMMLIB_PAHO_WARNING
def test_two_commlib_clients_at_once_each_reply_holds_only_its_own_commands_answer(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, bot_commands: Callable[..., BotCommands]
) -> None:
    new_example(manager, "ex")
    agents.start(mosquitto.url)
    first, second = bot_commands(mosquitto, "ex"), bot_commands(mosquitto, "ex")
    start_strategy_with_fills(manager, first)
    for _ in range(5):
        history, status = together(first.history, second.status)
        assert status.status == 200 and STATUS_RUNNING.fullmatch(status.msg), status.msg
        assert history.status == 200 and len(history.trades) >= 2, history
        assert re.fullmatch(r"\d+ trade\(s\), volume [\d.]+, pnl -?[\d.]+\.", history.msg), history.msg
        imported, again = together(lambda: first.import_strategy("cc1"), second.status)
        assert (imported.status, imported.msg) == (200, "Configuration from cc1 file is imported."), imported
        assert again.status == 200 and STATUS_RUNNING.fullmatch(again.msg), again.msg


def test_four_raw_requests_at_once_get_four_answers_each_its_own(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    new_example(manager, "ex")
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    requests: dict[str, dict[str, t.Any]] = {
        "import": {"strategy": "cc4"},
        "status": {"async_backend": False},
        "history": {"async_backend": False},
        "stop": {"async_backend": False},
    }
    queues = {}
    for command in requests:
        queues[command] = watcher.watch(f"r4-{command}")
    for command, data in requests.items():  # back to back: all four are in flight at once
        watcher.client.publish(f"hbot/ex/{command}", envelope(f"r4-{command}", data), qos=1)
    answers = {command: queues[command].get(timeout=20).json()["data"] for command in requests}
    assert answers["import"] == {"status": 200, "msg": "Configuration from cc4 file is imported."}
    assert (answers["status"]["status"], answers["status"]["msg"]) == (400, "No strategy is currently running!")
    assert answers["history"]["status"] == 200 and answers["history"]["msg"].startswith("No trades yet")
    assert answers["stop"] == {"status": 200, "msg": "No strategy is running."}
    for command in requests:
        assert_silent(queues[command], 0.2)


def test_requests_for_one_bot_are_typed_in_the_order_they_arrived(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    new_example(manager, "ex")
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    start_replies = watcher.watch("r-order-start")
    names = [f"s{i}" for i in range(1, 7)]
    for name in names:
        watcher.client.publish("hbot/ex/import", envelope(f"r-order-{name}", {"strategy": name}), qos=1)
    watcher.client.publish("hbot/ex/start", envelope("r-order-start", {"async_backend": False}), qos=1)
    reply = start_replies.get(timeout=30).json()["data"]
    # The start came last, so it starts the last strategy imported.
    assert reply == {"status": 200, "msg": "Strategy s6 started."}, reply
    typed = re.findall(r"console command: (\w+)", console(manager, "ex"))
    assert typed == ["import"] * 6 + ["start"], typed
    imported = re.findall(r"Configuration from (s\d) file is imported", console(manager, "ex"))
    assert imported == names


def test_the_same_request_bytes_again_run_again_start_stop_start(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    """A hand-made client with a fixed reply_to and timestamp sends byte-identical requests: each one runs."""
    new_example(manager, "ex")
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    replies = watcher.watch("r-fixed")
    header = {"reply_to": "r-fixed", "timestamp": 1, "content_type": "json", "encoding": "utf8", "agent": "x"}
    start = json.dumps({"header": header, "data": {"async_backend": False}}).encode()
    stop = start  # the same bytes on another topic
    for topic, payload, expected in (
        ("hbot/ex/start", start, "Strategy default started."),
        ("hbot/ex/stop", stop, "Stopping strategy default: cancelling open orders... done."),
        ("hbot/ex/start", start, "Strategy default started."),
    ):
        watcher.publish(topic, payload)
        assert replies.get(timeout=15).json()["data"] == {"status": 200, "msg": expected}
    status, _ = watcher.request("hbot/ex/status", {"async_backend": False})
    assert status["status"] == 200 and STATUS_RUNNING.fullmatch(status["msg"]), status
    assert console(manager, "ex").count("Strategy default started.") == 2


def test_an_async_start_while_running_and_an_async_status_without_a_strategy_answer_400(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    new_example(manager, "ex")
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    notify = watcher.watch("hbot/ex/notify")
    data, _ = watcher.request("hbot/ex/status", {"async_backend": True})
    assert (data["status"], data["msg"]) == (400, "No strategy is currently running!"), data
    data, _ = watcher.request("hbot/ex/start", {"async_backend": True})
    assert data == {"status": 200, "msg": ""}, data
    assert "Strategy default started." in json.loads(notify.get(timeout=10).payload)["msg"]
    data, _ = watcher.request("hbot/ex/start", {"async_backend": True})
    assert data == {"status": 400, "msg": 'The bot is already running - please run "stop" first'}, data
    data, _ = watcher.request("hbot/ex/status", {"async_backend": True})
    assert (data["status"], data["msg"]) == (200, ""), data


@COMMLIB_PAHO_WARNING
def test_commlib_011_and_013_clients_at_once_each_get_their_own_answer(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, bot_commands: Callable[..., BotCommands]
) -> None:
    python = commlib011_python()
    new_example(manager, "ex")
    agents.start(mosquitto.url)
    modern = bot_commands(mosquitto, "ex")
    start_strategy_with_fills(manager, modern)
    old = subprocess.Popen(
        [str(python), "-c", COMMLIB011_CLIENT, mosquitto.host, str(mosquitto.port), "ex"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert old.stdin is not None and old.stdout is not None

    def old_history() -> dict[str, t.Any]:
        assert old.stdin is not None and old.stdout is not None
        old.stdin.write("history {}\n")
        old.stdin.flush()
        while True:
            line = old.stdout.readline()
            assert line, "the commlib 0.11 client ended"
            if line.startswith("REPLY "):
                reply: dict[str, t.Any] = json.loads(line.removeprefix("REPLY "))
                return reply

    try:
        for _ in range(3):
            history, status = together(old_history, modern.status)
            assert status.status == 200 and STATUS_RUNNING.fullmatch(status.msg), status.msg
            assert history["status"] == 200 and len(history["trades"]) >= 2, history
            assert "running for" not in history["msg"], history["msg"]
    finally:
        old.stdin.close()
        old.terminate()
        old.wait(10)
        old.stdout.close()


# --- a plugin bot's strategy: recorded only from what its bridge accepted ---------------


def test_a_plugin_bots_strategy_is_recorded_only_from_a_start_its_bridge_accepted(
    manager: Manager,
    bridge_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    # The agent learns what the bridge answered by subscribing to the request's reply topic as the request
    # arrives; Hummingbot's bridge answers after ~40 ms, which a loaded machine may not leave the agent. The
    # stand-in answers after 0.3 s here, so the test shows the rule, not the race (the closing note names it).
    settings = [f"mqtt_port={mosquitto.port}", "reply_delay=0.3"]
    manager.new("pb", BRIDGE_BOT, repo=str(bridge_origin), settings=settings)
    manager.start(["pb"], wait=True)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)

    # A retained start is refused by everyone: it records nothing, now or at the agent's next connect.
    watcher.publish("hbot/pb/start", envelope("r-retained", {"conf": "EVILSTRAT.yml"}), retain=True)
    watcher.publish("hbot/pb/start", b"", retain=True)  # cleared again
    # A start the bot refuses (400): nothing ran, so nothing is recorded.
    data, _ = watcher.request("hbot/pb/start", {"conf": "missing.yml", "async_backend": False})
    assert data == {"status": 400, "msg": "No such file: missing.yml"}, data
    # One it accepts is recorded, for the next crash restart.
    data, _ = watcher.request("hbot/pb/start", {"conf": "good.yml", "async_backend": False})
    assert data["status"] == 200, data
    wait_until(lambda: manager.registry.get("pb").strategy == {"conf": "good.yml"}, timeout=10)
    data, _ = watcher.request("hbot/pb/start", {"conf": "missing-2.yml", "async_backend": False})
    assert data["status"] == 400, data
    # The refused start leaves the accepted one on record (checked after a fence: a later accepted stop).
    data, _ = watcher.request("hbot/pb/status", {"async_backend": False})
    assert manager.registry.get("pb").strategy == {"conf": "good.yml"}
    data, _ = watcher.request("hbot/pb/stop", {"async_backend": False})
    assert data["status"] == 200, data
    wait_until(lambda: manager.registry.get("pb").strategy is None, timeout=10)
    audit = manager.paths.audit_log.read_text() if manager.paths.audit_log.exists() else ""
    assert "EVILSTRAT" not in json.dumps(manager.registry.get("pb").strategy) and "r-retained" not in audit


def test_an_own_status_waits_behind_the_bot_command_that_arrived_before_it(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    """An own status while a typed command waits for its answer comes after it, not from the snapshot before it."""
    new_example(manager, "ex")
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    start_replies = watcher.watch("r-busy-start")
    status_replies = watcher.watch("r-busy-status")
    watcher.client.publish("hbot/ex/start", envelope("r-busy-start", {"async_backend": False}), qos=1)
    watcher.client.publish("supervisor/h1/ex/status", envelope("r-busy-status", {}), qos=1)
    start = start_replies.get(timeout=15)
    status = status_replies.get(timeout=15)
    assert start.json()["data"]["status"] == 200
    assert status.at >= start.at, "the own status was answered before the start that came first"
    assert status.json()["data"]["result"]["state"] == "running"


def test_a_request_the_bridge_took_before_it_said_online_runs_once_and_is_answered_once(
    manager: Manager,
    bridge_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    """The bridge listens, then says "online" 3 s later; a status sent in between is the bridge's alone."""
    manager.new("pb", BRIDGE_BOT, repo=str(bridge_origin), settings=[f"mqtt_port={mosquitto.port}", "online_delay=3"])
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    manager.start(["pb"], wait=False)
    wait_until(lambda: "bridge-bot subscribed" in console(manager, "pb"), timeout=15, message="the bridge listens")
    replies = watcher.watch("r-window")
    watcher.publish("hbot/pb/status", envelope("r-window", {"async_backend": False}))
    assert replies.get(timeout=15).json()["data"] == {"status": 200, "msg": "bridge status"}
    wait_until(lambda: "bridge-bot bridge connected" in console(manager, "pb"), timeout=15, message="online")
    assert_silent(replies, 2.0)  # the grace after "online" has passed: no copy went out
    assert console(manager, "pb").count("bridge answered status") == 1


# --- a slow or busy console: no answer is ever another's --------------------------------


def bot_pid(manager: Manager, name: str) -> int:
    pid = manager.status([name])[0].pid
    assert pid is not None
    return pid


def test_a_bot_slower_than_reply_wait_gets_no_200_and_its_late_answer_lands_in_no_other_reply(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    new_example(manager, "ex")
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    data, _ = watcher.request("hbot/ex/start", {"async_backend": False})
    assert data["status"] == 200, data
    pid = bot_pid(manager, "ex")
    queues = {name: watcher.watch(f"r-slow-{name}") for name in ("stop", "import")}
    os.kill(pid, signal.SIGSTOP)  # a stop that takes seconds (cancelling orders), as the bot sees it
    try:
        watcher.client.publish("hbot/ex/stop", envelope("r-slow-stop", {"async_backend": False}), qos=1)
        watcher.client.publish("hbot/ex/import", envelope("r-slow-import", {"strategy": "after1"}), qos=1)
        stopped = queues["stop"].get(timeout=15).json()["data"]
        imported = queues["import"].get(timeout=15).json()["data"]
    finally:
        os.kill(pid, signal.SIGCONT)
    # Never a 200 for an answer that did not come; the import was not typed into the stuck console.
    assert stopped["status"] == 504 and "did not finish answering" in stopped["msg"], stopped
    assert imported["status"] == 503 and "has not answered" in imported["msg"], imported
    # Once the bot answers, the next command's reply holds its own answer only.
    wait_until(lambda: "cancelling open orders... done." in console(manager, "ex"), timeout=10, message="late stop")
    data, _ = watcher.request("hbot/ex/status", {"async_backend": False})
    assert (data["status"], data["msg"]) == (400, "No strategy is currently running!"), data
    assert "after1" not in console(manager, "ex")


def test_a_line_sent_or_an_event_typed_just_before_a_command_stays_out_of_its_reply(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    manager.new("ex", "example-bot", settings=["interval=0.02"])  # many fills: a long history
    manager.start(["ex"], wait=True)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    data, _ = watcher.request("hbot/ex/start", {"async_backend": False})
    assert data["status"] == 200, data
    wait_until(lambda: "(order ex-30)" in console(manager, "ex"), timeout=20, message="thirty fills")
    for _ in range(3):
        replies = watcher.watch("r-after-send")
        watcher.client.publish("supervisor/h1/ex/send", envelope("r-sent", {"text": "history"}), qos=1)
        watcher.client.publish("hbot/ex/status", envelope("r-after-send", {"async_backend": False}), qos=1)
        data = replies.get(timeout=15).json()["data"]
        assert data["status"] == 200 and STATUS_RUNNING.fullmatch(data["msg"]), data["msg"][:300]
        replies = watcher.watch("r-after-event")
        watcher.client.publish("hbot/ex/external/event/ev", json.dumps({"data": {"x": 1}}).encode(), qos=1)
        watcher.client.publish("hbot/ex/import", envelope("r-after-event", {"strategy": "a"}), qos=1)
        data = replies.get(timeout=15).json()["data"]
        assert data == {"status": 200, "msg": "Configuration from a file is imported."}, data


def test_values_that_would_be_several_console_arguments_and_huge_days_are_answered_sanely(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    new_example(manager, "ex")
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    data, _ = watcher.request("hbot/ex/start", {"async_backend": False, "script": "a.py --conf evil.yml"})
    assert data["status"] == 400 and "must be a file name" in data["msg"], data
    data, _ = watcher.request("hbot/ex/import", {"strategy": "good.yml extra"})
    assert data["status"] == 400 and "must be a file name" in data["msg"], data
    assert "evil" not in console(manager, "ex") and "good.yml" not in console(manager, "ex")
    data, _ = watcher.request("hbot/ex/history", {"days": 1e306, "async_backend": False})
    assert (data["status"], data["trades"]) == (200, []), data


def test_one_stuck_bot_takes_a_bounded_share_and_the_other_bots_are_served(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    new_example(manager, "ex1")
    new_example(manager, "ex2")
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    flood = watcher.watch("r-flood")
    pid = bot_pid(manager, "ex1")
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(64):
            watcher.client.publish("hbot/ex1/status", envelope("r-flood", {"async_backend": False}), qos=1)
        busy = next_matching(flood, lambda m: m.json()["data"]["status"] == 503, timeout=15).json()["data"]
        assert "requests for 'ex1' are waiting" in busy["msg"], busy
        # Another bot is answered while ex1's lane is full.
        data, _ = watcher.request("hbot/ex2/status", {"async_backend": False})
        assert (data["status"], data["msg"]) == (400, "No strategy is currently running!"), data
        data, _ = watcher.request("supervisor/h1/ex2/restart", {})
        assert data["status"] == 200, data
    finally:
        os.kill(pid, signal.SIGCONT)
