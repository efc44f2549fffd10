from __future__ import annotations

import json
from pathlib import Path

from supervisor.agent.stream import ConsoleStream
from supervisor.core.recipe import find_recipe
from tests.conftest import Clock

EXAMPLE = find_recipe("example-bot", Path("/nonexistent"))


def follow(tmp_path: Path) -> tuple[ConsoleStream, Path, list[tuple[str, dict[str, object]]], Clock]:
    published: list[tuple[str, dict[str, object]]] = []
    clock = Clock(1795969477.25)
    stream = ConsoleStream(lambda topic, payload: published.append((topic, json.loads(payload))), "hbot", clock=clock)
    log = tmp_path / "console.log"
    log.write_text("old line, printed before the agent looked\n")
    assert stream.poll("ex", log, EXAMPLE) == 0
    return stream, log, published, clock


def append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def test_new_console_lines_go_out_as_log_records_in_hummingbots_shape(tmp_path: Path) -> None:
    stream, log, published, _ = follow(tmp_path)
    append(log, "example-bot >>> 16:20:01 [ex] tick 4 (idle)\n\x1b[1mNo strategy is currently running!\x1b[0m\r\n")
    append(log, "example-bot >>> half a li")
    assert stream.poll("ex", log, EXAMPLE) == 2
    assert published == [
        (
            "hbot/ex/log",
            {
                "timestamp": 1795969477.25,
                "msg": "16:20:01 [ex] tick 4 (idle)",
                "level_no": 20,
                "level_name": "INFO",
                "logger_name": "example-bot.console",
            },
        ),
        (
            "hbot/ex/log",
            {
                "timestamp": 1795969477.25,
                "msg": "No strategy is currently running!",
                "level_no": 40,
                "level_name": "ERROR",
                "logger_name": "example-bot.console",
            },
        ),
    ]
    published.clear()
    append(log, "ne\n")
    stream.poll("ex", log, EXAMPLE)
    assert [m["msg"] for _, m in published] == ["half a line"]


def test_recipe_patterns_add_events_and_performance(tmp_path: Path) -> None:
    stream, log, published, _ = follow(tmp_path)
    append(log, "16:20:02 [ex] filled BUY 0.5 EXAMPLE-USDT @ 100.3 (order ex-1)\n")
    append(log, "16:20:02 [ex] tick 3 (running default) pnl=-0.0050 volume=50.15\n")
    stream.poll("ex", log, EXAMPLE)
    assert [topic for topic, _ in published] == ["hbot/ex/events", "hbot/ex/log", "hbot/ex/performance", "hbot/ex/log"]
    assert published[0][1]["type"] == "OrderFilled"
    assert published[2][1] == {
        "default": {"performance": {"global_pnl_quote": -0.005, "volume_traded": 50.15}, "custom_info": {}}
    }


def test_log_lines_over_the_rate_are_counted_not_published(tmp_path: Path) -> None:
    stream, log, published, clock = follow(tmp_path)
    append(log, "".join(f"line {i}\n" for i in range(100)))
    stream.poll("ex", log, EXAMPLE)
    assert [m["msg"] for _, m in published] == [f"line {i}" for i in range(20)]  # log_rate 20: one second's worth
    published.clear()
    clock.now += 1.0
    append(log, "line 100\n")
    stream.poll("ex", log, EXAMPLE)
    assert published[0][1]["msg"] == "80 console line(s) not published on hbot/ex/log (over 20/s)"
    assert published[0][1]["level_name"] == "WARNING"
    assert published[1][1]["msg"] == "line 100"


def test_a_rotated_log_is_read_from_its_start_and_forget_starts_over(tmp_path: Path) -> None:
    stream, log, published, _ = follow(tmp_path)
    log.write_text("after rotation\n")  # shorter than what was read: rotated (copy-and-truncate)
    stream.poll("ex", log, EXAMPLE)
    assert [m["msg"] for _, m in published] == ["after rotation"]
    stream.follow([])
    append(log, "not published: following starts again at the end\n")
    assert stream.poll("ex", log, EXAMPLE) == 0
    assert len(published) == 1
