"""Issue #6: the web dashboard — store, auth and listen rules, then headless Chromium against a real fleet."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import http.client
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t
import urllib.parse
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from supervisor._http import parse_listen
from supervisor.cli import cli
from supervisor.core.manager import Manager
from supervisor.fleet.dashboard import DashboardError
from supervisor.fleet.dashboard.alerts import Alerter
from supervisor.fleet.dashboard.auth import (
    ENV_PASSWORD_HASH,
    LoginThrottle,
    Sessions,
    check_hash,
    hash_password,
    load_settings,
    verify_password,
    write_password_hash,
)
from supervisor.fleet.dashboard.flapping import Flapping
from supervisor.fleet.dashboard.server import (
    MAX_STREAMS,
    MAX_STREAMS_PER_CLIENT,
    RECHECK_EVERY,
    RECHECK_RECORDS,
    SECURITY_HEADERS,
    Dashboard,
    Hub,
    Monitor,
    is_loopback,
)
from supervisor.fleet.dashboard.store import Store, controller_figures, extract_pnl, message_time
from supervisor.fleet.dashboard.window import SUMMARY_LIST, SUMMARY_TEXT, WINDOW, parse_query, windowed
from supervisor.fleet.view import PROBE_SLACK
from supervisor.mqtt.config import load_agent_config
from supervisor.paths import Paths
from tests.conftest import (
    DATA,
    RECIPES,
    Broker,
    Clock,
    free_port,
    make_origin,
    missing,
    require_binary,
    start_mosquitto,
    stop_process,
    wait_until,
)

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from playwright.sync_api import Browser, Page

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HEARTBEAT = 0.5
AGENT_TIMERS = ("--heartbeat-interval", str(HEARTBEAT), "--state-interval", "1", "--check-interval", "0.3")
PASSWORD = "correct horse battery"


# --- password hashes, sessions, settings ----------------------------------------------------


@pytest.mark.parametrize("scheme", ["scrypt", "pbkdf2_sha256"])
def test_hash_verifies_the_password_and_nothing_else(scheme: str) -> None:
    encoded = hash_password(PASSWORD, scheme=scheme)
    assert encoded.startswith(f"{scheme}$")
    assert PASSWORD not in encoded
    assert check_hash(encoded) == encoded
    assert verify_password(PASSWORD, encoded)
    assert not verify_password("correct horse battery ", encoded)
    assert not verify_password("", encoded)
    assert hash_password(PASSWORD, scheme=scheme) != encoded  # salted


@pytest.mark.parametrize(
    "bad", ["hunter2", "", "scrypt$16384$8$1$c2FsdA==", "scrypt$1000$8$1$c2FsdA==$" + "A" * 44, "md5$x$y"]
)
def test_a_malformed_hash_never_matches_and_is_refused_as_config(bad: str) -> None:
    assert not verify_password("hunter2", bad)
    with pytest.raises(DashboardError, match="not a password hash"):
        check_hash(bad)


def test_sessions_expire_and_can_be_revoked() -> None:
    clock = Clock()
    sessions = Sessions(ttl=60, clock=clock, limit=3)
    first = sessions.create()
    assert sessions.get(first.token) == first
    assert first.csrf and first.csrf != first.token
    assert sessions.get("not-a-token") is None
    assert sessions.get(None) is None
    clock.now += 59
    assert sessions.get(first.token) == first
    clock.now += 2
    assert sessions.get(first.token) is None  # expired
    second = sessions.create()
    sessions.revoke(second.token)
    assert sessions.get(second.token) is None
    made = [sessions.create() for _ in range(4)]
    assert sessions.get(made[0].token) is None  # the oldest gave way to the limit
    assert all(sessions.get(s.token) for s in made[1:])


def test_login_throttle_counts_failures_per_address() -> None:
    clock = Clock()
    throttle = LoginThrottle(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert throttle.allowed("10.0.0.1")
        throttle.failed("10.0.0.1")
    assert not throttle.allowed("10.0.0.1")
    assert throttle.allowed("10.0.0.2")
    clock.now += 61
    assert throttle.allowed("10.0.0.1")
    throttle.failed("10.0.0.1")
    throttle.succeeded("10.0.0.1")
    assert throttle.allowed("10.0.0.1")


def test_settings_come_from_dashboard_toml_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.toml"
    assert load_settings(path, {}).login_required is False
    encoded = hash_password(PASSWORD)
    path.write_text(f'[dashboard]\npassword_hash = "{encoded}"\nsession_ttl = 600\n')
    settings = load_settings(path, {})
    assert settings.password_hash == encoded and settings.session_ttl == 600
    assert encoded not in repr(settings)
    other = hash_password("another password")
    assert load_settings(path, {ENV_PASSWORD_HASH: other}).password_hash == other
    with pytest.raises(DashboardError, match=f"environment variable {ENV_PASSWORD_HASH}: not a password hash"):
        load_settings(path, {ENV_PASSWORD_HASH: "plain-text"})
    path.write_text('[dashboard]\npasword_hash = "x"\n')
    with pytest.raises(DashboardError, match=r"unknown key 'dashboard\.pasword_hash'"):
        load_settings(path, {})


def test_passwd_prints_or_writes_a_hash(isolated_env: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(cli, ["dashboard", "passwd", "--stdin"], input=PASSWORD + "\n")
    assert printed.exit_code == 0, printed.output
    assert verify_password(PASSWORD, printed.stdout.strip())
    short = runner.invoke(cli, ["dashboard", "passwd", "--stdin"], input="short\n")
    assert short.exit_code == 1
    assert "at least 8 characters" in short.stderr
    target = isolated_env / "dashboard.toml"
    target.write_text("[dashboard]\nsession_ttl = 120\n")
    written = runner.invoke(cli, ["dashboard", "passwd", "--stdin", "--write"], input=PASSWORD + "\n")
    assert written.exit_code == 0, written.output
    assert target.stat().st_mode & 0o777 == 0o600
    settings = load_settings(target, {})
    assert settings.session_ttl == 120
    assert settings.password_hash is not None and verify_password(PASSWORD, settings.password_hash)
    write_password_hash(target, hash_password("second password"))
    assert verify_password("second password", load_settings(target, {}).password_hash or "")


# --- listen rules ---------------------------------------------------------------------------


class ListenCase(t.NamedTuple):
    test_id: str
    text: str
    host: str
    port: int
    loopback: bool


LISTEN_CASES = [
    ListenCase("ipv4-loopback", "127.0.0.1:8080", "127.0.0.1", 8080, True),
    ListenCase("bare-port", "9000", "127.0.0.1", 9000, True),
    ListenCase("localhost", "localhost:1", "localhost", 1, True),
    ListenCase("ipv6-loopback", "[::1]:8080", "::1", 8080, True),
    ListenCase("any", "0.0.0.0:8080", "0.0.0.0", 8080, False),
    ListenCase("lan", "192.168.1.5:80", "192.168.1.5", 80, False),
    ListenCase("name", "dash.lan:80", "dash.lan", 80, False),
]


@pytest.mark.parametrize("case", LISTEN_CASES, ids=[c.test_id for c in LISTEN_CASES])
def test_listen_addresses(case: ListenCase) -> None:
    assert parse_listen(case.text) == (case.host, case.port)
    assert is_loopback(case.host) is case.loopback


@pytest.mark.parametrize("text", ["", "host", "host:", "1.2.3.4:99999", "a b:1"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(DashboardError, match="is not HOST:PORT"):
        parse_listen(text, DashboardError)


def test_refuses_a_public_address_without_a_password(tmp_path: Path) -> None:
    config = load_agent_config(None, {}, {"url": "mqtt://127.0.0.1:1"})
    store = Store(tmp_path / "d.sqlite")
    try:
        with pytest.raises(DashboardError, match=r"refusing to listen on 0\.0\.0\.0:0 without a password"):
            Dashboard(config, load_settings(tmp_path / "none.toml", {}), "0.0.0.0:0", store)
    finally:
        store.close()
    result = CliRunner().invoke(cli, ["dashboard", "--broker", "mqtt://127.0.0.1:1", "--listen", "0.0.0.0:0"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: refusing to listen on 0.0.0.0:0 without a password")


# --- the store --------------------------------------------------------------------------------------


def performance(pnl_a: float, pnl_b: float) -> dict[str, t.Any]:
    """A ``{p}/performance`` payload as Hummingbot v2.12+ sends it: per controller, performance + custom_info."""
    return {
        "ctrl-a": {
            "performance": {"realized_pnl_quote": pnl_a / 2, "global_pnl_quote": pnl_a, "volume_traded": 1500.0},
            "custom_info": {"side": "BUY"},
        },
        "ctrl-b": {"performance": {"global_pnl_quote": pnl_b, "volume_traded": 10.0}, "custom_info": {}},
    }


class PnlCase(t.NamedTuple):
    test_id: str
    payload: t.Any
    pnl: float | None


PNL_CASES = [
    PnlCase("v2.12-controllers", performance(1.5, -0.25), 1.25),
    PnlCase("before-v2.12", {"c1": {"global_pnl_quote": 2.0}, "c2": {"global_pnl_quote": "-0.5"}}, 1.5),
    PnlCase("report-directly", {"global_pnl_quote": -3, "volume_traded": 1}, -3.0),
    PnlCase("strategy-stopped", {"c1": {}, "c2": {}}, None),
    PnlCase("no-pnl-field", {"c1": {"performance": {"volume_traded": 5}}}, None),
    PnlCase("not-an-object", [1, 2], None),
    PnlCase("not-finite", {"global_pnl_quote": "nan"}, None),
    PnlCase("bool-is-not-a-number", {"global_pnl_quote": True}, None),
]


@pytest.mark.parametrize("case", PNL_CASES, ids=[c.test_id for c in PNL_CASES])
def test_extract_pnl(case: PnlCase) -> None:
    assert extract_pnl(case.payload) == case.pnl


def test_message_time_and_controller_figures() -> None:
    now = 1_800_000_000.0
    assert message_time({"timestamp": now - 60}, now) == now - 60
    assert message_time({"timestamp": (now - 60) * 1000}, now) == now - 60  # milliseconds
    assert message_time({"timestamp": 12}, now) == now  # not believable: the arrival time
    assert message_time({"timestamp": "x"}, now) == now
    assert message_time([1], now) == now
    assert controller_figures(performance(1.5, -0.25)) == {
        "ctrl-a": {"global_pnl_quote": 1.5, "realized_pnl_quote": 0.75, "volume_traded": 1500.0},
        "ctrl-b": {"global_pnl_quote": -0.25, "volume_traded": 10.0},
    }
    assert controller_figures({"c1": {"global_pnl_quote": "2"}, "timestamp": 5}) == {"c1": {"global_pnl_quote": 2.0}}
    assert controller_figures({"global_pnl_quote": 1}) == {}  # one report, no controllers
    assert controller_figures({"c1": {}}) == {}


def test_store_keeps_bounded_history_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    store = Store(path, keep_samples=100, keep_messages=10)
    for i in range(30):
        assert store.add_performance("mm-1", performance(float(i), 0.0), ts=1000.0 + i) == float(i)
    assert store.add_performance("mm-1", {"ctrl-a": {}}, ts=2000.0) is None  # the stop message is not charted
    for i in range(200):
        store.add_message("mm-1", "notify", f"line {i}", ts=1000.0 + i)
    store.add_message("mm-1", "event", "from host-1", host="host-1", ts=5000.0)
    store.add_message("mm-1", "event", "from host-2", host="host-2", ts=5001.0)
    store.close()

    reopened = Store(path, keep_samples=100, keep_messages=10)
    try:
        samples = reopened.performance("mm-1")
        assert samples == [(1000.0 + i, float(i)) for i in range(30)]
        assert reopened.performance("mm-1", limit=3) == samples[-3:]
        lines = reopened.messages("mm-1", "host-1", limit=1000)
        assert len(lines) < 10 + 50 + 2  # the limit plus at most one pruning batch
        assert lines[-1]["text"] == "from host-1" and lines[-1]["host"] == "host-1"
        assert "from host-2" not in [m["text"] for m in lines]
        assert lines[-2]["text"] == "line 199"
        assert reopened.instances_with_performance() == ["mm-1"]
        assert reopened.performance("other") == []
    finally:
        reopened.close()


def test_store_remembers_hosts_and_instances(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.sqlite"
    store = Store(path)
    store.remember_host("host-1", {"state": "online", "version": "1"}, ts=10.0)
    store.remember_host("host-2", {"state": "offline"}, ts=11.0)
    store.remember_state("host-1", "mm-1", {"state": "running", "pid": 5}, ts=12.0)
    store.remember_state("host-1", "mm-1", {"state": "fatal", "exit_code": 3}, ts=13.0)
    store.remember_state("host-1", "gone", {"state": "stopped"}, ts=14.0)
    store.remember_state("host-1", "gone", None)  # its retained record was deleted: removed
    store.remember_state("host-3", "orphan", {"state": "running"})  # no host record: not listed
    store.remember_state("host-2", "arb-1", {"state": "running"})
    store.remember_host("host-2", None)  # the agent's record was deleted: the host and its bots go
    store.close()
    reopened = Store(path)
    try:
        assert reopened.known_hosts() == {"host-1": {"state": "online", "version": "1"}}
        assert reopened.known_states() == {("host-1", "mm-1"): {"state": "fatal", "exit_code": 3}}
    finally:
        reopened.close()


def test_the_monitor_remembers_hosts_and_forgets_instances_their_agent_dropped(
    tmp_path: Path, mosquitto: Broker
) -> None:
    store = Store(tmp_path / "dashboard.sqlite")
    store.remember_host("host-1", {"state": "online", "ts": 100.0}, ts=100.0)
    store.remember_state("host-1", "mm-1", {"state": "running", "ts": 100.0, "refresh": 30})
    store.remember_state("host-1", "old-1", {"state": "fatal", "ts": 100.0, "refresh": 30})
    clock = Clock(now=200.0)
    monitor = Monitor(load_agent_config(None, {}, {"url": mosquitto.url}), store, Hub(), clock=clock)
    monitor.start()
    try:
        # Known from the store only: listed, offline ("unseen"), and the fatal bot stays bad.
        view = monitor.snapshot()
        assert [(h["host"], h["online"], h["state"]) for h in view["hosts"]] == [("host-1", False, "unseen")]
        rows = {i["target"]: (i["state"], i["health"]) for i in view["instances"]}
        assert rows == {"host-1/mm-1": ("offline", "off"), "host-1/old-1": ("offline", "bad")}
        # The agent comes back and publishes its instances again, old-1 no longer among them.
        publish(
            mosquitto,
            [
                ("supervisor/host-1/agent", {"state": "online", "ts": 1000.0, "heartbeat_interval": 10}),
                ("supervisor/host-1/mm-1/state", {"state": "running", "ts": 1000.5, "refresh": 30}),
            ],
        )
        clock.now = 1001.0
        wait_until(lambda: monitor.snapshot()["hosts"][0]["online"], message="the agent's record")
        wait_until(lambda: len([i for i in monitor.snapshot()["instances"] if i["state"] == "running"]) == 1)
        assert len(monitor.snapshot()["instances"]) == 2  # within a refresh, old-1 may still come
        # Malformed records are ignored (only an empty retained payload deletes); new-1 marks they were read.
        publish(
            mosquitto,
            [
                ("supervisor/host-1/agent", "garbage"),
                ("supervisor/host-1/mm-1/state", [1]),
                ("supervisor/host-1/new-1/state", {"state": "stopped", "ts": 1000.7, "refresh": 30}),
            ],
        )
        wait_until(lambda: len(monitor.snapshot()["instances"]) == 3, message="new-1")
        assert monitor.snapshot()["hosts"][0]["online"]
        clock.now = 1000.0 + 30 + 5 + 1
        assert [i["target"] for i in monitor.snapshot()["instances"]] == ["host-1/mm-1", "host-1/new-1"]
        wait_until(lambda: ("host-1", "old-1") not in store.known_states(), message="old-1 forgotten")
        assert ("host-1", "mm-1") in store.known_states()
    finally:
        monitor.stop()
        store.close()


def snapshot_of(*instances: dict[str, t.Any], connected: bool = True) -> dict[str, t.Any]:
    return {"now": 1.0, "connected": connected, "broker": "mqtt://b", "hosts": [], "instances": list(instances)}


def test_the_stream_sends_the_snapshot_once_then_only_changes() -> None:
    hub = Hub()
    early = hub.subscribe()
    assert early is not None
    a: dict[str, t.Any] = {"target": "h/a", "state": "running", "cpu_percent": 1.0, "pnl_series": [1.0]}
    b: dict[str, t.Any] = {"target": "h/b", "state": "stopped", "cpu_percent": None, "pnl_series": []}
    hub.publish_snapshot(snapshot_of(a, b))
    late = hub.subscribe()
    assert late is not None

    def frames(q: t.Any) -> list[tuple[str, t.Any]]:
        out = []
        while not q.empty():
            event, data = q.get_nowait().decode().split("\n")[:2]
            out.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
        return out

    assert frames(early) == [("snapshot", snapshot_of(a, b))]
    assert frames(late) == [("snapshot", snapshot_of(a, b))]  # a new stream starts with the whole view
    hub.publish_snapshot({**snapshot_of(a, b), "now": 2.0})  # only the clock moved: nothing is sent
    assert frames(early) == []
    # Changed fields only; heartbeats in a compact map; sparklines never; new instances whole.
    a2 = {**a, "cpu_percent": 2.0, "heartbeat_ts": 2.5, "pnl_series": [1.0, 2.0]}
    c: dict[str, t.Any] = {"target": "h/c", "state": "running", "pnl_series": [3.0]}
    hub.publish_snapshot({**snapshot_of(a2, c, connected=False), "now": 3.0})
    expected = {
        "now": 3.0,
        "connected": False,
        "instances": [{"target": "h/a", "cpu_percent": 2.0}, {"target": "h/c", "state": "running"}],
        "beats": {"h/a": 2.5},
        "removed": ["h/b"],
    }
    assert frames(early) == [("delta", expected)]
    assert frames(late) == [("delta", expected)]


# --- end to end: real broker, real agent, real bots, real browser ---------------------------------------


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright (never ``playwright install``); fails under CI=true if missing."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None  # type: ignore[assignment] # reported below, with the browser
    absent = [what for what, ok in (("chromium", binary), ("playwright", sync_playwright)) if not ok]
    if absent:
        missing(f"{' and '.join(absent)} not installed (apt-get install chromium; pip install playwright)")
    assert binary is not None and sync_playwright is not None
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=binary, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


AXE_VERSION = "4.14.1"
AXE_TARBALL = f"https://registry.npmjs.org/axe-core/-/axe-core-{AXE_VERSION}.tgz"
AXE_INTEGRITY = "sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ=="


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core's ``axe.min.js``, fetched once from the npm registry into a cache outside the repository.

    Test-only and never committed; the tarball is checked against the registry's sha512 integrity.
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bot-supervisor-tests"
    script = cache / f"axe-core-{AXE_VERSION}.min.js"
    if not script.exists():
        import base64
        import hashlib
        import io
        import tarfile
        import urllib.request

        try:
            with urllib.request.urlopen(AXE_TARBALL, timeout=60) as response:
                data = response.read()
        except OSError as e:
            missing(f"axe-core {AXE_VERSION} could not be fetched from the npm registry: {e}")
        digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        assert digest == AXE_INTEGRITY, "axe-core tarball does not match the registry's integrity"
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            member = tar.extractfile("package/axe.min.js")
            assert member is not None
            text = member.read()
        cache.mkdir(parents=True, exist_ok=True)
        partial = script.with_suffix(".part")
        partial.write_bytes(text)
        partial.replace(script)
    return script.read_text()


class Fleet:
    """One host: its home, a private tmux server, example-bot instances, its agent and dashboards."""

    def __init__(self, root: Path, broker: Broker) -> None:
        self.root = root
        self.broker = broker
        self.home = root / "host-1"
        self.home.mkdir(parents=True)
        self.socket = f"dash-{uuid.uuid4().hex[:8]}"
        self.manager = Manager(Paths.from_env(self.home, self.socket))
        self.processes: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
        return {**env, "SUPERVISOR_HOME": str(home), "SUPERVISOR_TMUX_SOCKET": self.socket, **extra}

    def spawn(self, label: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.root / f"{label}-{len(self.processes)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.processes.append((label, proc, log))
        return proc

    def add(self, *names: str) -> None:
        for name in names:
            self.manager.new(name, "example-bot")
            self.manager.start([name])

    def pid(self, name: str) -> int | None:
        return self.manager.status([name])[0].pid

    def add_crasher(self, name: str, origin: Path) -> None:
        """An instance that exits with code 3 half a second after each start, printing 'crasher up'."""
        self.manager.new(name, str(RECIPES / "crasher.yaml"), repo=str(origin))
        self.manager.start([name])

    def start_agent(self, *extra: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "supervisor", "agent", "--broker", self.broker.url, "--host-id", "host-1"]
        return self.spawn("agent", [*argv, *AGENT_TIMERS, *extra], self.env(self.home))

    def start_dashboard(
        self, home: Path, port: int | None = None, *, insecure: bool = True, **env: str
    ) -> tuple[subprocess.Popen[bytes], str]:
        """Start a dashboard; ``insecure`` passes --insecure-no-login (a home with a password still asks for it)."""
        port = port or free_port()
        argv = [sys.executable, "-m", "supervisor", "dashboard", "--broker", self.broker.url]
        argv += ["--listen", f"127.0.0.1:{port}", *(["--insecure-no-login"] if insecure else [])]
        proc = self.spawn("dashboard", argv, self.env(home, **env))
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert proc.poll() is None, f"the dashboard exited with {proc.returncode}"
            with contextlib.suppress(OSError):
                return request(url, "GET", "/api/session")[0] == 200
            return False

        wait_until(up, timeout=15, message="the dashboard answers")
        return proc, url

    def cleanup(self, show_logs: bool) -> None:
        for _, proc, _ in reversed(self.processes):
            with contextlib.suppress(Exception):
                stop_process(proc)
        if show_logs:
            for label, _, log in self.processes:
                text = log.read_text(errors="replace") if log.exists() else ""
                sys.stderr.write(f"--- {label} ({log.name}) ---\n{text[-6000:]}\n")
        with contextlib.suppress(Exception):
            subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10, check=False)
        socket_dir = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
        with contextlib.suppress(OSError):
            (socket_dir / self.socket).unlink(missing_ok=True)


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Broker, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """Every process made here (agent, dashboards) is stopped and the bots' tmux server killed, even on failure."""
    require_binary("tmux")
    made = Fleet(tmp_path / "fleet", mosquitto)
    try:
        yield made
    finally:
        report = getattr(request.node, "rep_call", None)
        made.cleanup(show_logs=report is None or report.failed)


