from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

from supervisor.agent.answer import (
    TRADE_KEYS,
    LineMapper,
    read_answer,
    read_trades,
    recent_trades,
    strip_prompt,
    trade_record,
    value_of,
)
from supervisor.core.recipe import Answer, find_recipe

EXAMPLE = find_recipe("example-bot", Path("/nonexistent"))
RULES = EXAMPLE.console.answer


class Case(t.NamedTuple):
    test_id: str
    captured: str
    lines: tuple[str, ...]
    error: bool


# What example-bot's console shows after a command (echo already removed by the manager).
CASES = [
    Case(
        "answer-among-ticks",
        "16:20:01 [ex] console command: start\n16:20:01 [ex] tick 4 (idle)\nStrategy default started.\nexample-bot >>>",
        ("Strategy default started.",),
        False,
    ),
    Case(
        "tick-after-a-prompt",
        "example-bot >>> 16:20:02 [ex] tick 5 (running default) pnl=0.0100 volume=50.00\n"
        'The bot is already running - please run "stop" first\nexample-bot >>> ',
        ('The bot is already running - please run "stop" first',),
        True,
    ),
    Case("error-status", "No strategy is currently running!\n", ("No strategy is currently running!",), True),
    Case("stop-without-strategy", "No strategy is running.", ("No strategy is running.",), False),
    Case("only-noise", "16:20:03 [ex] tick 6 (idle)\nexample-bot >>>", (), False),
]


@pytest.mark.parametrize("case", CASES, ids=[c.test_id for c in CASES])
def test_the_answer_leaves_out_prompt_and_noise_and_tells_errors(case: Case) -> None:
    answer = read_answer(case.captured, RULES)
    assert (answer.lines, answer.error) == (case.lines, case.error)


def test_without_rules_every_line_is_the_answer() -> None:
    answer = read_answer(">>> tick 1\nstatus: running=False\n", Answer())
    assert answer.text == ">>> tick 1\nstatus: running=False"
    assert not answer.error


def test_strip_prompt_removes_repeated_prompts_only_at_the_start() -> None:
    assert strip_prompt("example-bot >>> example-bot >>> hi >>> x", RULES.prompt) == "hi >>> x"
    assert strip_prompt("  plain  ", None) == "plain"


def test_trades_are_the_lines_matching_the_pattern_in_hummingbots_keys_and_types() -> None:
    # example-bot prints its fills oldest first; Hummingbot's history lists them newest first.
    lines = [
        (
            "trade id=ex-1 market=example_exchange symbol=EXAMPLE-USDT trade_type=BUY price=100.3 amount=0.5 "
            "timestamp=1795969477000"
        ),
        (
            "trade id=ex-2 market=example_exchange symbol=EXAMPLE-USDT trade_type=SELL price=101 amount=0.5 "
            "timestamp=1795969478000"
        ),
        "2 trade(s), volume 100.65, pnl 0.0200.",
    ]
    trades, rest = read_trades(lines, EXAMPLE.console.trades)
    # The keys, order and types of Hummingbot 2.16's TradeFill.to_bounty_api_json.
    assert trades == [
        {
            "market": "example_exchange",
            "trade_id": "ex-2",
            "price": "101.",
            "quantity": "0.5",
            "symbol": "EXAMPLE-USDT",
            "trade_timestamp": 1795969478000,
            "trade_type": "SELL",
            "base_asset": "EXAMPLE",
            "quote_asset": "USDT",
            "raw_json": {"trade_fee": None},
        },
        {
            "market": "example_exchange",
            "trade_id": "ex-1",
            "price": "100.3",
            "quantity": "0.5",
            "symbol": "EXAMPLE-USDT",
            "trade_timestamp": 1795969477000,
            "trade_type": "BUY",
            "base_asset": "EXAMPLE",
            "quote_asset": "USDT",
            "raw_json": {"trade_fee": None},
        },
    ]
    assert [list(trade) for trade in trades] == [list(TRADE_KEYS)] * 2
    assert rest == lines[2:]
    assert read_trades(lines, None) == ([], lines)


