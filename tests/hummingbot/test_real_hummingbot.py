"""The real Hummingbot under bot-supervisor, end to end (``make test-hummingbot``).

One instance of the built-in ``hummingbot-venv`` recipe, installed from a git
tree assembled from PyPI's sdist, runs its own MQTT bridge against a private
mosquitto, with our agent beside it. The tests run in file order and share it:
install, start, one reply per request, graceful stop, the start-up window, a
remote start of a down bot with a config, kill -9, and the fleet and dashboard
views of it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import typing as t
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from supervisor.core.sharedenv import COMPLETE
from supervisor.mqtt import protocol
from supervisor.paths import Paths
from tests.conftest import Broker, free_port, start_mosquitto, stop_process, wait_until
from tests.hummingbot.conftest import cache_dir, progress

if t.TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.hummingbot

NAME = "hb1"
HOST = "h1"
PASSWORD = "bot-supervisor test password"  # a test-only keystore password
READY_LINE = "MQTT Bridge connected with success"
INSTALL_TIMEOUT = 2400.0


class Bus:
    """A raw paho client that records what the bot, the agent and their replies publish."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hbot-test-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        for topic in (f"hbot/{NAME}/#", "rpc-test/#", f"supervisor/{HOST}/#"):
            self.client.subscribe(topic, qos=1)
        time.sleep(0.3)

    def _on_message(self, _client: mqtt.Client, _userdata: t.Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.time(), message.topic, bytes(message.payload)))

    def on(self, topic: str, since: float = 0.0) -> list[bytes]:
        with self._lock:
            return [payload for when, name, payload in self.messages if name == topic and when >= since]

    def request(self, command: str, data: dict[str, t.Any]) -> str:
        """Publish a commlib-style request to the bot; return its reply topic."""
        reply_to = f"rpc-test/{uuid.uuid4().hex}"
        payload = protocol.encode_request(data, reply_to)
        self.client.publish(f"hbot/{NAME}/{command}", payload, qos=1).wait_for_publish(5)
        return reply_to

    def replies(self, reply_to: str) -> list[dict[str, t.Any]]:
        return [json.loads(p)["data"] for p in self.on(reply_to)]

    def logs(self, text: str, since: float) -> list[str]:
        found = []
        for payload in self.on(f"hbot/{NAME}/log", since):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                msg = str(json.loads(payload)["msg"])
                if text in msg:
                    found.append(msg)
        return found

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class World:
    """The instance, the agent and the broker shared by the tests of this module."""

    def __init__(self, home: Path, broker: Broker, origin: Path) -> None:
        self.home = home
        self.broker = broker
        self.origin = origin
        self.socket = f"sup-hbot-{os.getpid()}"
        self.paths = Paths(home, self.socket)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPERVISOR_", "TMUX"))}
        self.env.update(SUPERVISOR_HOME=str(home), SUPERVISOR_TMUX_SOCKET=self.socket)
        self.bus = Bus(broker)
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_log = home / "agent.log"

        self.first_new_seconds = 0.0

    @property
    def checkout(self) -> Path:
        return self.paths.default_checkout(NAME)

    def shared_settings(self) -> list[str]:
        """The venvs and Cython builds live in the cache, shared by the instances of every run."""
        venvs, builds = cache_dir() / "venvs", cache_dir() / "builds"
        return ["--set", f"venvs={venvs}", "--set", f"builds={builds}", "--set", f"mqtt_port={self.broker.port}"]

    def cli(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert done.returncode == 0, (
                f"supervisor {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def status(self) -> dict[str, t.Any]:
        [record] = [r for r in json.loads(self.cli("ls", "--json").stdout)["instances"] if r["name"] == NAME]
        return t.cast("dict[str, t.Any]", record)

    def audit(self) -> list[dict[str, t.Any]]:
        path = self.paths.audit_log
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def console(self) -> str:
        return self.paths.console_log(NAME).read_text(errors="replace")

    def start_agent(self) -> None:
        argv = [sys.executable, "-m", "supervisor", "agent", "--broker", self.broker.url, "--host-id", HOST]
        argv += ["--check-interval", "1", "--backoff", "0.5"]
        with self.agent_log.open("ab") as log:
            self.agent = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        topic = f"supervisor/{HOST}/agent"
        wait_until(lambda: any(b'"online"' in p for p in self.bus.on(topic)), timeout=30, message="the agent is online")

    def bot_pid(self) -> int:
        return int(wait_until(lambda: self.status()["pid"], timeout=30, message="the bot has a pid"))

    def close(self, show_logs: bool) -> None:
        if self.agent is not None:
            stop_process(self.agent, timeout=15)
        with contextlib.suppress(Exception):
            self.cli("stop", NAME, timeout=120, check=False)
        if show_logs:
            for label, path in (("agent", self.agent_log), ("console", self.paths.console_log(NAME))):
                text = path.read_text(errors="replace") if path.exists() else ""
                sys.stderr.write(f"--- {label} ---\n{text[-8000:]}\n")
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10, check=False)
        self.bus.close()


@pytest.fixture(scope="module")
def world(
    hbot_origin: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[World]:
    home = tmp_path_factory.mktemp("hbot-home")
    # A clone of the cached tree, so a test can add commits without touching the cache.
    origin = home / "origin"
    subprocess.run(["git", "clone", "-q", str(hbot_origin), str(origin)], check=True, timeout=120)
    broker = start_mosquitto(home / "broker")
    world = World(home, broker, origin)
    failed_before = request.session.testsfailed
    try:
        password = home / "password"
        password.write_text(PASSWORD)
        password.chmod(0o600)
        venvs = cache_dir() / "venvs"
        progress(f"supervisor new {NAME} -r hummingbot-venv (shared venv under {venvs}; shared Cython build)")
        started = time.monotonic()
        argv = [sys.executable, "-m", "supervisor", "new", NAME, "-r", "hummingbot-venv", "--repo", str(origin)]
        argv += ["--ref", "main", *world.shared_settings()]
        argv += ["--secret", f"hummingbot-password=@{password}"]
        # Install progress goes straight to the terminal (pytest cannot capture a child's real stderr).
        done = subprocess.run(
            argv, env=world.env, stdout=sys.__stderr__, stderr=sys.__stderr__, timeout=INSTALL_TIMEOUT, check=False
        )
        log = world.paths.install_log(NAME)
        assert done.returncode == 0, f"install failed; log tail:\n{log.read_text()[-5000:] if log.exists() else ''}"
        world.first_new_seconds = time.monotonic() - started
        progress(f"installed in {world.first_new_seconds:.0f}s")
        world.start_agent()
        yield world
    finally:
        world.close(show_logs=request.session.testsfailed > failed_before)
        stop_process(broker.process)


def test_install_leaves_a_clean_tree_and_keeps_the_password_private(world: World) -> None:
    log = world.paths.install_log(NAME).read_text()
    assert "sharedenv: using Python 3.12" in log
    assert "git tree clean" in log
    # The Cython build stays inside .gitignore: `update` keeps working.
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=world.checkout, capture_output=True, text=True, check=False
    )
    assert status.returncode == 0 and status.stdout == ""
    assert list(world.checkout.glob("hummingbot/core/*.so")), "no extension was built in place"
    env = (world.checkout / ".venv").resolve()
    assert env.parent == (cache_dir() / "venvs").resolve()
    assert (env / COMPLETE).is_file()
    secret = world.paths.secret_file(NAME, "hummingbot-password")
    assert secret.stat().st_mode & 0o777 == 0o600
    assert secret.read_text() == PASSWORD
    for path in (world.paths.registry, world.paths.install_log(NAME)):
        assert PASSWORD not in path.read_text(), path


def test_start_is_ready_within_the_recipe_timeout(world: World) -> None:
    started = time.monotonic()
    online_since = time.time()
    # --wait: fails (exit 1) if the ready line is not seen in ready_timeout
    done = world.cli("start", NAME, "--wait", timeout=400)
    took = time.monotonic() - started
    record = world.status()
    assert record["state"] == "running", record
    assert READY_LINE in world.console()
    assert "password verification written" in world.console()  # by the recipe's prelude
    assert (world.checkout / "conf" / ".password_verification").is_file()
    assert PASSWORD not in world.console()
    assert PASSWORD not in world.paths.run_script(NAME).read_text()
    assert PASSWORD not in " ".join(psutil.Process(record["pid"]).cmdline())
    wait_until(
        lambda: world.bus.on(f"hbot/{NAME}/status_updates", online_since),
        timeout=30,
        message="the bridge says online",
    )
    rss = psutil.Process(record["pid"]).memory_info().rss / 2**20
    progress(f"start until ready: {took:.1f}s; resident memory {rss:.0f} MiB ({done.stdout.strip()})")
    # `logs` reads the bot's own log file, not the full-screen console's redraws.
    logs = world.cli("logs", NAME)
    assert "the bot's own log" in logs.stderr and "logs/logs_" in logs.stderr, logs.stderr
    lines = logs.stdout.splitlines()
    assert lines and not [line for line in lines if line.strip().isdigit()], lines[-10:]


def test_exactly_one_reply_per_request_while_the_bot_is_up(world: World) -> None:
    reply_to = world.bus.request("status", {"async_backend": False})
    wait_until(lambda: world.bus.replies(reply_to), timeout=30, message="the bot's reply")
    history = world.bus.request("history", {"async_backend": False})
    wait_until(lambda: world.bus.replies(history), timeout=30, message="the bot's history reply")
    time.sleep(3)  # room for a second, wrong, reply
    assert len(world.bus.replies(reply_to)) == 1
    [answer] = world.bus.replies(history)
    assert answer["status"] == 200 and answer["trades"] == []
    assert not [e for e in world.audit() if e.get("reply_to") in (reply_to, history)], "the agent answered too"


def test_stop_is_graceful(world: World) -> None:
    before = len(world.console())
    done = world.cli("stop", NAME, timeout=120)
    assert "by its console quit sequence" in done.stdout
    exit_record = world.paths.exit_file(NAME).read_text().split()
    assert exit_record[0] == "0"
    wound_down = world.console()[before:]
    assert "Winding down" in wound_down
    assert world.status()["state"] == "stopped"


def test_a_request_in_the_startup_window_is_held_and_answered_by_the_bot(world: World) -> None:
    starting = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "start", NAME],
        env=world.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: world.status()["pid"], timeout=60, interval=0.05, message="the process appears")
        reply_to = world.bus.request("status", {"async_backend": False})
        wait_until(lambda: world.bus.replies(reply_to), timeout=120, message="a reply after the bridge came up")
        assert starting.wait(300) == 0
    finally:
        stop_process(starting)
    time.sleep(3)
    assert len(world.bus.replies(reply_to)) == 1
    mine = [e for e in world.audit() if e.get("reply_to") == reply_to]
    assert [e["result"] for e in mine] == ["forwarded"], mine


