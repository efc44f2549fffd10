"""The watchdog's crash policy and the probe, with real bots in a private tmux server.

The watchdog's clock is a settable :class:`~tests.conftest.Clock`, so backoff and
fast-failure windows are stepped through without sleeping; bots die for real.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
import typing as t

import pytest

from supervisor.core.watchdog import UNSETTLED_RECHECK, Change, Incident, Probe, Watchdog
from supervisor.files import locked
from supervisor.states import State
from tests.conftest import RECIPES, Clock, wait_until

if t.TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from supervisor.core.manager import InstanceStatus, Manager

TICKER = str(RECIPES / "ticker.yaml")
CRASHER = str(RECIPES / "crasher.yaml")


def new_ticker(manager: Manager, name: str, origin: Path, *, recipe: str = TICKER) -> int:
    """Create and start instance ``name``; return its bot's pid."""
    manager.new(name, recipe, repo=str(origin))
    manager.start([name])
    pid = manager.status([name])[0].pid
    assert pid is not None
    return pid


def statuses(manager: Manager) -> dict[str, InstanceStatus]:
    return {s.name: s for s in manager.status()}


def wait_state(manager: Manager, name: str, *states: str) -> InstanceStatus:
    def reached() -> InstanceStatus | None:
        status = manager.status([name])[0]
        return status if status.state in states else None

    found: InstanceStatus = wait_until(reached, timeout=15, message=f"{name} to be {'/'.join(states)}")
    return found


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def held_lock(manager: Manager, name: str) -> Iterator[None]:
    """Hold ``name``'s instance lock as another supervisor process would (a real flock on its lock file)."""
    with locked(manager.paths.instance_lock(name)):
        yield


def test_a_killed_bot_is_reported_at_once_and_restarted_after_the_first_backoff_step(
    manager: Manager, bot_origin: Path
) -> None:
    old = new_ticker(manager, "tb", bot_origin)
    clock = Clock()
    incidents: list[Incident] = []
    watchdog = Watchdog(manager, backoff_base=1.0, report=incidents.append, clock=clock)
    assert watchdog.check(statuses(manager)) is False
    assert incidents == []

    kill(old)
    wait_state(manager, "tb", "crashed")
    assert watchdog.check(statuses(manager)) is False  # seen and reported, but its backoff has not run out
    assert [(i.kind, i.name) for i in incidents] == [("down", "tb")]
    assert incidents[0].status is not None and incidents[0].status.state == "crashed"
    clock.now += 0.9
    assert watchdog.check(statuses(manager)) is False
    assert len(incidents) == 1  # the crash is reported once, not at every check

    clock.now += 0.1
    assert watchdog.check(statuses(manager)) is True
    assert [i.kind for i in incidents] == ["down", "restarted"]
    restarted = incidents[1].status
    assert restarted is not None and restarted.is_running and restarted.pid != old
    assert "restart #1" in incidents[1].message
    status = manager.status(["tb"])[0]
    assert (status.state, status.restarts) == ("running", 1)
    kill(t.cast("int", status.pid))


def test_fast_failures_double_the_backoff_then_mark_the_instance_fatal(manager: Manager, bot_origin: Path) -> None:
    manager.new("cr", CRASHER, repo=str(bot_origin))
    clock = Clock()
    incidents: list[Incident] = []
    watchdog = Watchdog(manager, fatal_after=2, backoff_base=1.0, report=incidents.append, clock=clock)
    manager.start(["cr"])
    waits: list[float] = []
    for _ in range(2):
        wait_state(manager, "cr", "crashed")
        assert watchdog.check(statuses(manager)) is False
        assert [i.kind for i in incidents][-1:] == ["down"]
        waited = 0.0
        while not watchdog.check(statuses(manager)):
            clock.now += 0.5
            waited += 0.5
        assert [i.kind for i in incidents][-1:] == ["restarted"]
        waits.append(waited)
        clock.now += 1.0  # each run is short: within the fast-failure window
    assert waits == [1.0, 2.0]

    wait_state(manager, "cr", "crashed")
    assert watchdog.check(statuses(manager)) is True
    fatal = incidents[-1]
    assert fatal.kind == "fatal" and "failed 2 times in a row (last exit code 3); marked fatal" in fatal.message
    assert [i.kind for i in incidents] == ["down", "restarted", "down", "restarted", "fatal"]
    status = manager.status(["cr"])[0]
    assert (status.state, status.restarts) == ("fatal", 2)
    assert status.last_error == fatal.message
    clock.now += 3600
    assert watchdog.check(statuses(manager)) is False  # a fatal instance stays down
    assert len(incidents) == 5