class TradeCase(t.NamedTuple):
    test_id: str
    fields: dict[str, str]
    expected: dict[str, t.Any]


TRADE_CASES = [
    # Hummingbot writes numbers with numpy's format_float_positional: no exponent, a trailing "." for whole ones.
    TradeCase("whole", {"price": "100", "quantity": "2.000"}, {"price": "100.", "quantity": "2."}),
    TradeCase("tiny", {"price": "1e-7", "quantity": "0.00001"}, {"price": "0.0000001", "quantity": "0.00001"}),
    TradeCase("digits-id", {"trade_id": "12345"}, {"trade_id": "12345"}),  # a text column: stays a string
    TradeCase("assets", {"symbol": "BTC-USDT", "base_asset": "XBT"}, {"base_asset": "XBT", "quote_asset": "USDT"}),
    TradeCase("no-dash", {"symbol": "BTCUSDT"}, {"base_asset": None, "quote_asset": None}),
    TradeCase("fee", {"trade_fee": '{"percent": "0.001"}'}, {"raw_json": {"trade_fee": {"percent": "0.001"}}}),
    TradeCase("missing", {}, {"market": None, "price": None, "trade_timestamp": None}),
    TradeCase("extra", {"order_id": "o-7", "leverage": "5"}, {"order_id": "o-7", "leverage": 5}),
]


@pytest.mark.parametrize("case", TRADE_CASES, ids=[case.test_id for case in TRADE_CASES])
def test_trade_record(case: TradeCase) -> None:
    record = trade_record(case.fields)
    assert list(record)[: len(TRADE_KEYS)] == list(TRADE_KEYS)
    assert {key: record[key] for key in case.expected} == case.expected


def test_recent_trades_keeps_the_last_days_as_hummingbot_does() -> None:
    now = 1_800_000_000.0
    day_ms = 86_400_000
    trades: list[dict[str, t.Any]] = [
        {"trade_id": "new", "trade_timestamp": int(now * 1000) - 1000},
        {"trade_id": "edge", "trade_timestamp": int(now * 1000) - day_ms},
        {"trade_id": "old", "trade_timestamp": int(now * 1000) - day_ms - 1},
        {"trade_id": "ageless", "trade_timestamp": None},
    ]
    assert [t["trade_id"] for t in recent_trades(trades, 1, now=now)] == ["new", "edge"]
    assert [t["trade_id"] for t in recent_trades(trades, 0.5, now=now)] == ["new"]
    assert [t["trade_id"] for t in recent_trades(trades, 0, now=now)] == ["new", "edge", "old", "ageless"]
    assert [t["trade_id"] for t in recent_trades(trades, -3, now=now)] == ["new", "edge", "old", "ageless"]


@pytest.mark.parametrize(
    ("text", "value"), [("12", 12), ("-3", -3), ("0.5", 0.5), ("1e3", 1000.0), ("ex-1", "ex-1"), ("1.2.3", "1.2.3")]
)
def test_value_of_reads_numbers(text: str, value: object) -> None:
    assert value_of(text) == value and type(value_of(text)) is type(value)


def test_line_mapper_makes_events_and_performance() -> None:
    mapper = LineMapper(EXAMPLE.mqtt, "ex")
    fill = "16:20:04 [ex] filled SELL 0.5 EXAMPLE-USDT @ 100.6 (order ex-2)"
    assert mapper.events(fill, 1795969477.9) == [
        {
            "timestamp": 1795969477,
            "type": "OrderFilled",
            "data": {
                "trade_type": "SELL",
                "amount": 0.5,
                "trading_pair": "EXAMPLE-USDT",
                "price": 100.6,
                "order_id": "ex-2",
            },
        }
    ]
    assert mapper.performance(fill) is None
    tick = "16:20:04 [ex] tick 6 (running conf_a) pnl=-0.0050 volume=50.15"
    assert mapper.performance(tick) == {
        "conf_a": {"performance": {"global_pnl_quote": -0.005, "volume_traded": 50.15}, "custom_info": {}}
    }
    assert mapper.events(tick, 0) == []