def request(
    url: str, method: str, path: str, body: t.Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], t.Any]:
    """One plain HTTP request (no browser): status, headers and the JSON body (or the text)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=data, headers={**sent, **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        try:
            parsed: t.Any = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed
    finally:
        conn.close()


def publish(broker: Broker, messages: list[tuple[str, t.Any]], gap: float = 0.0) -> None:
    """Publish JSON messages with a plain paho client, as a Hummingbot bridge would."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fake-hbot-{uuid.uuid4().hex[:8]}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(5)
            if gap:
                time.sleep(gap)  # spreads samples over time, as a bot's 1 s reports are
    finally:
        client.disconnect()
        client.loop_stop()


def row(page: Page, target: str, cell: str) -> str:
    return page.inner_text(f'tr[data-target="{target}"] td.{cell}').strip()


def health(page: Page, target: str) -> str:
    """Return the row's ``health-*`` colour class (ok, bad, off)."""
    classes = (page.get_attribute(f'tr[data-target="{target}"]', "class") or "").split()
    return next(c for c in classes if c.startswith("health-"))


def wait_page(page: Page, script: str, arg: t.Any = None, timeout: float = 10.0) -> None:
    page.wait_for_function(script, arg=arg, timeout=timeout * 1000)


def assert_security_headers(headers: dict[str, str]) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name.lower()) == value, name
    assert "'unsafe-inline'" not in headers["content-security-policy"]