def test_a_bot_that_ran_long_enough_starts_a_new_series(manager: Manager, bot_origin: Path) -> None:
    pid = new_ticker(manager, "tb", bot_origin)
    clock = Clock()
    incidents: list[Incident] = []
    watchdog = Watchdog(manager, fast_failure=30.0, backoff_base=1.0, report=incidents.append, clock=clock)
    for _ in range(2):  # two fast failures: the second waits 2 s
        kill(pid)
        wait_state(manager, "tb", "crashed")
        watchdog.check(statuses(manager))
        clock.now += 2.0
        assert watchdog.check(statuses(manager)) is True
        pid = t.cast("int", t.cast("InstanceStatus", incidents[-1].status).pid)
        clock.now += 1.0
    assert watchdog.failures("tb") == 1

    clock.now += 31.0  # this run outlived the fast-failure window
    watchdog.check(statuses(manager))
    assert watchdog.failures("tb") == 0
    kill(pid)
    wait_state(manager, "tb", "crashed")
    watchdog.check(statuses(manager))
    clock.now += 1.0
    assert watchdog.check(statuses(manager)) is True  # back to the first backoff step
    assert "restart #1" in incidents[-1].message
    kill(t.cast("int", manager.status(["tb"])[0].pid))


def test_after_a_reboot_wanted_bots_come_back_and_stopped_ones_stay_down(
    manager: Manager, bot_origin: Path, tmux_socket: str
) -> None:
    up = new_ticker(manager, "up", bot_origin)
    new_ticker(manager, "down", bot_origin)
    manager.stop(["down"])
    subprocess.run(["tmux", "-L", tmux_socket, "kill-server"], check=False, capture_output=True)
    wait_state(manager, "up", "crashed")
    clock = Clock()
    incidents: list[Incident] = []
    watchdog = Watchdog(manager, backoff_base=0.5, report=incidents.append, clock=clock)

    watchdog.check(statuses(manager))
    clock.now += 0.5
    assert watchdog.check(statuses(manager)) is True

    assert [(i.kind, i.name) for i in incidents] == [("down", "up"), ("restarted", "up")]
    now = statuses(manager)
    assert now["up"].is_running and now["up"].pid != up
    assert (now["down"].state, now["down"].restarts) == ("stopped", 0)
    kill(t.cast("int", now["up"].pid))


def test_an_instance_whose_lock_is_held_is_not_taken_for_crashed(
    manager: Manager, bot_origin: Path, request: pytest.FixtureRequest
) -> None:
    kill(new_ticker(manager, "tb", bot_origin))
    wait_state(manager, "tb", "crashed")
    clock = Clock()
    incidents: list[Incident] = []
    watchdog = Watchdog(manager, backoff_base=0.0, report=incidents.append, clock=clock)
    probe = Probe(manager)
    request.addfinalizer(probe.close)

    with held_lock(manager, "tb"):  # a restart's gap between its stop and its start looks like this
        assert watchdog.check(statuses(manager)) is False
        probe.watch(statuses(manager).values())
        assert probe.is_busy("tb")
    assert incidents == []

    assert watchdog.check(statuses(manager)) is True
    assert [i.kind for i in incidents] == ["down", "restarted"]
    kill(t.cast("int", manager.status(["tb"])[0].pid))


def test_a_user_action_starts_the_failure_count_over(manager: Manager, bot_origin: Path) -> None:
    pid = new_ticker(manager, "tb", bot_origin)
    clock = Clock()
    incidents: list[Incident] = []
    watchdog = Watchdog(manager, backoff_base=1.0, report=incidents.append, clock=clock)
    kill(pid)
    wait_state(manager, "tb", "crashed")
    watchdog.check(statuses(manager))
    clock.now += 1.0
    assert watchdog.check(statuses(manager)) is True
    kill(t.cast("int", manager.status(["tb"])[0].pid))
    wait_state(manager, "tb", "crashed")
    watchdog.check(statuses(manager))
    assert watchdog.failures("tb") == 1

    watchdog.forget("tb")  # what the agent does after a person's start, stop or restart
    manager.stop(["tb"])
    assert watchdog.check(statuses(manager)) is False
    assert watchdog.failures("tb") == 0
    assert [i.kind for i in incidents] == ["down", "restarted", "down"]