def test_start_for_a_down_bot_launches_it_with_the_requested_config(world: World) -> None:
    world.cli("stop", NAME, timeout=120)
    (world.checkout / "conf" / "scripts" / "probe.yml").write_text(
        "script_file_name: supervisor_probe.py\nlabel: remote\n"
    )
    since = time.time()
    reply_to = world.bus.request("start", {"script": "supervisor_probe.py", "conf": "probe.yml"})
    wait_until(lambda: world.bus.replies(reply_to), timeout=300, message="the bot answers the start")
    argv = psutil.Process(world.bot_pid()).cmdline()
    assert argv[-2:] == ["--v2", "probe.yml"], argv
    wait_until(lambda: world.bus.logs("supervisor-probe remote tick", since), timeout=60, message="the strategy runs")
    time.sleep(3)
    [reply] = world.bus.replies(reply_to)
    mine = [e for e in world.audit() if e.get("reply_to") == reply_to]
    assert [e["result"] for e in mine] == ["forwarded"], mine  # the bot answered, not the agent
    progress(f"the bot's own answer to a start while its strategy runs: {reply}")


def test_kill_9_is_restarted_with_the_strategy_it_was_running(world: World) -> None:
    old = world.bot_pid()
    restarts = world.status()["restarts"]
    killed_at = time.time()
    os.kill(old, signal.SIGKILL)

    def restarted() -> list[str] | None:
        record = world.status()
        if record["pid"] in (None, old) or record["state"] != "running":
            return None
        with contextlib.suppress(psutil.Error):  # the dying wrapper's last commands come and go
            argv = psutil.Process(record["pid"]).cmdline()
            return argv if any(a.endswith("hummingbot_quickstart.py") for a in argv) else None
        return None

    argv = wait_until(restarted, timeout=300, interval=0.5, message="the agent restarts the bot")
    assert argv[-2:] == ["--v2", "probe.yml"]
    assert world.status()["restarts"] == restarts + 1
    wait_until(
        lambda: world.bus.logs("supervisor-probe remote tick", killed_at),
        timeout=120,
        message="the strategy runs again",
    )