def test_dashboard_in_a_browser(fleet: Fleet, browser: Browser, mosquitto: Broker, tmp_path: Path) -> None:
    fleet.add("mm-1", "arb-2")
    fleet.start_agent()
    dashboard, url = fleet.start_dashboard(fleet.home)

    # Plain HTTP: security headers everywhere; commands need the page's CSRF token and our Host name.
    status, headers, session = request(url, "GET", "/api/session")
    assert status == 200 and session["login_required"] is False and session["csrf"]
    assert_security_headers(headers)
    assert headers["cache-control"] == "no-store"
    status, headers, page_text = request(url, "GET", "/")
    assert status == 200 and '<script src="/static/app.js"' in page_text
    assert_security_headers(headers)
    command = {"target": "host-1/mm-1", "verb": "stop", "data": {}}
    assert request(url, "POST", "/api/command", command)[0] == 403  # no X-CSRF-Token: nothing is sent
    csrf = {"X-CSRF-Token": session["csrf"]}
    forged = {**csrf, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert request(url, "POST", "/api/command", command, forged)[0] == 403
    assert request(url, "GET", "/api/snapshot", headers={"Host": "evil.example:80"})[0] == 421  # DNS rebinding
    assert request(url, "GET", "/api/snapshot", headers={"Host": "evil.example"})[0] == 421
    assert request(url, "GET", "/api/snapshot", headers={"Host": "localhost:9000"})[0] == 200  # an SSH tunnel
    assert request(url, "GET", "/static/../server.py")[0] == 404
    bad_verb = request(url, "POST", "/api/command", {**command, "verb": "shell"}, csrf)
    assert bad_verb[0] == 400 and "unknown" in bad_verb[2]["error"]
    assert fleet.pid("mm-1") is not None  # still running: the refused stop did nothing

    page = browser.new_page(viewport={"width": 1280, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url + "/")
    page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page

    # The table lists both instances, live.
    for name in ("mm-1", "arb-2"):
        target = f"host-1/{name}"
        wait_page(
            page,
            "([t, pid]) => { const r = document.querySelector(`tr[data-target='${t}']`);"
            " return r && r.dataset.state === 'running' && r.querySelector('td.pid').textContent === String(pid); }",
            [target, fleet.pid(name)],
        )
        assert row(page, target, "host") == "host-1"
        assert row(page, target, "restarts") == "0"
        assert row(page, target, "commit") == (fleet.manager.status([name])[0].commit or "")[:8]
        assert health(page, target) == "health-ok"
    assert page.locator("#fleet tbody tr").count() == 2
    wait_page(page, "() => document.getElementById('live-text').textContent === 'live'")

    # restart on mm-1: its pid and restarts change on the page without a reload; arb-2's do not.
    old = {name: fleet.pid(name) for name in ("mm-1", "arb-2")}
    page.click('tr[data-target="host-1/mm-1"] button[data-verb="restart"]')
    # Like stop, restart cancels a Hummingbot's orders: it asks first.
    assert "cancels its open orders" in page.inner_text("#ask-text")
    page.click("#ask-ok")
    wait_page(
        page,
        "(old) => { const r = document.querySelector(\"tr[data-target='host-1/mm-1']\");"
        " return r.querySelector('td.restarts').textContent === '1'"
        " && !['\\u2013', String(old)].includes(r.querySelector('td.pid').textContent); }",
        old["mm-1"],
        timeout=60,
    )
    wait_page(page, "() => document.querySelector(\"tr[data-target='host-1/mm-1'] .reply\").textContent !== ''")
    assert "restart: ok — restarted 'mm-1'" in row(page, "host-1/mm-1", "actions")
    new_pid = fleet.pid("mm-1")
    assert new_pid not in (None, old["mm-1"])
    wait_page(
        page,
        "(pid) => document.querySelector(\"tr[data-target='host-1/mm-1'] td.pid\").textContent === String(pid)",
        new_pid,
    )
    assert row(page, "host-1/arb-2", "pid") == str(old["arb-2"]) == str(fleet.pid("arb-2"))
    assert row(page, "host-1/arb-2", "restarts") == "0"
    assert page.evaluate("window.__sameDocument") is True

    # stop asks first; cancelling sends nothing.
    page.click('tr[data-target="host-1/arb-2"] button[data-verb="stop"]')
    assert "cancels its open orders" in page.inner_text("#ask-text")
    page.click("#ask-cancel")
    assert fleet.pid("arb-2") == old["arb-2"]

    # import goes over Hummingbot's topic and shows the agent's (console's) reply.
    page.click('tr[data-target="host-1/arb-2"] button[data-verb="import"]')
    page.fill("#ask-input", "conf_arb_1.yml")
    page.click("#ask-ok")
    page.wait_for_selector("#replies li[data-verb='import']", timeout=20_000)
    assert "import ok" in page.inner_text("#replies li[data-verb='import']")
    assert "Configuration from conf_arb_1.yml file is imported." in page.inner_text("#replies li[data-verb='import']")

    # config: example-bot's recipe has no console line for it, and the agent's 400 is shown as the reply.
    page.click('tr[data-target="host-1/arb-2"] button[data-verb="config"]')
    page.click("#ask-ok")
    page.wait_for_selector("#replies li[data-verb='config']", timeout=20_000)
    assert "config FAILED (400)" in page.inner_text("#replies li[data-verb='config']")

    # Console view: the live screen, and the bot's answer to a sent line.
    page.click('tr[data-target="host-1/arb-2"] button[data-verb="console"]')
    wait_page(page, "() => document.getElementById('screen').textContent.includes(\"example-bot 'arb-2' ready\")")
    marker = f"hello-{uuid.uuid4().hex[:6]}"
    page.fill("#send-line", marker)
    page.press("#send-line", "Enter")
    wait_page(page, "(m) => document.getElementById('screen').textContent.includes(`Unknown command: ${m}.`)", marker)
    page.fill("#send-line", "status")
    page.press("#send-line", "Enter")
    wait_page(
        page,
        "() => document.getElementById('screen').textContent.includes('Strategy conf_arb_1.yml') ||"
        " document.getElementById('screen').textContent.includes('No strategy is currently running!')",
    )

    # Hummingbot streams: performance (PnL) as the v2.12 payload, notify and log lines.
    pnl = [round(3 * math.sin(i / 4) + i * 0.4, 3) for i in range(24)]
    publish(mosquitto, [("hbot/mm-1/performance", performance(p * 0.75, p * 0.25)) for p in pnl], gap=0.03)
    publish(mosquitto, [("hbot/arb-2/performance", performance(-p / 2, 0.0)) for p in pnl[:12]], gap=0.03)
    notify = f"Strategy started: pure_market_making {marker}"
    publish(
        mosquitto,
        [
            ("hbot/mm-1/notify", {"seq": 0, "timestamp": "-1", "msg": notify}),
            (
                "hbot/mm-1/log",
                {
                    "timestamp": time.time(),
                    "msg": "BUY order 0.1 BTC-USDT @ 42000 created",
                    "level_no": 20,
                    "level_name": "INFO",
                    "logger_name": "hummingbot.strategy",
                },
            ),
        ],
    )
    page.click('tr[data-target="host-1/mm-1"] button[data-verb="console"]')
    wait_page(page, "(n) => document.getElementById('stream').textContent.includes(n)", notify)
    wait_page(page, "() => document.getElementById('chart-value').textContent.includes('24 samples')")
    assert page.inner_text("#chart-value").startswith(f"+{pnl[-1]:.2f}")
    assert page.locator("#chart polyline").count() == 1
    assert "BUY order 0.1 BTC-USDT @ 42000 created" in page.inner_text("#stream")
    wait_page(
        page,
        "(v) => document.querySelector(\"tr[data-target='host-1/mm-1'] td.pnl\").textContent === v",
        f"+{pnl[-1]:.2f}",
    )
    assert page.locator('tr[data-target="host-1/mm-1"] td.pnl polyline').count() == 1
    history = request(url, "GET", "/api/history/host-1/mm-1")[2]
    assert [p for _, p in history["performance"]] == pytest.approx(pnl)
    assert any("restart from the dashboard: ok" in m["text"] for m in history["messages"])

    wait_page(page, "() => document.getElementById('screen').textContent.includes(\"example-bot 'mm-1' ready\")")
    page.mouse.move(0, 0)
    screenshot = tmp_path / "dashboard.png"
    page.screenshot(path=str(screenshot))
    if os.environ.get("DASHBOARD_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["DASHBOARD_SCREENSHOT"])

    # kill -9 a bot: its row turns red within the heartbeat window (before and after the agent restarts it).
    victim = old["arb-2"]
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    wait_page(
        page,
        "() => document.querySelector(\"tr[data-target='host-1/arb-2']\").classList.contains('health-bad')",
        timeout=4 * HEARTBEAT + 3,
    )
    assert health(page, "host-1/mm-1") == "health-ok"
    alert = page.inner_text('tr[data-target="host-1/arb-2"] .alert')
    assert "crashed" in alert or "no heartbeat" in alert, alert
    wait_page(
        page,
        "() => document.querySelector(\"tr[data-target='host-1/arb-2'] td.restarts\").textContent === '1'",
        timeout=20,
    )
    assert fleet.pid("arb-2") not in (None, victim)
    assert page.evaluate("window.__sameDocument") is True
    assert not [e for e in errors if "favicon" not in e], errors

    # The agent goes away (its availability record says offline): its rows turn grey, commands are disabled.
    agent = next(proc for label, proc, _ in fleet.processes if label == "agent")
    stop_process(agent)
    wait_page(
        page, "() => [...document.querySelectorAll('#fleet tbody tr')].every(r => r.classList.contains('health-off'))"
    )
    assert row(page, "host-1/mm-1", "state") == "offline"
    assert page.is_disabled('tr[data-target="host-1/mm-1"] button[data-verb="restart"]')
    assert "offline" in (page.get_attribute("#hosts .chip", "class") or "")

    # History survives a restart of the dashboard.
    stop_process(dashboard)
    _, url = fleet.start_dashboard(fleet.home)
    history = request(url, "GET", "/api/history/host-1/mm-1")[2]
    assert [p for _, p in history["performance"]] == pytest.approx(pnl)
    assert notify in [m["text"] for m in history["messages"]]
    page.goto(url + "/")
    wait_page(
        page,
        "(v) => document.querySelector(\"tr[data-target='host-1/mm-1'] td.pnl\")?.textContent === v",
        f"+{pnl[-1]:.2f}",
    )
    assert page.is_disabled('tr[data-target="host-1/mm-1"] button[data-verb="console"]')  # its host is offline
    page.close()


def test_login_is_required_and_a_wrong_password_is_refused(fleet: Fleet, browser: Browser, tmp_path: Path) -> None:
    home = tmp_path / "dash-home"
    home.mkdir()
    (home / "dashboard.toml").write_text(f'[dashboard]\npassword_hash = "{hash_password(PASSWORD)}"\n')
    _, url = fleet.start_dashboard(home)

    status, headers, session = request(url, "GET", "/api/session")
    assert status == 200 and session == {**session, "login_required": True, "authenticated": False, "csrf": None}
    assert_security_headers(headers)
    command = {"target": "host-1/mm-1", "verb": "restart", "data": {}}
    assert request(url, "POST", "/api/command", command)[0] == 403
    assert request(url, "POST", "/api/command", command, {"X-CSRF-Token": "guess"})[0] == 403
    assert request(url, "GET", "/api/snapshot")[0] == 403
    assert request(url, "GET", "/api/instances?host=host-1")[0] == 403
    assert request(url, "GET", "/events")[0] == 403
    assert request(url, "GET", "/api/history/host-1/mm-1")[0] == 403
    wrong = request(url, "POST", "/api/login", {"password": "not it"})
    assert wrong[0] == 401 and "set-cookie" not in wrong[1]

    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    page.goto(url + "/")
    page.wait_for_selector("#login-form")
    assert page.is_hidden("#app")
    page.fill("#password", "wrong password")
    page.click("#login-button")
    wait_page(page, "() => document.getElementById('login-error').textContent === 'Wrong password.'")
    assert page.is_hidden("#app")
    assert context.cookies() == []

    page.fill("#password", PASSWORD)
    page.click("#login-button")
    page.wait_for_selector("#app", state="visible")
    wait_page(page, "() => document.getElementById('live-text').textContent === 'live'")
    # "live" shows when the stream opens; the first snapshot (no agent on this broker) is drawn after it.
    page.wait_for_selector("#empty", state="visible")
    [cookie] = context.cookies()
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    # Even with the session cookie, a command without the CSRF header is refused.
    no_csrf = page.evaluate(
        "fetch('/api/command', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({target: 'host-1/mm-1', verb: 'restart', data: {}})}).then(r => r.status)"
    )
    assert no_csrf == 403
    assert page.is_visible("#broker") and page.is_visible("#logout")
    page.click("#logout")
    page.wait_for_selector("#login-form", state="visible")
    # Nothing of the fleet stays above the login form.
    assert page.is_hidden("#hosts") and page.is_hidden("#broker") and page.is_hidden("#logout")
    status, _, _ = request(url, "GET", "/api/snapshot", headers={"Cookie": f"supervisor_session={cookie['value']}"})
    assert status == 403  # the session ended on the server too
    context.close()


# --- hardening (issue 11) ------------------------------------------------------------------------


def raw_request(
    url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, source: str = ""
) -> tuple[int, bytes]:
    """One HTTP request from loopback address ``source`` (any 127.x.y.z): status and body."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or "", parts.port, timeout=30, source_address=(source, 0) if source else None
    )
    try:
        sent = {"Content-Type": "application/json", "Host": parts.netloc, **(headers or {})}
        conn.request(method, path, body=body or None, headers=sent)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def open_stream(url: str, source: str = "127.0.0.1") -> tuple[socket.socket, int]:
    """Open ``/events`` from ``source`` and return the socket (kept open) and the status code."""
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=10, source_address=(source, 0))
    sock.sendall(f"GET /events HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return sock, int(head.split()[1])


def vm_peak_rss(pid: int) -> int:
    """Return the peak resident memory (VmHWM) of ``pid`` in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    pytest.fail(f"no VmHWM line for pid {pid}")


def test_typed_fields_with_control_characters_and_bad_targets_get_400(fleet: Fleet) -> None:
    _, url = fleet.start_dashboard(fleet.home)
    csrf = {"X-CSRF-Token": request(url, "GET", "/api/session")[2]["csrf"]}
    for verb, data, field in (
        ("import", {"strategy": "\u0015history"}, "field 'strategy' holds control characters (U+0015)"),
        ("import", {"strategy": "x\u0003"}, "field 'strategy' holds control characters (U+0003)"),
        ("send", {"text": "status\t"}, "verb 'send': field 'text' holds control characters (U+0009)"),
    ):
        status, _, body = request(
            url, "POST", "/api/command", {"target": "host-1/mm-1", "verb": verb, "data": data}, csrf
        )
        assert status == 400 and body["error"].startswith(field), body
    # "$" would match before a trailing newline: the target must match as a whole.
    status, _, body = request(url, "POST", "/api/command", {"target": "host-1\n/mm-1", "verb": "stop"}, csrf)
    assert status == 400 and body["error"].startswith("target must be HOST/INSTANCE"), body
    assert request(url, "GET", "/api/history/host-1%0A/mm-1")[0] == 400


def test_head_answers_like_get_without_a_body(fleet: Fleet) -> None:
    _, url = fleet.start_dashboard(fleet.home)
    got, page = raw_request(url, "GET", "/")
    assert got == 200
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request("HEAD", "/")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(len(page))
        assert response.read() == b""
    finally:
        conn.close()
    assert raw_request(url, "HEAD", "/events")[0] == 200


def test_one_client_cannot_hold_every_event_stream(fleet: Fleet) -> None:
    _, url = fleet.start_dashboard(fleet.home)
    opened = []
    try:
        for _ in range(MAX_STREAMS):
            sock, status = open_stream(url)
            opened.append(sock)
            assert status == 200
        # Another client still gets a stream, and so does a new one from the first client (its oldest ends).
        sock, status = open_stream(url, "127.0.0.2")
        opened.append(sock)
        assert status == 200
        sock, status = open_stream(url)
        opened.append(sock)
        assert status == 200
    finally:
        for sock in opened:
            sock.close()


def test_deeply_nested_login_body_gets_400(fleet: Fleet, tmp_path: Path) -> None:
    home = tmp_path / "dash-home"
    home.mkdir()
    (home / "dashboard.toml").write_text(f'[dashboard]\npassword_hash = "{hash_password(PASSWORD)}"\n')
    proc, url = fleet.start_dashboard(home)
    status, body = raw_request(url, "POST", "/api/login", b"[" * 30_000)
    assert status == 400 and json.loads(body) == {"error": "the body must be a JSON object"}
    assert request(url, "GET", "/api/session")[0] == 200
    assert proc.poll() is None


def test_parallel_wrong_logins_cannot_pass_the_lockout_and_memory_stays_flat(fleet: Fleet, tmp_path: Path) -> None:
    home = tmp_path / "dash-home"
    home.mkdir()
    (home / "dashboard.toml").write_text(f'[dashboard]\npassword_hash = "{hash_password(PASSWORD)}"\n')
    proc, url = fleet.start_dashboard(home)
    wrong = json.dumps({"password": "not it"}).encode()

    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(lambda _: raw_request(url, "POST", "/api/login", wrong)[0], range(30)))
    assert set(statuses) <= {401, 429}, statuses
    assert 1 <= statuses.count(401) <= 5, statuses  # 5 failures per minute: never more checks than that
    right = json.dumps({"password": PASSWORD}).encode()
    assert raw_request(url, "POST", "/api/login", right)[0] == 429  # this address is locked out now

    # Many addresses at once: the password checks (16 MB of scrypt each) run a few at a time.
    before = vm_peak_rss(proc.pid)
    sources = [f"127.0.1.{i}" for i in range(1, 41)]
    with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:
        statuses = list(pool.map(lambda s: raw_request(url, "POST", "/api/login", wrong, source=s)[0], sources))
    assert set(statuses) <= {401, 429}, statuses
    grown_mb = (vm_peak_rss(proc.pid) - before) / 1024
    assert grown_mb < 100, f"peak memory grew by {grown_mb:.0f} MB"
    assert proc.poll() is None


def test_login_attempts_are_counted_before_the_check() -> None:
    clock = Clock()
    throttle = LoginThrottle(limit=3, window=60, clock=clock)
    assert [throttle.attempt("10.0.0.1") for _ in range(5)] == [True, True, True, False, False]
    assert throttle.attempt("10.0.0.2")
    throttle.succeeded("10.0.0.1")
    assert throttle.attempt("10.0.0.1")
    clock.now += 61
    assert [throttle.attempt("10.0.0.2") for _ in range(3)] == [True, True, True]


def test_event_stream_slots_are_counted_per_client() -> None:
    hub = Hub(limit=4, per_client=2)
    first, second = hub.subscribe("a"), hub.subscribe("a")
    third = hub.subscribe("a")  # a's oldest stream ends to make room
    assert first is not None and second is not None and third is not None
    assert not hub.is_subscribed(first) and first.get_nowait() is None
    assert hub.is_subscribed(second) and hub.is_subscribed(third)
    assert hub.subscribe("b") is not None and hub.subscribe("b") is not None
    assert hub.subscribe("c") is None  # all 4 slots taken by two clients
    hub.unsubscribe(second)
    assert hub.subscribe("c") is not None


def test_with_a_secret_the_dashboard_marks_unsigned_records_untrusted_and_never_acts_on_them(
    tmp_path: Path, mosquitto: Broker
) -> None:
    from supervisor.fleet.dashboard.server import Hub, Monitor
    from supervisor.mqtt.auth import sign_record

    secret = "dash-secret"
    config = load_agent_config(None, {"SUPERVISOR_SECRET": secret}, {"url": mosquitto.url})
    monitor = Monitor(config, Store(tmp_path / "dash.sqlite"), Hub())
    monitor.start()
    try:
        now = time.time()
        running = {"state": "running", "pid": 4242, "ts": now, "refresh": 30}
        real = {"host": "h1", "state": "online", "ts": now, "heartbeat_interval": 10}
        publish(
            mosquitto,
            [
                ("supervisor/h1/agent", sign_record(secret, "supervisor/h1/agent", real)),
                ("supervisor/h1/bot/state", sign_record(secret, "supervisor/h1/bot/state", {"host": "h1", **running})),
                ("supervisor/h1/ghost/state", {"host": "h1", **running}),
                ("supervisor/fake/agent", {"host": "fake", "state": "online", "ts": now}),
                ("supervisor/fake/x/state", {"host": "fake", **running}),
                ("supervisor/h1/agent", {"host": "h1", "state": "offline", "ts": now}),  # a stranger's, after
                # Last, so that once it is seen everything before it has been handled.
                (
                    "supervisor/h1/last/state",
                    sign_record(secret, "supervisor/h1/last/state", {"host": "h1", **running}),
                ),
            ],
        )

        def view() -> dict[str, t.Any] | None:
            snap = monitor.snapshot()
            instances = {i["target"]: (i["state"], i["trusted"], i["health"]) for i in snap["instances"]}
            return snap if "h1/last" in instances else None

        snap = wait_until(view, message="the last record")
        hosts = {h["host"]: (h["state"], h["online"], h["trusted"]) for h in snap["hosts"]}
        assert hosts == {"h1": ("online", True, True), "fake": ("untrusted", False, False)}
        instances = {i["target"]: (i["state"], i["trusted"], i["health"]) for i in snap["instances"]}
        assert instances == {
            "h1/bot": ("running", True, "ok"),
            "h1/last": ("running", True, "ok"),
            "h1/ghost": ("untrusted", False, "off"),
            "fake/x": ("untrusted", False, "off"),
        }
        reply = monitor.command("fake", "x", "stop", {})
        assert not reply["ok"] and "untrusted" in reply["msg"] and reply["status"] is None
    finally:
        monitor.stop()


def test_waiting_login_has_its_own_colour_and_shows_the_process(fleet: Fleet, browser: Browser, tmp_path: Path) -> None:
    origin = tmp_path / "lifecycle-origin"
    make_origin(origin, {"bot.py": (DATA / "lifecycle_bot.py").read_text()})
    fleet.manager.new("lg", str(RECIPES / "login.yaml"), repo=str(origin))
    fleet.manager.start(["lg"])  # returns at the login dialog
    fleet.start_agent()
    _, url = fleet.start_dashboard(fleet.home)
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    pill = 'tr[data-target="host-1/lg"] td.state .pill'
    wait_page(page, f"() => document.querySelector('{pill}')?.textContent === 'waiting-login'")
    assert "state-waiting-login" in (page.get_attribute(pill, "class") or "")
    assert "log in" in (page.get_attribute(pill, "title") or "")
    colours = page.evaluate(
        f"() => [getComputedStyle(document.querySelector('{pill}')).color,"
        " getComputedStyle(document.documentElement).getPropertyValue('--yellow').trim()]"
    )
    assert colours[0] == "rgb(210, 153, 34)" and colours[1] == "#d29922", colours
    assert row(page, "host-1/lg", "pid") == str(fleet.pid("lg"))
    assert "starting or at login" in page.inner_text("#summary")
    fleet.manager.send("lg", "secret-pw")
    wait_page(page, f"() => document.querySelector('{pill}').textContent === 'running'")
    assert not errors, errors


# --- issue 12: correct through restarts and outages, state-aware, findable, bulk actions -----------------------


def live(page: Page) -> tuple[str, str]:
    """The header's connection dot (its class) and label."""
    return page.get_attribute("#live", "class") or "", page.inner_text("#live-text")


def targets(page: Page) -> list[str]:
    return t.cast(
        "list[str]", page.eval_on_selector_all("tbody tr[data-target]", "rs => rs.map(r => r.dataset.target)")
    )


def wait_state(page: Page, target: str, state: str, timeout: float = 30.0) -> None:
    wait_page(
        page,
        "([t, s]) => { const r = document.querySelector(`tr[data-target='${t}']`);"
        " return r && r.dataset.state === s; }",
        [target, state],
        timeout=timeout,
    )


def test_the_open_page_survives_a_restart_of_the_dashboard(fleet: Fleet, browser: Browser, mosquitto: Broker) -> None:
    fleet.add("mm-1")
    fleet.start_agent()
    port = free_port()
    dashboard, url = fleet.start_dashboard(fleet.home, port=port)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(url + "/")
    page.evaluate("window.__sameDocument = true")
    wait_state(page, "host-1/mm-1", "running")
    wait_page(page, "() => document.getElementById('live-text').textContent === 'live'")

    # The console screen is not a live region (it was re-read aloud every second).
    assert page.get_attribute("#screen", "aria-live") is None

    # The chart keeps its proportions, labels stay off the line, and a pause in the samples is a gap.
    publish(mosquitto, [("hbot/mm-1/performance", performance(float(i), 0.0)) for i in range(8)], gap=0.05)
    time.sleep(2.5)  # the pause is the scenario: eight samples, nothing for 2.5 s, eight more
    publish(mosquitto, [("hbot/mm-1/performance", performance(float(i), 0.0)) for i in range(8, 16)], gap=0.05)
    page.click('tr[data-target="host-1/mm-1"] button[data-verb="console"]')
    wait_page(page, "() => document.getElementById('chart-value').textContent.includes('16 samples')")
    assert page.get_attribute("#chart", "preserveAspectRatio") is None
    assert page.locator("#chart polyline").count() == 2
    label_right, line_left = page.evaluate(
        "() => { const c = document.getElementById('chart');"
        " const labels = [...c.querySelectorAll('text.axis')].slice(0, 2).map(n => n.getBBox());"
        " const xs = [...c.querySelectorAll('polyline')].flatMap(p => [...p.points].map(q => q.x));"
        " return [Math.max(...labels.map(b => b.x + b.width)), Math.min(...xs)]; }"
    )
    assert label_right <= line_left

    # PnL details: one row per controller, the message's own timestamp, a range, a tooltip.
    wait_page(page, "() => document.querySelectorAll('#controllers tbody tr').length === 2")
    cells = page.eval_on_selector_all(
        "#controllers tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))"
    )
    none = "\u2013"  # the page's "no figure"
    assert cells == [["ctrl-a", "+15.00", "+7.50", none, "1500.00"], ["ctrl-b", "0.00", none, none, "10.00"]]
    stamp = time.time() - 7200
    publish(mosquitto, [("hbot/mm-1/performance", {**performance(-1.0, 0.0), "timestamp": stamp * 1000})])
    wait_page(page, "() => document.getElementById('chart-value').textContent.includes('17 samples')")
    history = request(url, "GET", "/api/history/host-1/mm-1")[2]
    assert history["performance"][-1][0] == pytest.approx(stamp, abs=0.01)  # stamped as sent, in milliseconds
    page.click('.range button[data-range="3600"]')
    wait_page(page, "() => document.getElementById('chart-value').textContent.includes('16 samples')")
    assert page.get_attribute('.range button[data-range="3600"]', "aria-pressed") == "true"
    page.hover("#chart")
    assert " at " in (page.text_content("#chart text.hover") or "")
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")

    # Restart the dashboard under the page: it fetches a fresh CSRF token by itself.
    stop_process(dashboard)
    wait_page(page, "() => document.getElementById('live-text').textContent !== 'live'")
    fleet.start_dashboard(fleet.home, port=port)
    wait_page(page, "() => document.getElementById('live-text').textContent === 'live'", timeout=15)
    old = fleet.pid("mm-1")
    page.click('tr[data-target="host-1/mm-1"] button[data-verb="restart"]')
    page.click("#ask-ok")
    page.wait_for_selector("#replies li[data-verb='restart']", timeout=60_000)
    assert "restart ok" in page.inner_text("#replies li[data-verb='restart']")
    assert fleet.pid("mm-1") not in (None, old)
    assert page.evaluate("window.__sameDocument") is True
    page.close()


def test_a_dead_bot_an_outage_and_a_dead_agent(
    fleet: Fleet, browser: Browser, mosquitto: Broker, bot_origin: Path, tmp_path: Path
) -> None:
    fleet.add("mm-1")
    fleet.add_crasher("zz-bad", bot_origin)
    agent = fleet.start_agent("--fatal-after", "2", "--backoff", "0.1")
    dashboard, url = fleet.start_dashboard(fleet.home)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(url + "/")
    bad, good = "host-1/zz-bad", "host-1/mm-1"
    wait_state(page, bad, "fatal")
    wait_state(page, good, "running")
    assert health(page, bad) == "health-bad"
    assert targets(page) == [bad, good]  # problems first, though its name sorts last
    page.uncheck("#problems-first")
    wait_page(page, "(t) => document.querySelector('#fleet tbody tr:last-child').dataset.target === t", bad)
    page.check("#problems-first")

    # Why it died is on the row, wrapped inside the table.
    assert "marked fatal" in page.inner_text(f'tr[data-target="{bad}"] .alert')
    assert page.evaluate(
        "() => { const w = document.querySelector('.table-wrap'); return w.scrollWidth <= w.clientWidth; }"
    )

    # Buttons follow the state.
    def enabled(target: str, verb: str) -> bool:
        return page.is_enabled(f'tr[data-target="{target}"] button[data-verb="{verb}"]')

    assert [enabled(good, v) for v in ("start", "stop", "restart", "import", "console")] == [
        False,
        True,
        True,
        True,
        True,
    ]
    assert [enabled(bad, v) for v in ("start", "stop", "restart", "import", "console")] == [
        True,
        True,
        True,
        False,
        True,
    ]

    # A dead bot's console shows its last output, from its log; nothing can be typed into it.
    page.click(f'tr[data-target="{bad}"] button[data-verb="console"]')
    wait_page(page, "() => document.getElementById('screen').textContent.includes('crasher up')")
    assert "not running" in page.inner_text("#screen")
    assert page.is_disabled("#send-line")
    assert page.evaluate("() => window.scrollX") == 0

    # Its log: the last lines, searched, downloaded.
    page.click("#log-load")
    wait_page(page, "() => document.getElementById('log').textContent.includes('crasher up')")
    total = page.inner_text("#log").count("\n") + 1
    page.fill("#log-search", "CRASHER UP")
    wait_page(page, "() => document.getElementById('log-info').textContent.includes(' of ')")
    shown = page.inner_text("#log").split("\n")
    assert shown and all("crasher up" in line for line in shown), shown
    assert page.inner_text("#log-info").startswith(f"{len(shown)} of {total} lines")
    page.fill("#log-search", "no-such-line")
    wait_page(page, "() => document.getElementById('log').textContent === ''")
    with page.expect_download() as download_info:
        page.click("#log-download")
    download = download_info.value
    assert download.suggested_filename == "host-1-zz-bad.log"
    saved = tmp_path / "saved.log"
    download.save_as(saved)
    assert "crasher up" in saved.read_text()

    # Each agent event is kept once, though it also arrives as Hummingbot's notify.
    messages = request(url, "GET", "/api/history/host-1/zz-bad")[2]["messages"]
    texts = [m["text"] for m in messages if m["kind"] in ("event", "notify")]
    assert any("marked fatal" in text for text in texts), texts
    assert len(texts) == len(set(texts)), texts
    page.keyboard.press("Escape")

    # Broker outage: the header says so (not "live"), and the fatal bot stays red and counted.
    stop_process(mosquitto.process)
    wait_page(page, "() => document.getElementById('live-text').textContent === 'broker down'", timeout=15)
    assert live(page)[0] == "dot warn"
    assert health(page, bad) == "health-bad"
    assert page.inner_text(".sum.bad b") == "1"
    broker = start_mosquitto(tmp_path / "broker", port=mosquitto.port)
    try:
        # Back: green and "live" again, without a reload.
        wait_page(
            page,
            "() => document.getElementById('live-text').textContent === 'live'"
            " && document.getElementById('live').className === 'dot on'",
            timeout=45,
        )
        # The agent dies and the broker restarts with no retained messages: the dashboard remembers the host.
        stop_process(agent)
        stop_process(dashboard)
        stop_process(broker.process)
        broker = start_mosquitto(tmp_path / "broker", port=mosquitto.port)
        _, url = fleet.start_dashboard(fleet.home)
        page.goto(url + "/")
        wait_page(page, "() => document.querySelectorAll('tbody tr[data-target]').length === 2")
        assert targets(page) == [bad, good]  # still a problem, still first
        assert row(page, good, "state") == "offline"
        assert health(page, bad) == "health-bad"
        assert "host-1" in page.inner_text("#hosts .chip.offline")
        assert page.is_disabled(f'tr[data-target="{good}"] button[data-verb="console"]')
    finally:
        stop_process(broker.process)
    page.close()


def test_phone_layout_and_the_stop_confirmation(fleet: Fleet, browser: Browser, tmp_path: Path) -> None:
    fleet.add("mm-1")
    fleet.start_agent()
    _, url = fleet.start_dashboard(fleet.home)
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(url + "/")
    target = "host-1/mm-1"
    wait_state(page, target, "running")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    stop = f'tr[data-target="{target}"] button[data-verb="stop"]'
    box = page.locator(stop).bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    assert box["width"] >= 40 and box["height"] >= 40
    for control in page.locator(f'tr[data-target="{target}"] button, tr[data-target="{target}"] input').all():
        size = control.bounding_box()
        assert size is not None and size["width"] >= 40 and size["height"] >= 40, control
    if os.environ.get("DASHBOARD_SCREENSHOT_PHONE"):
        page.screenshot(path=os.environ["DASHBOARD_SCREENSHOT_PHONE"])

    page.click(stop)
    assert page.inner_text("#ask-title") == "Stop mm-1 on host-1?"
    assert page.evaluate("() => document.activeElement.id") == "ask-cancel"
    for button in ("#ask-ok", "#ask-cancel"):
        box = page.locator(button).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, button
    pid = fleet.pid("mm-1")
    page.keyboard.press("Enter")  # on Cancel: nothing is stopped
    page.wait_for_selector("#ask", state="hidden")
    assert fleet.pid("mm-1") == pid

    page.click(stop)
    page.click("#ask-ok")
    wait_state(page, target, "stopped", timeout=60)
    assert fleet.pid("mm-1") is None
    assert page.is_disabled(stop)
    assert page.is_enabled(f'tr[data-target="{target}"] button[data-verb="start"]')
    page.close()


def test_find_sort_and_stop_a_filtered_set(fleet: Fleet, browser: Browser) -> None:
    fleet.add("mm-1", "mm-2", "arb-1")
    fleet.start_agent()
    _, url = fleet.start_dashboard(fleet.home)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(url + "/")
    for name in ("mm-1", "mm-2", "arb-1"):
        wait_state(page, f"host-1/{name}", "running")
    assert targets(page) == ["host-1/arb-1", "host-1/mm-1", "host-1/mm-2"]

    # By keyboard: the table is one tab stop (a row), arrow keys move between rows.
    def focused() -> str:
        return str(page.evaluate("() => document.activeElement.closest('tr')?.dataset.target || ''"))

    presses = 0
    while not focused():
        page.keyboard.press("Tab")
        presses += 1
        assert presses <= 30, "the table is not reachable by Tab"
    # The tab stop is whichever row was first when the table was first drawn (rows come as their bots
    # report, in an order the machine's speed decides), so Home, not the first Tab, reaches the top.
    assert focused() in {"host-1/arb-1", "host-1/mm-1", "host-1/mm-2"}
    page.keyboard.press("Home")
    assert focused() == "host-1/arb-1"
    page.keyboard.press("End")
    assert focused() == "host-1/mm-2"
    page.keyboard.press("ArrowUp")
    assert focused() == "host-1/mm-1"
    page.keyboard.press("Tab")  # into that row's own controls
    assert focused() == "host-1/mm-1" and page.evaluate("() => document.activeElement.tagName") == "INPUT"
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    wait_page(page, "() => document.getElementById('detail-title').textContent === 'host-1/mm-1'")
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")

    page.click('th[data-sort="instance"] button')
    page.click('th[data-sort="instance"] button')
    wait_page(page, "() => document.querySelector('th[data-sort=instance]').ariaSort === 'descending'")
    assert targets(page) == ["host-1/mm-2", "host-1/mm-1", "host-1/arb-1"]
    page.fill("#search", "mm")
    wait_page(page, "() => document.querySelectorAll('tbody tr[data-target]').length === 2")
    assert targets(page) == ["host-1/mm-2", "host-1/mm-1"]
    page.select_option("#filter-state", "running")
    page.click("#select-matching")
    wait_page(page, "() => document.getElementById('bulk-count').textContent === '2 selected'")

    arb = fleet.pid("arb-1")
    page.click('#bulk [data-bulk="stop"]')
    assert page.inner_text("#ask-title") == "Stop 2 bots on host host-1?"
    assert page.inner_text("#ask-list").split("\n") == ["mm-1 on host-1", "mm-2 on host-1"]
    assert page.evaluate("() => document.activeElement.id") == "ask-cancel"
    page.click("#ask-ok")
    wait_page(page, "() => document.querySelectorAll('#replies li[data-verb=stop]').length === 2", timeout=60)
    replies = page.inner_text("#replies")
    assert "host-1/mm-1 stop ok" in replies and "host-1/mm-2 stop ok" in replies
    assert fleet.pid("mm-1") is None and fleet.pid("mm-2") is None
    assert fleet.pid("arb-1") == arb

    page.select_option("#filter-state", "stopped")
    wait_page(page, "() => document.querySelectorAll('tbody tr[data-target]').length === 2")
    page.fill("#search", "")
    page.select_option("#filter-state", "")
    page.check("#group-host")
    wait_page(page, "() => document.querySelectorAll('tbody tr[data-target]').length === 3")
    assert page.inner_text("tbody tr.group").startswith("host-1 · 3 bots")
    if os.environ.get("DASHBOARD_SCREENSHOT_WIDE"):
        page.click('tr[data-target="host-1/arb-1"] button[data-verb="console"]')
        wait_page(page, "() => document.getElementById('screen').textContent.includes(\"example-bot 'arb-1' ready\")")
        page.mouse.move(0, 0)
        page.screenshot(path=os.environ["DASHBOARD_SCREENSHOT_WIDE"], full_page=True)
    page.close()


def test_axe_finds_no_serious_or_critical_violations(
    fleet: Fleet, browser: Browser, bot_origin: Path, axe_source: str, mosquitto: Broker
) -> None:
    fleet.add("mm-1")
    fleet.add_crasher("bad-1", bot_origin)
    fleet.start_agent("--fatal-after", "2", "--backoff", "0.1")
    _, url = fleet.start_dashboard(fleet.home)
    # Enough lines that the console's notification list scrolls.
    publish(mosquitto, [("hbot/mm-1/log", {"msg": f"line {i}", "level_name": "INFO"}) for i in range(60)])
    for viewport in ({"width": 1440, "height": 900}, {"width": 390, "height": 844}):
        # axe is injected as a script; the page's CSP (rightly) allows none but its own.
        context = browser.new_context(viewport=viewport, bypass_csp=True)  # type: ignore[arg-type]
        page = context.new_page()
        page.goto(url + "/")
        wait_state(page, "host-1/bad-1", "fatal")
        wait_state(page, "host-1/mm-1", "running")
        page.add_script_tag(content=axe_source)
        # A bot restarted after a crash: a 'running' pill on a red row (for 15 s).
        pid = fleet.pid("mm-1")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_page(
            page,
            "() => { const r = document.querySelector(`tr[data-target='host-1/mm-1']`);"
            " return r.classList.contains('health-bad') && r.dataset.state === 'running'; }",
            timeout=15,
        )
        for step in ("table", "console"):
            if step == "console":
                page.click('tr[data-target="host-1/mm-1"] button[data-verb="console"]')
                wait_page(page, "() => document.getElementById('screen').textContent.includes('ready')")
                wait_page(
                    page,
                    "() => { const s = document.getElementById('stream'); return s.scrollHeight > s.clientHeight; }",
                )
            result = page.evaluate(
                "() => axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map("
                "v => ({id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help,"
                " target: v.nodes[0].target.join(' ')})))"
            )
            bad = [v for v in result if v["impact"] in ("serious", "critical")]
            assert bad == [], (viewport, step, bad)
        context.close()


class Receiver:
    """A local webhook receiver: an HTTP server on loopback that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        import http.server
        import queue
        import threading

        self.bodies: queue.Queue[t.Any] = queue.Queue()
        bodies = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                bodies.put((self.path, json.loads(self.rfile.read(length))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: t.Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def next_matching(self, needle: str, timeout: float = 20.0) -> tuple[str, t.Any]:
        deadline = time.monotonic() + timeout
        while True:
            path, body = self.bodies.get(timeout=max(0.01, deadline - time.monotonic()))
            if needle in body.get("text", ""):
                return path, body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_url_must_be_http(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.toml"
    path.write_text('[dashboard]\nwebhook_url = "file:///etc/passwd"\n')
    with pytest.raises(DashboardError, match=r"key 'dashboard\.webhook_url': must be an http:// or https:// URL"):
        load_settings(path, {})
    path.write_text('[dashboard]\nwebhook_url = "https://hooks.example/services/T0/B0/secret"\n')
    settings = load_settings(path, {})
    assert settings.webhook_url == "https://hooks.example/services/T0/B0/secret"
    assert "secret" not in repr(settings)


def test_alerts_reach_a_local_webhook_and_the_page(fleet: Fleet, browser: Browser, tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        home = tmp_path / "dash-home"
        home.mkdir()
        (home / "dashboard.toml").write_text(f'[dashboard]\nwebhook_url = "{receiver.url}/hooks/secret-token"\n')
        fleet.add("mm-1")
        agent = fleet.start_agent()
        _, url = fleet.start_dashboard(home)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url + "/")
        wait_state(page, "host-1/mm-1", "running")
        wait_page(page, "() => document.getElementById('webhook-text').textContent.startsWith('webhook: ')")
        assert page.inner_text("#webhook-text") == f"webhook: {receiver.url}/…"  # the secret path is not shown

        # The test button.
        page.click("#alert-test")
        path, body = receiver.next_matching("test alert")
        assert path == "/hooks/secret-token"
        assert body == {"text": "bot-supervisor: test alert from the dashboard", "content": body["text"]}
        wait_page(page, "() => document.getElementById('alert-test-result').textContent === 'sent (HTTP 204)'")

        # A bot crashing, then its host going offline: each reaches the webhook and the page.
        pid = fleet.pid("mm-1")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, body = receiver.next_matching("host-1/mm-1: crashed")
        assert body["content"] == body["text"]
        wait_page(page, "() => document.getElementById('alerts').textContent.includes('host-1/mm-1: crashed')")
        stop_process(agent)
        receiver.next_matching("host host-1 went offline")
        wait_page(page, "() => document.getElementById('alerts').textContent.includes('host host-1 went offline')")
        page.close()
    finally:
        receiver.close()


# --- issue 21: an operator's whole day ------------------------------------------------------------


def printed_password(log: Path) -> list[str]:
    """The password lines a dashboard printed at start (indented, after the 'shown only this once' line)."""
    lines = log.read_text(errors="replace").splitlines()
    return [lines[i + 1].strip() for i, line in enumerate(lines[:-1]) if "shown only this once" in line]


def test_a_first_start_makes_a_password_and_strangers_get_no_control_and_no_streams(
    fleet: Fleet, browser: Browser, tmp_path: Path
) -> None:
    fleet.add("mm-1")
    fleet.start_agent()
    home = tmp_path / "dash-home"
    home.mkdir()
    port = free_port()
    dashboard, url = fleet.start_dashboard(home, port=port, insecure=False)
    log = fleet.processes[-1][2]
    wait_until(lambda: printed_password(log), timeout=10, message="the dashboard prints its new password")
    [password] = printed_password(log)
    config = home / "dashboard.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    stored = load_settings(config, {}).password_hash
    assert stored is not None and verify_password(password, stored) and password not in config.read_text()

    # A local process without the password (uid nobody, say) gets no token, no command and no stream.
    status, _, session = request(url, "GET", "/api/session")
    assert status == 200 and session["login_required"] is True and session["csrf"] is None
    command = {"target": "host-1/mm-1", "verb": "stop", "data": {}}
    assert request(url, "POST", "/api/command", command)[0] == 403

    # The printed link logs the browser in and leaves no password in the address bar.
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(f"{url}/#password={password}")
    wait_state(page, "host-1/mm-1", "running")
    assert "password" not in page.url
    streams = [open_stream(url) for _ in range(MAX_STREAMS_PER_CLIENT + 1)]
    try:
        assert {status for _, status in streams} == {403}
    finally:
        for sock, _ in streams:
            sock.close()
    fleet.manager.stop(["mm-1"])  # the operator's stream still carries news
    wait_state(page, "host-1/mm-1", "stopped")
    assert live(page)[1] == "live"
    page.close()

    # Shown once: a second start keeps the stored hash and prints nothing.
    stop_process(dashboard)
    fleet.start_dashboard(home, port=port, insecure=False)
    assert printed_password(fleet.processes[-1][2]) == []
    assert load_settings(config, {}).password_hash == stored

    # Without a password, only the loudly named option serves, and says so.
    other = tmp_path / "other-home"
    other.mkdir()
    fleet.start_dashboard(other, insecure=True)
    assert not (other / "dashboard.toml").exists()
    wait_until(lambda: "INSECURE: no login" in fleet.processes[-1][2].read_text(), timeout=10, message="a warning")
    store = Store(tmp_path / "d.sqlite")
    try:
        with pytest.raises(DashboardError, match=r"without a password: any local user .* --insecure-no-login"):
            Dashboard(
                load_agent_config(None, {}, {"url": "mqtt://127.0.0.1:1"}), load_settings(other / "x", {}), "0", store
            )
    finally:
        store.close()


def test_seven_tabs_share_one_stream_and_commands_never_wait_behind_it(fleet: Fleet, browser: Browser) -> None:
    fleet.add("mm-1", "arb-2")
    fleet.start_agent()
    _, url = fleet.start_dashboard(fleet.home)
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        tabs = []
        for _ in range(7):  # Chromium opens at most 6 connections to one host
            page = context.new_page()
            page.goto(url + "/")
            tabs.append(page)
        for page in tabs:  # the 7th too: its table fills from the one shared stream
            wait_state(page, "host-1/arb-2", "running")
        tabs[0].click('tr[data-target="host-1/mm-1"] button[data-verb="stop"]')
        tabs[0].click("#ask-ok")
        tabs[0].wait_for_selector("#replies li[data-verb='stop']", timeout=60_000)
        assert "stop ok" in tabs[0].inner_text("#replies li[data-verb='stop']")
        assert fleet.pid("mm-1") is None
        for page in tabs:
            wait_state(page, "host-1/mm-1", "stopped")
        tabs[-1].wait_for_selector("#replies li[data-verb='stop']")  # the reply shows in the other tabs too
        assert "stop ok" in tabs[-1].inner_text("#replies li[data-verb='stop']")
        # Closing the tabs leaves the last one live.
        for page in tabs[:-1]:
            page.close()
        fleet.manager.start(["mm-1"])
        wait_state(tabs[-1], "host-1/mm-1", "running")
        assert live(tabs[-1])[1] == "live"
    finally:
        context.close()
    # A browser without SharedWorker (Chrome on Android) opens a stream per tab and works the same.
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        context.add_init_script("delete window.SharedWorker")
        page = context.new_page()
        page.goto(url + "/")
        wait_state(page, "host-1/mm-1", "running")
        assert live(page)[1] == "live" and page.evaluate("() => 'SharedWorker' in window") is False
    finally:
        context.close()


def test_logins_survive_a_restart_and_apply_to_every_tab(fleet: Fleet, browser: Browser, tmp_path: Path) -> None:
    fleet.add("mm-1")
    fleet.start_agent()
    home = tmp_path / "dash-home"
    home.mkdir()
    (home / "dashboard.toml").write_text(f'[dashboard]\npassword_hash = "{hash_password(PASSWORD)}"\n')
    port = free_port()
    dashboard, url = fleet.start_dashboard(home, port=port, insecure=False)
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        first, second = context.new_page(), context.new_page()
        for page in (first, second):
            page.goto(url + "/")
            page.wait_for_selector("#login-form", state="visible")
        first.fill("#password", PASSWORD)
        first.click("#login-button")
        wait_state(first, "host-1/mm-1", "running")
        wait_state(second, "host-1/mm-1", "running")  # logged in by the first tab, nothing typed
        [cookie] = context.cookies()
        sessions = home / "dashboard-sessions.json"
        assert sessions.stat().st_mode & 0o777 == 0o600
        assert cookie["value"] not in sessions.read_text()  # only the token's digest is kept

        second.evaluate("window.__sameDocument = true")
        stop_process(dashboard)
        wait_page(second, "() => document.getElementById('live-text').textContent !== 'live'")
        fleet.start_dashboard(home, port=port, insecure=False)
        for page in (first, second):
            wait_page(page, "() => document.getElementById('live-text').textContent === 'live'", timeout=15)
            assert page.is_hidden("#login-form")
        old = fleet.pid("mm-1")
        second.click('tr[data-target="host-1/mm-1"] button[data-verb="restart"]')
        second.click("#ask-ok")
        second.wait_for_selector("#replies li[data-verb='restart']", timeout=60_000)
        assert "restart ok" in second.inner_text("#replies li[data-verb='restart']")
        assert fleet.pid("mm-1") not in (None, old)
        assert second.evaluate("window.__sameDocument") is True

        first.click("#logout")
        second.wait_for_selector("#login-form", state="visible")  # logged out everywhere
        assert second.is_hidden("#app")
    finally:
        context.close()


def test_a_bot_restarted_again_and_again_flaps_until_it_has_run_a_while(tmp_path: Path) -> None:
    defaults = Flapping()
    assert (defaults.restarts, defaults.window, defaults.settle) == (3, 600, 300)  # as the README says
    settings = load_settings(tmp_path / "none.toml", {})
    assert (settings.flap_restarts, settings.flap_window, settings.flap_settle) == (3, 600, 300)
    (tmp_path / "bad.toml").write_text("[dashboard]\nflap_restarts = 0\n")
    with pytest.raises(DashboardError, match=r"'dashboard\.flap_restarts' must be a positive whole number, not 0"):
        load_settings(tmp_path / "bad.toml", {})
    flapping = Flapping(restarts=3, window=60, settle=30)
    key = ("h", "b")
    flapping.restarted(key, 0, 1, 100)
    flapping.restarted(key, 1, 2, 110)
    assert flapping.flapping(key, 111) is None  # two restarts are not yet a pattern
    flapping.restarted(key, 2, 3, 120)
    assert flapping.flapping(key, 121) == (3, 100)
    assert flapping.flapping(key, 149) == (3, 100)
    assert flapping.flapping(key, 150) is None  # ran 30 s without a restart
    flapping.restarted(key, 3, 1, 151)  # a reset counter (the bot was made anew) is no restart
    flapping.restarted(key, 3, 3, 151)
    assert flapping.flapping(key, 152) is None
    flapping.restarted(key, 3, 9, 200)  # several restarts between two records count (up to the threshold)
    assert flapping.flapping(key, 201) == (3, 200)
    flapping.forget(key)
    assert flapping.flapping(key, 201) is None


def alert_view(*bad: str, offline: tuple[str, ...] = (), connected: bool = True) -> dict[str, t.Any]:
    """A snapshot with bots ``HOST/NAME`` (bad when listed with ``=why``) for the alerter."""
    items = []
    for spec in bad:
        target, _, why = spec.partition("=")
        host = target.split("/")[0]
        items.append(
            {"target": target, "host": host, "health": "bad" if why else "ok", "alert": why, "state": "running"}
        )
    hosts = {i["host"] for i in items} | set(offline)
    return {
        "connected": connected,
        "broker": "mqtt://127.0.0.1:1883",
        "hosts": [{"host": h, "online": h not in offline} for h in sorted(hosts)],
        "instances": items,
    }


def test_alerts_are_one_per_problem_grouped_per_host_with_one_all_clear(tmp_path: Path) -> None:
    defaults = Alerter(None, print)
    assert (defaults.clear_after, defaults.settle_after, defaults.host_grace) == (10, 10, 5)  # as the README says
    store = Store(tmp_path / "d.sqlite")
    try:  # the last 1000 are kept
        for i in range(1005):
            store.add_alert({"kind": "problem", "target": None, "text": f"alert {i}"}, ts=float(i))
        kept, unacked = store.alerts(limit=2000)
        assert len(kept) == unacked == 1000 and kept[0]["text"] == "alert 1004"
    finally:
        store.close()
    clock = Clock()
    sent: list[str] = []
    alerter = Alerter(
        None, lambda a: sent.append(a["text"]), clock=clock, clear_after=30, settle_after=10, host_grace=5
    )
    fine = alert_view("h1/a=", "h1/b=", "h2/c=")
    alerter.observe(alert_view("h3/z=crashed"))  # bad when first seen: bad before we looked (and never cleared)
    alerter.observe(fine)
    alerter.observe(alert_view("h1/a=crashed (exit code 3), restarted", "h1/b=crashed", "h2/c="))
    assert sent == ["h1: 2 need attention: a crashed (exit code 3), restarted; b crashed"]
    # Flickering good and bad, then flapping: the same problem, counted, never re-sent.
    for why in ("", "crashed (exit code 3), restarted", "", "flapping: 3 restarts within 10 min"):
        clock.now += 5
        alerter.observe(alert_view(f"h1/a={why}", "h1/b=crashed", "h2/c="))
    assert len(sent) == 1
    clock.now += 1
    alerter.observe(fine)
    clock.now += 29
    alerter.observe(fine)
    assert len(sent) == 1  # fine for 29 s only
    clock.now += 1
    alerter.observe(fine)
    a = "a all clear (was crashed, flapping, for 21 s, bad again 2 times)"
    assert sent[1:] == [f"h1: 2 all clear: {a}; b all clear (was crashed, for 21 s)"]
    # A host going offline is one alert for the host, not one per bot; then one "back online".
    clock.now += 1
    alerter.observe(alert_view("h1/a=", "h1/b=", "h2/c=no heartbeat", offline=("h2",)))
    assert sent[2:] == []  # offline for a moment only, so far
    clock.now += 5
    alerter.observe(alert_view("h1/a=", "h1/b=", "h2/c=no heartbeat", offline=("h2",)))
    assert sent[2:] == ["host h2 went offline"]
    clock.now += 35
    alerter.observe(fine)
    clock.now += 30
    alerter.observe(fine)
    assert sent[3:] == ["host h2 is back online (offline for 40 s)"]
    # The dashboard losing the broker is one alert about the dashboard; hosts are judged again only once settled.
    del sent[:]
    alerter.observe(alert_view("h1/a=", "h1/b=", "h2/c=", offline=("h1",)))  # the broker's going: h1's will first
    for _ in range(3):
        clock.now += 5
        alerter.observe(alert_view("h1/a=", "h1/b=", "h2/c=", offline=("h1", "h2"), connected=False))
    clock.now += 5
    alerter.observe(alert_view("h1/a=", "h1/b=", "h2/c=", offline=("h1", "h2")))  # records not back yet
    clock.now += 11
    alerter.observe(alert_view("h1/a=", "h1/b=", "h2/c="))
    assert sent == [
        "the dashboard lost the broker mqtt://127.0.0.1:1883; the fleet's state is unknown until it is back",
        "the dashboard reached the broker again",
    ]


def test_a_crash_looping_bot_is_flapping_with_one_alert_and_one_all_clear(
    fleet: Fleet, browser: Browser, bot_origin: Path, tmp_path: Path
) -> None:
    receiver = Receiver()
    try:
        switch = tmp_path / "keep-crashing"
        switch.touch()
        recipe = tmp_path / "flapper.yaml"
        recipe.write_text(
            (RECIPES / "crasher.yaml")
            .read_text()
            .replace("name: crasher", "name: flapper")
            .replace("sys.exit(3)", f"os.path.exists('{switch}') and sys.exit(3); time.sleep(3600)")
            .replace("import sys,time", "import os,sys,time")
        )
        home = tmp_path / "dash-home"
        home.mkdir()
        (home / "dashboard.toml").write_text(
            f'[dashboard]\nwebhook_url = "{receiver.url}/hook"\nflap_restarts = 3\nflap_settle = 6\n'
        )
        fleet.add("mm-1")
        fleet.start_agent("--fatal-after", "50", "--backoff", "0.2")  # it keeps restarting, never 'fatal'
        _, url = fleet.start_dashboard(home)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url + "/")
        wait_state(page, "host-1/mm-1", "running")
        fleet.manager.new("flap-1", str(recipe), repo=str(bot_origin))
        fleet.manager.start(["flap-1"])

        # Between crashes it runs, yet it is a problem: 'flapping', under "Need attention".
        wait_page(
            page,
            "() => document.querySelector(`tr[data-target='host-1/flap-1'] .pill`)?.textContent === 'flapping'",
            timeout=60,
        )
        assert health(page, "host-1/flap-1") == "health-bad"
        assert "restarts within" in row(page, "host-1/flap-1", "state")
        page.select_option("#filter-state", "problems")
        wait_page(page, "() => document.querySelectorAll('tbody tr[data-target]').length === 1")
        assert targets(page) == ["host-1/flap-1"]

        # It stops crashing: once it has run a while, one all-clear ends the one alert.
        switch.unlink()
        sent: list[str] = []
        while not any("host-1/flap-1: all clear" in text for text in sent):
            sent.append(receiver.bodies.get(timeout=90)[1]["text"])
        [problem, clear] = [text for text in sent if "flap-1" in text]  # one alert, one all-clear
        assert problem.startswith("bot-supervisor: host-1/flap-1: crashed (exit code 3)")
        assert "flapping" in clear.partition("(was ")[2]
        wait_page(page, "() => document.querySelectorAll('tbody tr[data-target]').length === 0")
        alerts = page.eval_on_selector_all("#alerts li", "ls => ls.map(l => l.textContent)")
        assert len([a for a in alerts if "flap-1" in a]) == 2, alerts  # one problem, one all-clear
        page.close()
    finally:
        receiver.close()


def test_a_broker_restart_is_one_alert_about_the_dashboard_and_no_false_alarm(
    fleet: Fleet, browser: Browser, mosquitto: Broker, tmp_path: Path
) -> None:
    receiver = Receiver()
    broker = None
    try:
        home = tmp_path / "dash-home"
        home.mkdir()
        (home / "dashboard.toml").write_text(f'[dashboard]\nwebhook_url = "{receiver.url}/hook"\n')
        fleet.add("mm-1", "arb-2")
        fleet.start_agent()
        _, url = fleet.start_dashboard(home)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url + "/")
        wait_state(page, "host-1/mm-1", "running")
        stop_process(mosquitto.process)
        wait_page(page, "() => document.getElementById('live-text').textContent === 'broker down'", timeout=15)
        time.sleep(3)  # the outage is the scenario: heartbeats stop reaching the dashboard for a while
        broker = start_mosquitto(tmp_path / "broker", port=mosquitto.port)
        back = time.time()
        wait_page(page, "() => document.getElementById('live-text').textContent === 'live'", timeout=45)

        def agent_back() -> bool:  # its heartbeats reach the dashboard again, so a crash will be seen
            items = request(url, "GET", "/api/snapshot")[2]["instances"]
            return any(i["instance"] == "mm-1" and (i["heartbeat_ts"] or 0) > back for i in items)

        wait_until(agent_back, timeout=60, message="the agent's heartbeats come through the new broker")
        sent: list[str] = []
        while not any("reached the broker again" in text for text in sent):
            sent.append(receiver.bodies.get(timeout=60)[1]["text"])
        # A real crash now is the next alert: no false one about the host or a healthy bot comes before it.
        pid = fleet.pid("mm-1")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        while not any("host-1/mm-1: crashed" in text for text in sent):
            sent.append(receiver.bodies.get(timeout=60)[1]["text"])
        assert [text.removeprefix("bot-supervisor: ").split(";")[0].split(" (")[0] for text in sent] == [
            f"the dashboard lost the broker {mosquitto.url}",
            "the dashboard reached the broker again",
            "host-1/mm-1: crashed",
        ]
        page.close()
    finally:
        if broker is not None:
            stop_process(broker.process)
        receiver.close()


def test_console_lines_go_only_to_a_tab_showing_that_console(fleet: Fleet, browser: Browser, mosquitto: Broker) -> None:
    fleet.add("mm-1", "arb-2")
    fleet.start_agent()
    _, url = fleet.start_dashboard(fleet.home)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(url + "/")
    wait_state(page, "host-1/arb-2", "running")
    page.click('tr[data-target="host-1/mm-1"] button[data-verb="console"]')
    sock, status = open_stream(url)  # a tab with no console open, read raw
    try:
        assert status == 200
        sock.settimeout(0.2)
        lines = [("hbot/arb-2/log", {"msg": f"arb line {i}", "level_name": "INFO"}) for i in range(20)]
        publish(mosquitto, [*lines, ("hbot/mm-1/log", {"msg": "mm line", "level_name": "INFO"})])
        wait_page(page, "() => document.getElementById('stream').textContent.includes('mm line')")
        assert "arb line" not in page.inner_text("#stream")
        kept = request(url, "GET", "/api/messages/host-1/arb-2?after=0")[2]["messages"]
        assert [m["text"] for m in kept if "arb line" in m["text"]] == [f"arb line {i}" for i in range(20)]
        received = b""
        with contextlib.suppress(TimeoutError):  # what the stream had sent by the time the console showed the line
            while chunk := sock.recv(65536):
                received += chunk
        assert b"event: snapshot" in received
        assert b"arb line" not in received and b"mm line" not in received
        assert request(url, "GET", "/api/messages/host-1/arb-2?after=x")[0] == 400
    finally:
        sock.close()
        page.close()


def test_alerts_are_kept_shown_first_with_a_count_and_acknowledged(fleet: Fleet, browser: Browser) -> None:
    fleet.add("mm-1")
    fleet.start_agent()
    _, url = fleet.start_dashboard(fleet.home)
    wait_until(
        lambda: any(i["state"] == "running" for i in request(url, "GET", "/api/snapshot")[2]["instances"]),
        timeout=30,
        message="the dashboard sees mm-1 running",
    )
    # What is bad in the first view judged (10 s after connecting) was bad before the dashboard looked: no alert.
    # So the bot dies only once a view with it running has been judged.
    wait_until(lambda: request(url, "GET", "/api/alerts")[2]["judging"], timeout=30, message="alerts are on")
    judged = request(url, "GET", "/api/alerts")[2]["judged"]
    wait_until(lambda: request(url, "GET", "/api/alerts")[2]["judged"] > judged, timeout=30, message="a view judged")
    pid = fleet.pid("mm-1")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # no page is open yet
    wait_until(lambda: request(url, "GET", "/api/alerts")[2]["unacked"] == 1, timeout=30, message="an alert is kept")

    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        page, other = context.new_page(), context.new_page()
        for tab in (page, other):
            tab.goto(url + "/")
            wait_page(tab, "() => document.getElementById('alert-count').textContent === '1 alert'")
        assert "host-1/mm-1: crashed" in page.inner_text("#alerts li.bad")
        assert page.is_visible("#alert-ack-all")
        alerts_top = page.eval_on_selector("#alerts", "e => e.getBoundingClientRect().top")
        table_top = page.eval_on_selector("#fleet", "e => e.getBoundingClientRect().top")
        assert alerts_top < table_top < 900  # in sight, above the table
        page.click("#alerts li.bad button.ack")
        for tab in (page, other):  # acknowledged everywhere
            tab.wait_for_selector("#alert-count", state="hidden")
        assert page.is_hidden("#alert-ack-all")
        page.reload()
        page.wait_for_selector("#alerts li.acked")
        assert page.is_hidden("#alert-count")
        assert page.locator("#alerts li.acked button").count() == 0
        assert request(url, "POST", "/api/alerts/ack", {"all": True})[0] == 403  # no CSRF token
        token = {"X-CSRF-Token": request(url, "GET", "/api/session")[2]["csrf"]}
        status, _, body = request(url, "POST", "/api/alerts/ack", {"ids": ["x"]}, token)
        assert status == 400 and "send {ids" in body["error"]
    finally:
        context.close()


def test_a_pnl_no_longer_reported_is_stale_with_its_age_and_out_of_the_total(
    fleet: Fleet, browser: Browser, mosquitto: Broker
) -> None:
    fleet.add("mm-1", "arb-2")
    fleet.start_agent()
    _, url = fleet.start_dashboard(fleet.home)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(url + "/")
    wait_state(page, "host-1/arb-2", "running")
    wait_state(page, "host-1/mm-1", "running")
    stopped_at = time.time() - 600  # mm-1's strategy reported last ten minutes ago
    publish(
        mosquitto,
        [
            ("hbot/mm-1/performance", {**performance(100.0, 0.0), "timestamp": stopped_at}),
            ("hbot/arb-2/performance", performance(2.0, 0.5)),
        ],
    )
    wait_page(
        page, "() => document.querySelector(`tr[data-target='host-1/mm-1'] .pnl-value`)?.textContent.includes('+')"
    )
    wait_page(page, "() => document.getElementById('pnl-total').textContent === '+2.50'")
    assert "stale, 10m" in row(page, "host-1/mm-1", "pnl")
    assert "stale" in (page.get_attribute('tr[data-target="host-1/mm-1"] .pnl-value', "class") or "")
    assert "stale" not in row(page, "host-1/arb-2", "pnl")
    assert page.inner_text("#pnl-stale").strip() == "(1 stale left out)"
    page.close()


@pytest.mark.parametrize("width", [1280, 1366])
def test_laptop_widths_show_the_whole_table_and_a_row_click_opens_its_bot(
    fleet: Fleet, browser: Browser, mosquitto: Broker, width: int
) -> None:
    fleet.add("mm-1", "a-long-market-maker-name-1")
    fleet.start_agent()
    _, url = fleet.start_dashboard(fleet.home)
    stale = {**performance(-1234.5, 0.25), "timestamp": time.time() - 3600}  # the widest PnL cell: stale, 1h old
    publish(mosquitto, [("hbot/mm-1/performance", stale)])
    page = browser.new_page(viewport={"width": width, "height": 800})
    page.goto(url + "/")
    wait_state(page, "host-1/a-long-market-maker-name-1", "running")
    wait_state(page, "host-1/mm-1", "running")
    widths = page.evaluate(
        "() => { const w = document.querySelector('.table-wrap'); return [w.scrollWidth, w.clientWidth]; }"
    )
    assert widths[0] <= widths[1], widths
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    page.click('tr[data-target="host-1/mm-1"] td.instance .name')
    page.wait_for_selector("#detail", state="visible")
    assert page.inner_text("#detail-title") == "host-1/mm-1"
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")
    page.click('tr[data-target="host-1/mm-1"] td.uptime')
    page.wait_for_selector("#detail", state="visible")
    page.close()


def test_phone_bulk_bar_stays_in_reach_and_a_bad_card_is_red_as_a_whole(
    fleet: Fleet, browser: Browser, bot_origin: Path
) -> None:
    names = [f"bot-{i}" for i in range(8)]
    fleet.add(*names)
    fleet.add_crasher("bad-1", bot_origin)
    fleet.start_agent("--fatal-after", "2", "--backoff", "0.1")
    _, url = fleet.start_dashboard(fleet.home)
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(url + "/")
    wait_state(page, "host-1/bad-1", "fatal")
    for name in names:
        wait_state(page, f"host-1/{name}", "running")
    last = f'tr[data-target="host-1/{names[-1]}"]'
    page.locator(f"{last} td.sel input").scroll_into_view_if_needed()
    page.check(f"{last} td.sel input")
    top, bottom = page.eval_on_selector(
        "#bulk", "e => [e.getBoundingClientRect().top, e.getBoundingClientRect().bottom]"
    )
    assert top >= 0 and bottom <= 844, (top, bottom)
    assert page.is_enabled('#bulk [data-bulk="stop"]')
    page.click("#bulk-clear")
    # The fatal card: one red surface and one stripe on its left, none on its cells.
    card = 'tr[data-target="host-1/bad-1"]'
    styles = page.eval_on_selector(
        card,
        "tr => ({row: getComputedStyle(tr).backgroundColor, shadow: getComputedStyle(tr).boxShadow,"
        " cells: [...tr.cells].map(td => [getComputedStyle(td).backgroundColor, getComputedStyle(td).boxShadow])})",
    )
    assert styles["row"] != "rgba(0, 0, 0, 0)" and "inset" in styles["shadow"]
    assert all(bg == "rgba(0, 0, 0, 0)" and shadow == "none" for bg, shadow in styles["cells"]), styles
    page.close()


def test_the_view_lives_in_the_address_and_a_host_chip_filters(fleet: Fleet, browser: Browser) -> None:
    fleet.add("mm-1", "mm-2", "arb-1")
    fleet.start_agent()
    _, url = fleet.start_dashboard(fleet.home)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(url + "/")
    wait_state(page, "host-1/arb-1", "running")
    wait_state(page, "host-1/mm-2", "running")
    page.fill("#search", "mm")
    page.click('#fleet th[data-sort="instance"] button')
    page.click('#fleet th[data-sort="instance"] button')  # descending
    page.check("#group-host")
    wait_page(page, "() => location.search.includes('group=1')")
    assert targets(page) == ["host-1/mm-2", "host-1/mm-1"]
    page.reload()
    wait_state(page, "host-1/mm-1", "running")
    assert page.input_value("#search") == "mm" and page.is_checked("#group-host")
    assert targets(page) == ["host-1/mm-2", "host-1/mm-1"]

    # A host chip shows only that host's bots (and says so); a second click shows all again.
    page.fill("#search", "")
    page.click("#hosts .chip")
    wait_page(page, "() => location.search.includes('host=host-1')")
    assert page.get_attribute("#hosts .chip", "aria-pressed") == "true"
    assert page.input_value("#filter-host") == "host-1"
    page.reload()
    wait_page(page, "() => document.getElementById('filter-host').value === 'host-1'")  # its option came later
    page.click("#hosts .chip")
    wait_page(page, "() => !location.search.includes('host=')")
    assert page.get_attribute("#hosts .chip", "aria-pressed") == "false"
    page.close()


def test_a_skip_link_leads_to_the_first_bot_in_two_key_presses(fleet: Fleet, browser: Browser) -> None:
    fleet.add("mm-1", "arb-1")
    fleet.start_agent()
    _, url = fleet.start_dashboard(fleet.home)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(url + "/")
    wait_state(page, "host-1/mm-1", "running")
    wait_state(page, "host-1/arb-1", "running")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Go to the bots"
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.closest('tr')?.dataset.target") == "host-1/arb-1"
    page.close()


def test_a_hung_host_is_alerted_as_hung_not_as_gone() -> None:
    clock = Clock()
    sent: list[str] = []
    alerter = Alerter(
        None, lambda a: sent.append(a["text"]), clock=clock, clear_after=30, settle_after=10, host_grace=5
    )
    alerter.observe(alert_view("h1/a=", "h2/c="))
    view = alert_view("h1/a=", "h2/c=", offline=("h2",))
    view["hosts"] = [{**h, "state": "unresponsive"} if h["host"] == "h2" else h for h in view["hosts"]]
    alerter.observe(view)
    clock.now += 6
    alerter.observe(view)
    assert sent == ["host h2 stopped answering (its agent is connected but hung)"]


# --- a fleet larger than the window (issue 23): window + summary, /api/instances, freshness judged as heard ---------


def fleet_rows(hosts: int, per_host: int) -> list[dict[str, t.Any]]:
    return [
        {
            "target": f"sim-{h}/bot-{b:03d}",
            "host": f"sim-{h}",
            "instance": f"bot-{b:03d}",
            "state": "running",
            "health": "ok",
            "recipe": "bench",
            "heartbeat_ts": 100.0,
        }
        for h in range(hosts)
        for b in range(per_host)
    ]


def test_above_the_window_a_view_carries_its_first_rows_problems_first_and_a_summary_of_all() -> None:
    rows = fleet_rows(3, 250)
    # The last row of the default order crashed; two early ones are grey (their host is offline).
    rows[-1] = {**rows[-1], "state": "crashed", "health": "bad"}
    rows[1] = {**rows[1], "state": "offline", "health": "off"}
    rows[2] = {**rows[2], "state": "stale", "health": "off"}
    rows[3] = {**rows[3], "state": "stopped", "recipe": "other"}
    small = windowed(snapshot_of(*rows[:WINDOW]))
    assert small == snapshot_of(*rows[:WINDOW])  # a fleet of the window's size is sent whole, as before
    view = windowed(snapshot_of(*rows))
    shown = [row["target"] for row in view["instances"]]
    assert len(shown) == WINDOW
    assert shown[:4] == ["sim-2/bot-249", "sim-0/bot-001", "sim-0/bot-002", "sim-0/bot-000"]
    assert view["summary"] == {
        "total": 750,
        "shown": WINDOW,
        "groups": {"problems": 1, "offline": 2, "progress": 0, "running": 746, "stopped": 1},
        "counts": {"running": 746, "bad": 1, "progress": 0, "stopped": 1, "off": 2},
        "problem_hosts": {"sim-2": 1},
        "problem_hosts_more": 0,
        "recipes": ["bench", "other"],
        "recipes_more": 0,
    }
    # The stream: rows entering the window come whole, rows leaving it are removed, the summary follows.
    hub = Hub()
    q = hub.subscribe()
    assert q is not None
    hub.publish_snapshot(snapshot_of(*rows))
    event, first = read_frame(q)
    assert event == "snapshot"
    assert len(first["instances"]) == WINDOW
    assert first["summary"]["total"] == 750
    rows[-2] = {**rows[-2], "state": "exited", "health": "bad"}  # sim-2/bot-248 enters, sim-1/bot-248 leaves
    hub.publish_snapshot({**snapshot_of(*rows), "now": 2.0})
    event, delta = read_frame(q)
    assert event == "delta"
    assert [row["target"] for row in delta["instances"]] == ["sim-2/bot-248"]
    assert delta["instances"][0]["state"] == "exited"
    assert delta["removed"] == ["sim-1/bot-248"]
    assert delta["summary"]["problem_hosts"] == {"sim-2": 2}
    assert q.empty()


def test_above_the_window_heartbeat_times_are_sent_coarsely() -> None:
    rows = fleet_rows(3, 250)
    hub = Hub()
    q = hub.subscribe()
    assert q is not None
    hub.publish_snapshot(snapshot_of(*rows))
    read_frame(q)
    beat = [{**row, "heartbeat_ts": 110.0} if row["target"] == "sim-0/bot-000" else row for row in rows]
    hub.publish_snapshot({**snapshot_of(*beat), "now": 2.0})
    assert q.empty()  # 10 s newer: not worth a frame per tab
    beat = [{**row, "heartbeat_ts": 140.0} if row["target"] == "sim-0/bot-000" else row for row in rows]
    hub.publish_snapshot({**snapshot_of(*beat), "now": 3.0})
    assert read_frame(q)[1]["beats"] == {"sim-0/bot-000": 140.0}


def read_frame(q: t.Any) -> tuple[str, t.Any]:
    event, data = q.get_nowait().decode().split("\n")[:2]
    return event.removeprefix("event: "), json.loads(data.removeprefix("data: "))


def simulate_fleet(broker: Broker, hosts: int, per_host: int, *, ts: float, crashed: str | None = None) -> None:
    """Publish the retained agent and state records of ``hosts`` simulated agents, as real ones leave them."""
    messages: list[tuple[str, t.Any]] = []
    for h in range(hosts):
        host = f"sim-{h}"
        messages.append(
            (f"supervisor/{host}/agent", {"host": host, "state": "online", "ts": ts, "instances": per_host})
        )
        for b in range(per_host):
            name = f"bot-{h}-{b:03d}"
            state = "crashed" if f"{host}/{name}" == crashed else "running"
            record = {"state": state, "ts": ts, "refresh": 3600, "recipe": f"recipe-{b % 2}", "pid": 100 + b}
            messages.append((f"supervisor/{host}/{name}/state", record))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        sent = [client.publish(topic, json.dumps(payload), qos=1, retain=True) for topic, payload in messages]
        for info in sent:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def big_broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto with its per-client limits lifted, as the README advises for large fleets."""
    broker = start_mosquitto(tmp_path / "big-broker", extra_conf="max_inflight_messages 0\nmax_queued_messages 0\n")
    try:
        yield broker
    finally:
        stop_process(broker.process)


def get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=20)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_api_instances_pages_and_filters_a_large_fleet_and_refuses_bad_parameters(
    tmp_path: Path, big_broker: Broker
) -> None:
    simulate_fleet(big_broker, 3, 250, ts=time.time(), crashed="sim-2/bot-2-249")
    fleet = Fleet(tmp_path / "fleet", big_broker)
    try:
        _, url = fleet.start_dashboard(fleet.home)
        wait_until(lambda: request(url, "GET", "/api/instances?limit=1")[2]["total"] == 750, timeout=30)
        status, _, view = request(url, "GET", "/api/snapshot")
        assert status == 200
        assert len(view["instances"]) == WINDOW
        assert view["instances"][0]["target"] == "sim-2/bot-2-249"  # last by name, first as a problem
        assert view["summary"]["total"] == 750
        assert view["summary"]["counts"]["bad"] == 1
        assert view["summary"]["problem_hosts"] == {"sim-2": 1}
        assert len(request(url, "GET", "/api/snapshot?all=1")[2]["instances"]) == 750
        # Compressed when asked for; the same view.
        status, headers, raw = get(url, "/api/snapshot", {"Accept-Encoding": "gzip"})
        assert (status, headers["content-encoding"]) == (200, "gzip")
        assert json.loads(gzip.decompress(raw))["summary"]["total"] == 750
        # Filters and pages.
        page = request(url, "GET", "/api/instances?host=sim-1&offset=200&limit=100")[2]
        assert (page["total"], page["matching"], page["offset"], page["limit"]) == (750, 250, 200, 100)
        assert [row["target"] for row in page["instances"]] == [f"sim-1/bot-1-{b:03d}" for b in range(200, 250)]
        page = request(url, "GET", "/api/instances?q=BOT-2-00&recipe=recipe-1")[2]
        assert [row["target"] for row in page["instances"]] == [f"sim-2/bot-2-00{b}" for b in (1, 3, 5, 7, 9)]
        page = request(url, "GET", "/api/instances?state=problems")[2]
        assert [row["target"] for row in page["instances"]] == ["sim-2/bot-2-249"]
        assert request(url, "GET", "/api/instances?state=running&limit=1000")[2]["matching"] == 749
        for query, message in (
            ("limit=1001", "parameter 'limit' must be at most 1000."),
            ("limit=0", "parameter 'limit' must be 1 to 1000."),
            ("offset=-1", "parameter 'offset' must be a whole number (0 or more)."),
            ("state=dead", "parameter 'state' must be one of problems, offline, progress, running, stopped."),
            ("host=a/b", "parameter 'host' must be a host id: letters, digits, '-' and '_'."),
            ("host=a&host=b", "parameter 'host' given 2 times; give it once."),
            ("sort=host", "unknown parameter 'sort'. Known parameters: q, host, recipe, state, offset, limit."),
            (f"q={'x' * 201}", "parameter 'q' is longer than 200 characters."),
        ):
            status, _, body = request(url, "GET", f"/api/instances?{query}")
            assert (status, body) == (400, {"error": message}), query
        assert request(url, "GET", "/api/snapshot?all=2")[0] == 400
    finally:
        fleet.cleanup(show_logs=False)


def test_a_view_behind_the_broker_does_not_call_records_on_time_stale(tmp_path: Path, big_broker: Broker) -> None:
    """The network thread starved (here: held on purpose) while time passes: records waiting for it are on time."""
    clock = Clock(now=1000.0)
    simulate_fleet(big_broker, 4, 500, ts=1000.0)
    for h in range(4):  # these records say they are refreshed every 30 s
        publish_retained(
            big_broker, [(f"supervisor/sim-{h}/bot-{h}-000/state", {"state": "running", "ts": 1000.0, "refresh": 30})]
        )
    store = Store(tmp_path / "dashboard.sqlite")
    monitor = Monitor(load_agent_config(None, {}, {"url": big_broker.url}), store, Hub(), clock=clock)
    held, release = threading.Event(), threading.Event()

    def hold(topic: str, _change: t.Any) -> None:
        if topic.endswith("/hold/state"):
            held.set()
            release.wait(30)

    monitor.fleet.watch(on_state=hold)
    monitor.start()
    try:
        wait_until(lambda: len(monitor.snapshot()["instances"]) == 2000, timeout=30, message="every record")
        wait_until(lambda: monitor.fleet.view._heard == 1000.0, message="a probe came back")
        publish_retained(
            big_broker, [("supervisor/sim-0/hold/state", {"state": "running", "ts": 1000.0, "refresh": 30})]
        )
        assert held.wait(10)
        # 40 s later every agent has refreshed its records, which wait behind the held network thread.
        clock.now = 1040.0
        publish_retained(
            big_broker,
            [
                (f"supervisor/sim-{h}/bot-{h}-000/state", {"state": "running", "ts": 1039.0, "refresh": 30})
                for h in range(4)
            ],
        )
        time.sleep(3 * PROBE_SLACK)  # a probe sent at 1040 is overdue now: the view knows it is behind
        states = {row["target"]: row["state"] for row in monitor.snapshot()["instances"]}
        assert [target for target, state in states.items() if state != "running"] == []
        release.set()
        # Caught up: the refreshed records are fresh, and a record that really was not refreshed is stale.
        wait_until(lambda: monitor.fleet.view._heard == 1040.0, message="the view caught up")
        states = {row["target"]: row["state"] for row in monitor.snapshot()["instances"]}
        assert {target for target, state in states.items() if state == "stale"} == {"sim-0/hold"}
    finally:
        release.set()
        monitor.stop()
        store.close()


def publish_retained(broker: Broker, messages: list[tuple[str, t.Any]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"agent-{uuid.uuid4().hex[:8]}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, json.dumps(payload), qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_the_page_says_it_shows_n_of_m_and_a_host_filter_reads_that_host_from_the_server(
    tmp_path: Path, big_broker: Broker, browser: Browser
) -> None:
    simulate_fleet(big_broker, 3, 250, ts=time.time())
    fleet = Fleet(tmp_path / "fleet", big_broker)
    try:
        _, url = fleet.start_dashboard(fleet.home)
        wait_until(lambda: request(url, "GET", "/api/instances?limit=1")[2]["total"] == 750, timeout=30)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        try:
            page.goto(url + "/")
            page.wait_for_selector("#window-note:not([hidden])", timeout=20_000)
            wait_page(
                page, "() => document.querySelector('#window-note').textContent.includes('Showing 500 of 750 bots')"
            )
            assert len(targets(page)) == WINDOW
            assert "sim-2/bot-2-000" not in targets(page)  # beyond the window
            page.select_option("#filter-host", "sim-2")
            wait_page(
                page,
                "() => document.querySelectorAll('#fleet tbody tr[data-target^=\"sim-2/\"]').length === 250",
                timeout=20,
            )
            assert len(targets(page)) == 250
            assert "Showing 250 of 250 matching bots (750 in all)" in page.inner_text("#window-note")
            page.select_option("#filter-host", "")
            wait_page(
                page, "() => document.querySelector('#window-note').textContent.includes('Showing 500 of 750 bots')"
            )
        finally:
            page.close()
    finally:
        fleet.cleanup(show_logs=False)


def test_history_messages_the_queue_cannot_hold_are_counted_and_logged_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "dashboard.sqlite")
    monitor = Monitor(load_agent_config(None, {}, {"url": "mqtt://127.0.0.1:1"}), store, Hub())
    try:
        while not monitor._work.full():  # the writer is not started: nothing drains the queue
            monitor._work.put_nowait(lambda: None)
        with caplog.at_level("WARNING", logger="supervisor.fleet.dashboard.server"):
            for _ in range(3):
                monitor._defer(lambda: None)
        assert monitor.dropped == 3
        assert monitor.snapshot()["dropped"] == 3
        assert [r.getMessage() for r in caplog.records] == [
            "dashboard history queue is full: 1 message(s) dropped since the last report (1 in all)"
        ]
    finally:
        store.close()


def test_a_batch_of_history_is_one_transaction_and_a_bad_message_spoils_no_other(tmp_path: Path) -> None:
    store = Store(tmp_path / "dashboard.sqlite")
    try:
        with store.batch():
            store.add_message("mm-1", "log", "one", ts=1.0)
            with contextlib.suppress(sqlite3.IntegrityError):
                store.add_message("mm-1", None, "no kind", ts=2.0)  # type: ignore[arg-type] # NOT NULL column
            store.add_message("mm-1", "log", "two", ts=3.0)
        assert [m["text"] for m in store.messages("mm-1")] == ["one", "two"]
    finally:
        store.close()


def test_records_a_busy_dashboards_broker_dropped_are_asked_for_again(tmp_path: Path) -> None:
    """The broker drops refreshes it cannot queue for a dashboard that is behind: their retained copies are fresh."""
    broker = start_mosquitto(tmp_path / "tight-broker", extra_conf="max_inflight_messages 1\nmax_queued_messages 60\n")
    clock = Clock(now=1000.0)
    store = Store(tmp_path / "dashboard.sqlite")
    monitor = Monitor(load_agent_config(None, {}, {"url": broker.url}), store, Hub(), clock=clock)
    held, release = threading.Event(), threading.Event()

    def hold(topic: str, _change: t.Any) -> None:
        if topic.endswith("/hold/state"):
            held.set()
            release.wait(30)

    def record(h: int, b: int, ts: float) -> tuple[str, t.Any]:
        return (f"supervisor/sim-{h}/bot-{h}-{b}/state", {"state": "running", "ts": ts, "refresh": 30})

    def count() -> int:
        return len(monitor.snapshot()["instances"])

    def stale() -> set[str]:
        return {row["target"] for row in monitor.snapshot()["instances"] if row["state"] == "stale"}

    monitor.fleet.watch(on_state=hold)
    monitor.start()
    try:
        hosts = [*(f"sim-{h}" for h in range(8)), "holder"]
        publish_retained(broker, [(f"supervisor/{host}/agent", {"state": "online", "ts": 1000.0}) for host in hosts])
        for h in range(8):  # a host at a time: the broker queues no more than 61 for the dashboard
            publish_retained(broker, [record(h, b, 1000.0) for b in range(10)])
            wait_until(lambda: count() == 10 * (h + 1), message=f"sim-{h}'s records")  # noqa: B023 - called at once
        wait_until(lambda: monitor.fleet.view._heard == 1000.0, message="a probe came back")
        publish_retained(broker, [("supervisor/holder/hold/state", {"state": "running", "ts": 1000.0, "refresh": 30})])
        assert held.wait(10)
        clock.now = 1040.0
        # Every agent refreshes its records; the broker can queue 61 of the 80 for the held dashboard.
        publish_retained(broker, [record(h, b, 1039.0) for h in range(8) for b in range(10)])
        release.set()
        dropped = "being dropped for client supervisor-dashboard"
        wait_until(lambda: dropped in broker.log.read_text(), message="the broker dropped")
        wait_until(lambda: stale() == {"holder/hold"}, timeout=20, message="only the record nobody refreshed is stale")
    finally:
        release.set()
        monitor.stop()
        store.close()
        stop_process(broker.process)


def publish_raw_retained(broker: Broker, messages: list[tuple[str, bytes]]) -> None:
    """Publish payloads as they are (not JSON from Python): what a stranger on the broker can send."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"stranger-{uuid.uuid4().hex[:8]}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_strangers_records_with_numbers_out_of_range_neither_stop_the_live_view_nor_break_its_json(
    tmp_path: Path,
) -> None:
    # Before: 1e308 - -1e308 ended the ticker thread for good, and NaN went out as bare NaN (no browser parses it).
    broker = start_mosquitto(tmp_path / "broker")
    store = Store(tmp_path / "dashboard.sqlite")
    monitor = Monitor(load_agent_config(None, {}, {"url": broker.url}), store, Hub())
    monitor.start()
    try:
        now = time.time()
        publish_raw_retained(
            broker,
            [
                ("supervisor/evil/agent", b'{"state":"online","ts":%f}' % now),
                ("supervisor/evil/far/state", b'{"state":"running","ts":1e308,"uptime":-1e308}'),
                ("supervisor/evil/nan/state", b'{"state":"running","ts":%f,"cpu_percent":NaN,"rss":-Infinity}' % now),
                ("supervisor/evil/big/state", b'{"state":"running","ts":%s,"uptime":1}' % (b"9" * 400)),
                ("supervisor/good/agent", b'{"state":"online","ts":%f}' % now),
                ("supervisor/good/bot/state", b'{"state":"running","ts":%f,"refresh":30}' % now),
            ],
        )
        wait_until(lambda: len(monitor.snapshot()["instances"]) == 4, message="every record in the view")
        rows = {row["target"]: row for row in monitor.snapshot()["instances"]}
        assert rows["evil/far"]["started_ts"] is None
        assert (rows["evil/nan"]["cpu_percent"], rows["evil/nan"]["rss"]) == (None, None)
        assert rows["good/bot"]["state"] == "running"
        # Everything the page gets is JSON a browser parses.
        json.dumps(monitor.snapshot(), allow_nan=False)
        json.dumps(monitor.latest(), allow_nan=False)
        # The ticker lives on: a change after the hostile records still reaches the view it pushes.
        publish_raw_retained(broker, [("supervisor/good/bot2/state", b'{"state":"running","ts":%f}' % time.time())])
        wait_until(
            lambda: any(row["target"] == "good/bot2" for row in monitor.latest()["instances"]),
            message="the ticker built a view after the hostile records",
        )
        assert all(thread.is_alive() for thread in monitor._threads)
    finally:
        monitor.stop()
        store.close()
        stop_process(broker.process)


def test_a_full_disk_in_a_history_batch_loses_that_batch_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "dashboard.sqlite")
    try:
        (pages,) = store._db.execute("PRAGMA page_count").fetchone()
        store._db.execute(f"PRAGMA max_page_count = {pages + 4}")  # a disk that fills after a few pages
        failed = 0
        with store.batch():  # before: "cannot commit - no transaction is active" escaped here
            for _ in range(200):
                try:
                    store.add_message("bot", "log", "x" * 2000)
                except sqlite3.OperationalError as e:
                    assert "full" in str(e)
                    failed += 1
        assert failed > 0
        store._db.execute("PRAGMA max_page_count = 1000000")  # space freed: the next message is kept
        store.add_message("bot", "log", "after the disk was freed")
        assert store.messages("bot")[-1]["text"] == "after the disk was freed"
    finally:
        store.close()


@pytest.mark.parametrize(
    "params",
    [{"limit": ["\uff11"]}, {"offset": ["\u0663"]}, {"offset": ["\u00b2"]}, {"limit": ["1_0"]}],
    ids=["fullwidth-one", "arabic-indic-three", "superscript-two", "underscore"],
)
def test_api_instances_takes_only_ascii_digits_for_numbers(params: dict[str, list[str]]) -> None:
    key = next(iter(params))
    with pytest.raises(ValueError, match=f"parameter '{key}' must be a whole number"):
        parse_query(params)


def test_a_summary_names_a_bounded_number_of_recipes_and_problem_hosts_whatever_strangers_publish() -> None:
    rows = [
        {"target": f"h{i}/b", "host": f"h{i}", "state": "crashed", "health": "bad", "recipe": f"r{i}-" + "x" * 50}
        for i in range(300)
    ]
    rows.append({"target": "h0/long", "host": "h0", "state": "running", "health": "ok", "recipe": "y" * 5000})
    summary = windowed({"instances": rows}, size=10)["summary"]
    assert len(summary["recipes"]) == SUMMARY_LIST and summary["recipes_more"] == 300 - SUMMARY_LIST
    assert all(len(recipe) <= SUMMARY_TEXT for recipe in summary["recipes"])
    assert len(summary["problem_hosts"]) == SUMMARY_LIST and summary["problem_hosts_more"] == 300 - SUMMARY_LIST
    assert summary["total"] == 301
    assert len(json.dumps(summary)) < 10_000


def test_a_host_larger_than_the_cap_is_never_asked_again_and_a_host_still_stale_waits_longer_each_time(
    tmp_path: Path,
) -> None:
    broker = start_mosquitto(tmp_path / "broker")
    store = Store(tmp_path / "dashboard.sqlite")
    monitor = Monitor(load_agent_config(None, {}, {"url": broker.url}), store, Hub())
    monitor.fleet.__enter__()  # connected, without the ticker (it would judge its own, empty view meanwhile)
    try:

        def view(*stale: str) -> dict[str, t.Any]:
            sizes = {"big": RECHECK_RECORDS + 1, "small": 10}
            return {
                "instances": [{"host": host, "stale": True, "host_online": True} for host in stale],
                "hosts": [{"host": h, "instances": n, "missing": 0, "online": True} for h, n in sizes.items()],
            }

        monitor._recheck(view("big", "small"))
        # Before: the first stale host was always asked, whatever its size (the broker then drops for us).
        assert set(monitor._asked) == {"small"}
        assert monitor._recheck_wait["small"] == RECHECK_EVERY
        monitor._asked["small"] -= RECHECK_EVERY + 1  # its wait is over, and it is still stale
        monitor._recheck(view("big", "small"))
        assert monitor._recheck_wait["small"] == 2 * RECHECK_EVERY
        monitor._recheck(view("big"))  # fresh again: the next time it starts over
        assert "small" not in monitor._recheck_wait
    finally:
        monitor.fleet.__exit__()
        store.close()
        stop_process(broker.process)
