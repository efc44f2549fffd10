"""supervisor.core.metrics against real process trees: bash -> python bot -> child."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import typing as t
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from supervisor.core import metrics
from supervisor.core.metrics import ProcessTable, Sampler
from tests.conftest import wait_until

if t.TYPE_CHECKING:
    from collections.abc import Iterator

MIB = 2**20
ALLOC = 30 * MIB

# The "bot": allocates (and touches) ballast, starts one sleeping child, reports
# "<own pid> <child pid>" in the ready file, burns CPU for a while, then sleeps.
BOT = """
import os, signal, subprocess, sys, time
ready, busy, mib = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
if sys.argv[4] == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
ballast = b"x" * (mib * 2**20)
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(ready + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {kid.pid}")
os.replace(ready + ".tmp", ready)
end = time.monotonic() + busy
while time.monotonic() < end:
    pass
time.sleep(600)
"""

# "$@" is not the last command, so bash forks it instead of exec'ing it and stays
# the root with the bot as its child; `read` then keeps bash alive without a child.
SHELL_WRAPPER = ["bash", "-c", '"$@"; read -r _', "bash"]


class Bot(t.NamedTuple):
    root: int
    pid: int
    child: int
    proc: subprocess.Popen[bytes]


Spawn = t.Callable[..., subprocess.Popen[bytes]]
StartBot = t.Callable[..., Bot]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start processes in their own process group; kill each group at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, cwd=tmp_path, stdin=subprocess.PIPE, start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)  # our own group: pgid == pid
        with contextlib.suppress(Exception):
            if proc.stdin:
                proc.stdin.close()
            proc.wait(5)


@pytest.fixture
def start_bot(spawn: Spawn, tmp_path: Path) -> StartBot:
    """Start the bot, under a bash root or as the root, and wait until it is ready."""

    def start(
        *,
        shell: bool = True,
        busy: float = 0.0,
        mib: int = 0,
        ignore_term: bool = False,
    ) -> Bot:
        ready = tmp_path / f"ready-{uuid.uuid4().hex}"
        argv = [sys.executable, "-c", BOT, str(ready), str(busy), str(mib)]
        argv.append("1" if ignore_term else "0")
        proc = spawn(SHELL_WRAPPER + argv if shell else argv)
        wait_until(ready.exists, timeout=10, message="the bot's ready file")
        pid, child = (int(part) for part in ready.read_text().split())
        return Bot(proc.pid, pid, child, proc)

    return start


def dead_pid() -> int:
    """Return the pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def proc_state(pid: int) -> str:
    """Return the one-letter state from /proc/<pid>/stat ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


class RootCase(t.NamedTuple):
    test_id: str
    shell: bool


ROOT_CASES = [RootCase("shell-root", shell=True), RootCase("bot-root", shell=False)]


@pytest.mark.parametrize("case", ROOT_CASES, ids=[c.test_id for c in ROOT_CASES])
def test_sample_finds_the_bot_and_sums_its_tree(case: RootCase, start_bot: StartBot, tmp_path: Path) -> None:
    bot = start_bot(shell=case.shell, mib=30)
    if case.shell:
        assert bot.pid != bot.root
    else:
        assert bot.pid == bot.root

    sample = Sampler().sample(bot.root)
    child_alone = Sampler().sample(bot.child)

    assert sample.root_pid == bot.root
    assert sample.pid == bot.pid
    assert sample.alive
    assert sample.num_processes == 2  # the bot and its child; never the shell
    assert sample.cmdline is not None
    assert sample.cmdline[:2] == (sys.executable, "-c")
    assert sample.cwd == str(tmp_path)
    assert sample.create_time is not None
    assert time.time() - 60 < sample.create_time <= time.time()
    assert sample.rss is not None
    assert child_alone.rss is not None
    assert child_alone.num_processes == 1
    # The bot's own rss is the ballast plus an interpreter, so this bound holds.
    assert sample.rss >= ALLOC + child_alone.rss


def test_cpu_is_lifetime_average_first_then_interval(start_bot: StartBot) -> None:
    bot = start_bot(busy=60)
    sampler = Sampler()

    first = sampler.sample(bot.root)
    assert first.cpu_mode == "lifetime"
    assert first.cpu_percent is not None
    assert 0 < first.cpu_percent <= 100 * (os.cpu_count() or 1) + 50

    def busy_interval() -> metrics.ProcessSample | None:
        sample = sampler.sample(bot.root)
        return sample if (sample.cpu_percent or 0) > 0 else None

    second = wait_until(busy_interval, message="a non-zero interval cpu figure")
    assert second.cpu_mode == "interval"
    assert Sampler().sample(bot.root).cpu_mode == "lifetime"  # a new Sampler: ps-like


def test_shell_root_without_child_means_bot_not_running(spawn: Spawn) -> None:
    root = spawn(["bash", "-c", "read -r _"]).pid
    wait_until(lambda: ProcessTable().name(root) == "bash")

    sample = Sampler().sample(root)

    assert sample == metrics.ProcessSample(root_pid=root, pid=None, alive=False)


def test_killed_bot_under_shell_is_gone(start_bot: StartBot) -> None:
    bot = start_bot()
    os.kill(bot.pid, signal.SIGKILL)

    sample = wait_until(
        lambda: (s := Sampler().sample(bot.root)).pid is None and s,
        message="bash to reap the killed bot",
    )

    assert not sample.alive
    assert sample.root_pid == bot.root
    assert metrics.is_alive(bot.root)  # the wrapper is still there
    assert not metrics.is_alive(bot.pid)


def test_killed_root_is_gone(start_bot: StartBot) -> None:
    bot = start_bot(shell=False)
    bot.proc.kill()
    bot.proc.wait()

    sample = Sampler().sample(bot.root)

    assert sample == metrics.ProcessSample(root_pid=bot.root, pid=None, alive=False)
    assert not metrics.is_alive(bot.root)
    assert metrics.process_tree(bot.root) == []


def test_no_root_is_gone() -> None:
    assert Sampler().sample(None) == metrics.ProcessSample(None, None, alive=False)
    assert not metrics.is_alive(None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_zombie_counts_as_dead(spawn: Spawn) -> None:
    proc = spawn([sys.executable, "-c", "import time; time.sleep(600)"])
    os.kill(proc.pid, signal.SIGKILL)  # not waited for: it stays a zombie
    wait_until(lambda: proc_state(proc.pid) == "Z", message="a zombie")

    sample = Sampler().sample(proc.pid)

    assert not metrics.is_alive(proc.pid)
    assert sample.pid == proc.pid
    assert not sample.alive
    assert sample.num_processes == 0
    assert metrics.process_tree(proc.pid) == []
    assert metrics.signal_tree(proc.pid, signal.SIGCONT) == 0
    assert metrics.wait_gone([proc.pid], timeout=0) == []
    assert metrics.terminate_tree(proc.pid, timeout=0.5) == "gone"


class CountingSampler(Sampler):
    """Counts table() calls to prove sample_many scans /proc once.

    A spy rather than a stub: it still calls the real table().
    """

    def __init__(self) -> None:
        super().__init__()
        self.tables = 0

    def table(self, roots: Iterable[int] | None = None) -> ProcessTable:
        self.tables += 1
        return super().table(roots)


def test_sample_many_uses_one_table(start_bot: StartBot) -> None:
    shell_bot = start_bot(shell=True)
    plain_bot = start_bot(shell=False)
    gone = dead_pid()
    sampler = CountingSampler()
    roots = {"a": shell_bot.root, "b": plain_bot.root, "c": None, "d": gone}

    samples = sampler.sample_many(roots)

    assert sampler.tables == 1
    assert list(samples) == ["a", "b", "c", "d"]
    assert samples["a"].pid == shell_bot.pid
    assert samples["a"].alive
    assert samples["b"].pid == plain_bot.pid
    assert samples["b"].alive
    assert samples["c"] == metrics.ProcessSample(None, None, alive=False)
    assert samples["d"] == metrics.ProcessSample(gone, None, alive=False)

    table = sampler.table()
    sampler.sample_many(roots, table=table)
    sampler.sample(shell_bot.root, table=table)
    assert sampler.tables == 2  # the given table was used, not a new scan


def test_sampler_keeps_processes_and_drops_dead_ones(start_bot: StartBot) -> None:
    bot = start_bot()
    sampler = Sampler()

    assert sampler.sample(bot.root).num_processes == 2
    assert {bot.pid, bot.child} <= sampler.tracked_pids
    assert bot.root not in sampler.tracked_pids  # the shell is not measured

    # The bot never reaps its child, so the child turns zombie: dead, not counted.
    os.kill(bot.child, signal.SIGKILL)
    sample = wait_until(
        lambda: (s := sampler.sample(bot.root)).num_processes == 1 and s,
        message="the killed child to drop out of the tree",
    )
    assert sample.alive
    assert bot.child not in sampler.tracked_pids
    assert bot.pid in sampler.tracked_pids


def test_reused_pid_gets_a_new_process(start_bot: StartBot) -> None:
    bot = start_bot(shell=False)
    sampler = Sampler()
    assert sampler.sample(bot.root).cpu_mode == "lifetime"
    assert sampler.sample(bot.root).cpu_mode == "interval"

    # Make the kept entry look like it belonged to an earlier process with this pid.
    stale = sampler._entries[bot.pid]
    assert stale.create_time is not None
    sampler._entries[bot.pid] = dataclasses.replace(stale, create_time=stale.create_time - 1000)

    sample = sampler.sample(bot.root)

    assert sample.alive
    assert sample.cpu_mode == "lifetime"  # a fresh baseline, not the stale one
    fresh = sampler._entries[bot.pid]
    assert fresh.process is not stale.process
    assert fresh.create_time == stale.create_time


def test_process_table_maps_parents_and_children(start_bot: StartBot) -> None:
    bot = start_bot()
    table = ProcessTable()

    assert os.getpid() in table
    assert len(table) > 3
    assert table.parent(bot.pid) == bot.root
    assert table.children(bot.root) == [bot.pid]
    assert table.children(bot.pid) == [bot.child]
    assert table.name(bot.root) == "bash"
    assert table.is_alive(bot.pid)
    assert table.tree(bot.root) == [bot.root, bot.pid, bot.child]


def test_process_tree_lists_parents_first(start_bot: StartBot) -> None:
    bot = start_bot()

    assert metrics.process_tree(bot.root) == [bot.root, bot.pid, bot.child]
    assert metrics.process_tree(bot.pid) == [bot.pid, bot.child]
    assert metrics.process_tree(dead_pid()) == []


def test_signal_tree_reaches_every_process(start_bot: StartBot) -> None:
    bot = start_bot()

    assert metrics.signal_tree(bot.root, signal.SIGCONT) == 3  # harmless signal
    assert metrics.signal_tree(dead_pid(), signal.SIGCONT) == 0


class TerminateCase(t.NamedTuple):
    test_id: str
    ignore_term: bool
    expected: str


TERMINATE_CASES = [
    TerminateCase("obeys-sigterm", ignore_term=False, expected="sigterm"),
    TerminateCase("ignores-sigterm", ignore_term=True, expected="sigkill"),
]


@pytest.mark.parametrize("case", TERMINATE_CASES, ids=[c.test_id for c in TERMINATE_CASES])
def test_terminate_tree(case: TerminateCase, start_bot: StartBot) -> None:
    bot = start_bot(ignore_term=case.ignore_term)
    tree = [bot.root, bot.pid, bot.child]

    # A tree that obeys gets all the time a busy machine needs to end (the call returns when it has);
    # one that ignores SIGTERM is still there after half a second however slow the machine.
    assert metrics.terminate_tree(bot.root, timeout=0.5 if case.ignore_term else 30) == case.expected

    assert metrics.wait_gone(tree, timeout=5) == []
    assert not any(metrics.is_alive(pid) for pid in tree)
    assert metrics.terminate_tree(bot.root, timeout=0.5) == "gone"


def test_terminate_tree_of_dead_pid_is_gone() -> None:
    assert metrics.terminate_tree(dead_pid(), timeout=0.5) == "gone"


def test_wait_gone_returns_survivors(start_bot: StartBot) -> None:
    bot = start_bot(shell=False)
    gone = dead_pid()

    assert metrics.wait_gone([bot.pid, gone], timeout=0.1) == [bot.pid]
    assert metrics.wait_gone([], timeout=0.1) == []


def test_find_processes_matches_command_lines(spawn: Spawn) -> None:
    marker = f"bot-marker-{uuid.uuid4().hex}"
    proc = spawn([sys.executable, "-c", "import time; time.sleep(600)", marker])

    def found() -> list[tuple[int, tuple[str, ...]]]:
        return metrics.find_processes(f"sleep.*{marker}$")

    matches = wait_until(found, message="the marked process")

    assert matches == [(proc.pid, (sys.executable, "-c", "import time; time.sleep(600)", marker))]
    assert metrics.find_processes(f"no-such-{marker}") == []


def test_is_alive_and_boot_time() -> None:
    assert metrics.is_alive(os.getpid())
    assert not metrics.is_alive(dead_pid())
    assert 0 < metrics.boot_time() < time.time()