def test_update_works_on_the_built_tree_and_keeps_the_strategy(world: World) -> None:
    """The in-place build left git clean, so `update` goes through: new commit, reinstall, same strategy."""
    env = {**world.env, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    (world.origin / "NEWS.md").write_text("a commit after the install\n")
    subprocess.run(["git", "add", "NEWS.md"], cwd=world.origin, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "news"], cwd=world.origin, check=True, env=env)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=world.origin, check=True, capture_output=True, text=True
    ).stdout.strip()
    since = time.time()
    log_size = world.paths.install_log(NAME).stat().st_size
    world.cli("update", NAME, timeout=900)
    # NEWS.md is nothing the build reads: the stored build is put back, nothing is compiled.
    assert "buildcache: restored" in world.paths.install_log(NAME).read_text()[log_size:]
    record = world.status()
    assert record["commit"] == head
    assert record["state"] == "running", record
    assert psutil.Process(world.bot_pid()).cmdline()[-2:] == ["--v2", "probe.yml"]
    wait_until(lambda: world.bus.logs("supervisor-probe remote tick", since), timeout=120, message="it runs again")


def test_fleet_ls_shows_its_heartbeat_age(world: World) -> None:
    # The default collection time (1.5 s) is shorter than the bot's 10 s beat: the age comes from
    # the heartbeats the agent records for plugin bots in its state record.
    done = world.cli("fleet", "--broker", world.broker.url, "ls", "--json", timeout=60)
    data = json.loads(done.stdout)
    [row] = [i for i in data["instances"] if i["instance"] == NAME]
    assert row["state"] == "running", row
    assert row["heartbeat_age"] is not None and row["heartbeat_age"] < 60, row