def test_sessions_that_lost_their_record_are_reported_once(manager: Manager, bot_origin: Path) -> None:
    pid = new_ticker(manager, "lost", bot_origin)
    incidents: list[Incident] = []
    watchdog = Watchdog(manager, report=incidents.append)
    assert watchdog.find_orphans() == []
    manager.paths.registry.unlink()

    assert watchdog.find_orphans() == ["sup-lost"]
    assert watchdog.find_orphans() == ["sup-lost"]
    [incident] = incidents
    assert (incident.kind, incident.name) == ("orphan", "lost")
    assert incident.message.startswith("session 'sup-lost' runs without a record, so nothing supervises it")
    kill(pid)


def test_console_logs_past_their_limit_are_rotated_by_the_check(manager: Manager, bot_origin: Path) -> None:
    manager.new("tb", TICKER, repo=str(bot_origin))
    log = manager.console_log("tb")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:
        handle.truncate(10 * 1024 * 1024 + 1)
    watchdog = Watchdog(manager, rotate_interval=3600.0)

    watchdog.check(statuses(manager))

    assert log.stat().st_size == 0
    assert log.with_name("console.log.1").stat().st_size == 10 * 1024 * 1024 + 1


def test_the_probe_sees_a_kill_a_registry_write_and_a_console_line(
    manager: Manager, bot_origin: Path, request: pytest.FixtureRequest
) -> None:
    pid = new_ticker(manager, "tb", bot_origin)
    manager.new("other", TICKER, repo=str(bot_origin))
    clock = Clock()
    probe = Probe(manager, clock=clock)
    request.addfinalizer(probe.close)
    probe.watch_registry()
    probe.watch(statuses(manager).values())
    assert not probe.changes()

    kill(pid)
    change = wait_until(probe.changes, message="the kill to be seen")
    assert (change.everything, change.names) == (False, frozenset({"tb"}))
    wait_state(manager, "tb", "crashed")
    probe.watch(statuses(manager).values())
    assert not probe.changes()

    manager.mark("other", last_error="a registry write, as a CLI start or stop makes")
    assert probe.changes() == Change(names=frozenset({"other"}))  # only the record that changed
    assert not probe.changes()
    good = manager.paths.registry.read_bytes()
    manager.paths.registry.write_text("{not json")
    assert probe.changes().everything  # unreadable: the full look reports it
    manager.paths.registry.write_bytes(good)
    assert probe.changes() == Change(everything=False, names=frozenset())  # the same records again

    # Looks taken while a bot comes up (states set by hand: a real start passes through them too fast).
    stopped = manager.status(["other"])[0]
    probe.watch([dataclasses.replace(stopped, state=State.WAITING_LOGIN)])
    assert not probe.changes()
    log = manager.console_log("other")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write("login: ok\nbot ready\n")
    assert probe.changes().names == {"other"}  # its console grew: the ready line may be there

    probe.watch([dataclasses.replace(stopped, state=State.STARTING)])  # a session without a process yet
    clock.now += UNSETTLED_RECHECK
    assert probe.changes().names == {"other"}
    assert not probe.changes()  # looked at again only every UNSETTLED_RECHECK seconds
    clock.now += UNSETTLED_RECHECK
    assert probe.changes().names == {"other"}


def test_the_probe_wait_wakes_for_a_bot_that_ends_a_registry_write_and_an_interrupt(
    manager: Manager, bot_origin: Path, request: pytest.FixtureRequest
) -> None:
    pid = new_ticker(manager, "tb", bot_origin)
    probe = Probe(manager)
    request.addfinalizer(probe.close)
    probe.watch_registry()
    probe.watch(statuses(manager).values())
    probe.wait(0.05)  # watching a new pid wakes a wait under way: take that wake now

    def woken_by(event: t.Callable[[], object]) -> bool:
        """Run ``wait(600)`` on a thread, cause ``event``; return whether the wait ended (600 s is far away)."""
        waiter = threading.Thread(target=probe.wait, args=(600.0,), daemon=True)
        waiter.start()
        event()
        waiter.join(10)
        return not waiter.is_alive()

    assert woken_by(lambda: kill(pid))
    assert probe.changes().names == {"tb"}
    wait_state(manager, "tb", "crashed")
    probe.watch(statuses(manager).values())
    probe.wait(0.05)
    assert woken_by(lambda: manager.mark("tb", last_error="a write"))
    assert probe.changes().names == {"tb"}
    assert woken_by(probe.interrupt)
