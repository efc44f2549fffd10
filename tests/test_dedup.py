from __future__ import annotations

from supervisor.mqtt.dedup import Redeliveries
from tests.conftest import Clock


def test_the_same_bytes_within_the_window_are_a_redelivery_with_the_reply_sent() -> None:
    clock = Clock()
    seen = Redeliveries(window=5.0, clock=clock)
    new, key, cached = seen.check("hbot/ex/start", b"{1}")
    assert (new, cached) == (True, None)
    clock.now += 1
    assert seen.check("hbot/ex/start", b"{1}") == (False, key, None)  # still being worked on
    seen.answered(key, b"reply")
    assert seen.check("hbot/ex/start", b"{1}") == (False, key, b"reply")
    # Another topic or other bytes are other requests.
    assert seen.check("hbot/ex/stop", b"{1}")[0]
    assert seen.check("hbot/ex/start", b"{2}")[0]


def test_a_later_identical_request_is_new_but_a_dup_flagged_one_is_not() -> None:
    clock = Clock()
    seen = Redeliveries(window=5.0, remember=300.0, clock=clock)
    _, key, _ = seen.check("hbot/ex/start", b"{1}")
    seen.answered(key, b"first")
    clock.now += 60
    # The broker resends with DUP after a reconnect: the same request, not run again.
    assert seen.check("hbot/ex/start", b"{1}", dup=True) == (False, key, b"first")
    # A client sends the same bytes again a minute later (start -> stop -> start): run it.
    new, again, cached = seen.check("hbot/ex/start", b"{1}")
    assert (new, again, cached) == (True, key, None)
    # ...and the window starts again from this delivery.
    clock.now += 1
    assert not seen.check("hbot/ex/start", b"{1}")[0]


def test_a_dup_flag_on_an_unknown_or_forgotten_request_runs_it() -> None:
    clock = Clock()
    seen = Redeliveries(window=5.0, remember=300.0, clock=clock)
    assert seen.check("hbot/ex/start", b"{1}", dup=True)[0]  # first sight (the agent restarted meanwhile)
    clock.now += 301
    assert seen.check("hbot/ex/start", b"{1}", dup=True)[0]