def test_the_dashboard_api_shows_it_running_with_heartbeats(world: World) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "supervisor", "dashboard", "--broker", world.broker.url]
    log = (world.home / "dashboard.log").open("ab")
    dashboard = subprocess.Popen(
        [*argv, "--listen", f"127.0.0.1:{port}", "--insecure-no-login"], env=world.env, stdout=log, stderr=log
    )
    try:

        def snapshot() -> dict[str, t.Any] | None:
            with contextlib.suppress(OSError, ValueError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/api/session")
                csrf = json.loads(conn.getresponse().read())["csrf"]
                conn.request("GET", "/api/snapshot", headers={"X-CSRF-Token": csrf})
                data = json.loads(conn.getresponse().read())
                for row in data.get("instances", []):
                    beat = row.get("heartbeat_ts")
                    if row["instance"] == NAME and beat is not None and data["now"] - beat < 30:
                        return t.cast("dict[str, t.Any]", row)
            return None

        row = wait_until(snapshot, timeout=60, interval=1, message="the dashboard sees the bot's heartbeat")
        assert row["state"] == "running", row
        assert row["host"] == HOST
    finally:
        stop_process(dashboard)
        log.close()


def test_a_second_instance_reuses_the_build_and_a_password_set_after_new(world: World) -> None:
    """The Nth `new` of one commit restores the shared Cython build; a secret stored later is used at start."""
    second = "hb2"
    started = time.monotonic()
    argv = ["new", second, "-r", "hummingbot-venv", "--repo", str(world.origin), "--ref", "main"]
    world.cli(*argv, *world.shared_settings(), timeout=900)  # no --secret
    took = time.monotonic() - started
    progress(f"second new of the same commit: {took:.1f}s (first: {world.first_new_seconds:.0f}s)")
    try:
        log = world.paths.install_log(second).read_text()
        assert "buildcache: restored" in log and "no build for this key yet" not in log
        checkout = world.paths.default_checkout(second)
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=checkout, capture_output=True, text=True, check=False
        )
        assert status.returncode == 0 and status.stdout == ""
        modules = sorted(p.relative_to(checkout) for p in checkout.glob("hummingbot/**/*.so"))
        assert len(modules) > 10
        assert all((checkout / m).samefile(world.checkout / m) for m in modules)  # one file on disk, shared

        refused = world.cli("start", second, check=False)
        assert refused.returncode == 1 and "hummingbot-password" in refused.stderr
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", "secret", "set", second, "hummingbot-password"],
            input=PASSWORD,
            env=world.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        (checkout / "conf" / "scripts").mkdir(parents=True, exist_ok=True)
        (checkout / "conf" / "scripts" / "probe.yml").write_text("script_file_name: supervisor_probe.py\n")
        world.cli("start", second, "--wait", "--strategy", "probe.yml", timeout=400)
        console = world.paths.console_log(second).read_text(errors="replace")
        assert "password verification written" in console
        assert READY_LINE in console
        [record] = [r for r in json.loads(world.cli("ls", "--json").stdout)["instances"] if r["name"] == second]
        assert record["state"] == "running", record
        assert record["strategy"] == {"conf": "probe.yml"}
        assert psutil.Process(record["pid"]).cmdline()[-2:] == ["--v2", "probe.yml"]
    finally:
        world.cli("stop", second, timeout=120, check=False)


def test_disk_shows_what_each_instance_holds_and_gc_keeps_what_they_use(world: World) -> None:
    listing = json.loads(world.cli("ls", "--json", "--disk", timeout=300).stdout)["instances"]
    disks = {r["name"]: r["disk"] for r in listing}
    assert disks[NAME]["own"] > 0
    assert disks["hb2"]["shared"] > 10 * 2**20  # its Cython modules: hard links into the build cache
    progress(f"disk: {disks}")
    # A dry run only (the cache is shared with other runs): nothing hb1 or hb2 uses is listed.
    items = json.loads(world.cli("gc", "--json", timeout=300).stdout)["items"]
    used = {
        str((world.checkout / ".venv").resolve()),
        (world.checkout / ".git" / "supervisor-buildcache").read_text().strip(),
    }
    assert not [i for i in items if i["path"] in used], items
    assert not [i for i in items if i["kind"] == "mirror"], items
