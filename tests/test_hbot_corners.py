"""The corners of Hummingbot's contract that the agent answers for plugin-less bots (issue 18, item 7)."""

from __future__ import annotations

import typing as t
import uuid

from tests.conftest import wait_until
from tests.test_agent import AgentRunner, Watcher, agents, assert_silent, console, envelope, new_ticker, watchers

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from supervisor.core.manager import Manager
    from tests.conftest import Broker

__all__ = ["agents", "watchers"]  # fixtures, used by name


def test_a_dotted_reply_to_is_answered_on_itself_not_on_slashes(
    manager: Manager, bot_origin: Path, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    new_ticker(manager, "tb", bot_origin, start=True)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    reply_to = f"r.dot.{uuid.uuid4().hex[:8]}"
    slashed = watcher.watch(reply_to.replace(".", "/"))
    data, _ = watcher.request_raw("hbot/tb/status", envelope(reply_to, {"async_backend": False}), reply_to)
    assert data["status"] == 200 and data["msg"].startswith("status: running="), data
    assert_silent(slashed, 0.5)


def test_balance_limit_and_paper_answer_200_with_data_null(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    manager.new("ex", "example-bot")
    manager.start(["ex"])
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    data, raw = watcher.request("hbot/ex/balance/limit", {"exchange": "binance", "asset": "BTC", "amount": 0.1})
    assert (data["status"], data["data"]) == (200, None), data
    assert raw.endswith(b',"data":null}}'), raw
    assert data["msg"] == "Balance limit of BTC on binance: 0.1.", data
    data, _ = watcher.request("hbot/ex/balance/paper", {"asset": "USDT", "amount": 1000})
    assert (data["status"], data["msg"], data["data"]) == (200, "Paper balance of USDT: 1000.0.", None), data


def test_history_days_keeps_only_the_trades_of_the_last_days(
    manager: Manager, mosquitto: Broker, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    manager.new("ex", "example-bot", settings=["interval=0.2"])
    manager.start(["ex"], wait=True)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    data, _ = watcher.request("hbot/ex/start", {"async_backend": False})
    assert data["status"] == 200, data
    wait_until(lambda: "(order ex-2)" in console(manager, "ex"), timeout=15, message="two simulated fills")
    everything, _ = watcher.request("hbot/ex/history", {"days": 0, "async_backend": False})
    assert len(everything["trades"]) >= 2, everything
    recent, _ = watcher.request("hbot/ex/history", {"days": 1, "async_backend": False})
    assert len(recent["trades"]) >= 2, recent
    # A billionth of a day is under 0.1 ms: every fill is older than that.
    none, _ = watcher.request("hbot/ex/history", {"days": 1e-9, "async_backend": False})
    assert (none["status"], none["trades"]) == (200, []), none
