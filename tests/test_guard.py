"""The agent's guard rails: clipping stranger text, bounded refusal logging, command-topic detection, audit rotation."""

from __future__ import annotations

import json
import logging
import typing as t
from pathlib import Path

import pytest

from supervisor.audit import AuditLog, clip
from supervisor.mqtt.guard import ClipFilter, RefusalLog, is_command_topic
from tests.conftest import Clock


def test_clip_keeps_short_text_and_notes_the_length_of_long_text() -> None:
    assert clip("abc") == "abc"
    long = "x" * 70_000
    clipped = clip(long)
    assert len(clipped) < 250 and clipped.startswith("x" * 200) and "[70000 chars]" in clipped


def test_clip_filter_cuts_any_log_message(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.clip")
    log.addFilter(ClipFilter(limit=100))
    try:
        with caplog.at_level(logging.INFO, logger="test.clip"):
            log.info("topic %s", "t" * 65_000)
    finally:
        log.filters.clear()
    [record] = caplog.records
    assert len(record.getMessage()) < 150 and "[65006 chars]" in record.getMessage()


def test_refusals_cost_a_bounded_number_of_lines_whatever_their_number(caplog: pytest.LogCaptureFixture) -> None:
    audited: list[dict[str, t.Any]] = []
    clock = Clock()
    refusals = RefusalLog(lambda **entry: audited.append(entry), burst=5, interval=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="supervisor.mqtt.guard"):
        for i in range(1000):
            refusals.refuse("malformed" if i % 2 else "unauthorized", "supervisor/h1/" + "x" * 60_000, "y" * 60_000)
        assert len(caplog.records) == 5
        assert len(audited) == 5
        clock.now += 61
        refusals.flush()
    assert len(caplog.records) == 6
    summary = caplog.records[-1].getMessage()
    assert "refused 995 more requests" in summary and "malformed 498" in summary and "unauthorized 497" in summary
    assert audited[-1]["reason"] == "summary"
    assert refusals.total == {"malformed": 500, "unauthorized": 500}
    assert all(len(r.getMessage()) < 600 for r in caplog.records)
    # The next interval logs individual refusals again.
    refusals.refuse("retained", "t", "d")
    assert len(caplog.records) == 7


class TopicCase(t.NamedTuple):
    test_id: str
    topic: str
    command: bool


TOPICS = [
    TopicCase("own-instance-verb", "supervisor/h1/mm-1/stop", True),
    TopicCase("other-host-verb", "supervisor/otherhost/x/stop", True),
    TopicCase("host-verb", "supervisor/h2/list", True),
    TopicCase("agent-record", "supervisor/h2/agent", True),
    TopicCase("state-record", "supervisor/h2/x/state", True),
    TopicCase("hbot-stop", "hbot/x/stop", True),
    TopicCase("hbot-balance", "hbot/x/balance/limit", True),
    TopicCase("commlib-reply", "rpc-849f7f8779aa4eabb9dae3aee44a6016", False),
    TopicCase("fleet-reply", "supervisor-fleet/abc/def", False),
    TopicCase("hummingbot-api", "hummingbot-api/response/x", False),
    # Anything under a bot is its own: an event typed into its console, its beats, its streams.
    TopicCase("hbot-external-event", "hbot/x/external/event/buy", True),
    TopicCase("hbot-heartbeat", "hbot/x/hb", True),
    TopicCase("hbot-status-updates", "hbot/x/status_updates", True),
    TopicCase("hbot-log", "hbot/x/log", True),
    TopicCase("hbot-unknown-suffix", "hbot/x/replies", True),
    TopicCase("hbot-alone", "hbot", False),
    TopicCase("hbot-like", "hbotx/y/stop", False),
]


@pytest.mark.parametrize("case", TOPICS, ids=[c.test_id for c in TOPICS])
def test_command_topics_are_recognised(case: TopicCase) -> None:
    assert is_command_topic(case.topic, "hbot", "supervisor") is case.command


def test_the_audit_log_clips_stranger_text_and_rotates_past_its_cap(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "audit.log"
    audit = AuditLog(path, max_bytes=10_000, keep=2)
    for _ in range(200):
        audit.record(topic="supervisor/h1/" + "x" * 65_000, result=400, msg="y" * 10_000)
    entry = json.loads(path.read_text().splitlines()[-1])
    assert entry["topic"].endswith("[65014 chars]") and len(entry["topic"]) < 250
    files = sorted(p.name for p in folder.iterdir())
    # The empty lock file is what lets the agent and the events receiver rotate the same log.
    assert files == [".audit.log.lock", "audit.log", "audit.log.1", "audit.log.2"]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 3 * 11_000
