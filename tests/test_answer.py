from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

from supervisor.agent.answer import LineMapper, read_answer, read_trades, strip_prompt, value_of
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


def test_trades_are_the_lines_matching_the_pattern_with_typed_fields() -> None:
    lines = [
        "trade id=ex-1 symbol=EXAMPLE-USDT trade_type=BUY price=100.3 amount=0.5 timestamp=1795969477000",
        "1 trade(s), volume 50.15, pnl -0.0050.",
    ]
    trades, rest = read_trades(lines, EXAMPLE.console.trades)
    assert trades == [
        {
            "exchange_trade_id": "ex-1",
            "symbol": "EXAMPLE-USDT",
            "trade_type": "BUY",
            "price": 100.3,
            "amount": 0.5,
            "timestamp": 1795969477000,
        }
    ]
    assert rest == lines[1:]
    assert read_trades(lines, None) == ([], lines)


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
