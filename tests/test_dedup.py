from __future__ import annotations

from supervisor.mqtt.dedup import Redeliveries
from tests.conftest import Clock


def test_a_dup_flagged_copy_is_a_redelivery_with_the_reply_sent() -> None:
    clock = Clock()
    seen = Redeliveries(clock=clock)
    new, key, cached = seen.check("hbot/ex/start", b"{1}")
    assert (new, cached) == (True, None)
    clock.now += 1
    assert seen.check("hbot/ex/start", b"{1}", dup=True) == (False, key, None)  # still being worked on
    seen.answered(key, b"reply")
    assert seen.check("hbot/ex/start", b"{1}", dup=True) == (False, key, b"reply")
    # Another topic or other bytes are other requests, DUP flag or not.
    assert seen.check("hbot/ex/stop", b"{1}", dup=True)[0]
    assert seen.check("hbot/ex/start", b"{2}", dup=True)[0]


def test_identical_bytes_without_the_dup_flag_are_a_new_request_however_soon() -> None:
    clock = Clock()
    seen = Redeliveries(clock=clock)
    _, key, _ = seen.check("hbot/ex/start", b"{1}")
    seen.answered(key, b"first")
    # start -> stop -> start from one client within a second: the same bytes, a request each time.
    clock.now += 0.1
    assert seen.check("hbot/ex/start", b"{1}") == (True, key, None)
    assert seen.check("hbot/ex/start", b"{1}") == (True, key, None)
    # The broker resends the last one with DUP after a reconnect: not run again.
    seen.answered(key, b"third")
    clock.now += 60
    assert seen.check("hbot/ex/start", b"{1}", dup=True) == (False, key, b"third")


def test_a_dup_flag_on_an_unknown_or_forgotten_request_runs_it() -> None:
    clock = Clock()
    seen = Redeliveries(remember=300.0, clock=clock)
    assert seen.check("hbot/ex/start", b"{1}", dup=True)[0]  # first sight (the agent restarted meanwhile)
    clock.now += 301
    assert seen.check("hbot/ex/start", b"{1}", dup=True)[0]
