from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import typing as t
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from supervisor.cli import cli
from tests.conftest import RECIPES, invoke, missing, wait_until

if t.TYPE_CHECKING:
    from collections.abc import Iterator

TICKER = str(RECIPES / "ticker.yaml")
FAILING = str(RECIPES / "failing-install.yaml")
HEX40 = re.compile(r"[0-9a-f]{40}")


def ls_json(*names: str) -> list[dict[str, t.Any]]:
    data = json.loads(invoke("ls", "--json", "--no-foreign", *names).stdout)
    return t.cast("list[dict[str, t.Any]]", data["instances"])


def state_of(name: str) -> str:
    return str(ls_json(name)[0]["state"])


@pytest.fixture
def home(isolated_env: Path, tmux_socket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``SUPERVISOR_HOME`` plus a private tmux socket; every bot still alive at teardown is stopped or killed."""
    monkeypatch.setenv("SUPERVISOR_TMUX_SOCKET", tmux_socket)
    yield isolated_env
    with contextlib.suppress(Exception):
        CliRunner().invoke(cli, ["stop", "--all", "--timeout", "2"])
        for record in ls_json():
            if record["pid"]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(record["pid"], signal.SIGKILL)


@pytest.fixture(params=["tmux", "screen"])
def backend(request: pytest.FixtureRequest) -> str:
    name = t.cast("str", request.param)
    if name == "screen":
        request.getfixturevalue("screendir")
    return name


# -- help ------------------------------------------------------------------------


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Return the path of every command and subcommand, the group itself first."""
    paths = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "supervisor")
def test_help_of_group_and_every_command(path: tuple[str, ...]) -> None:
    result = invoke(*path, "--help")
    assert result.stdout.startswith(" ".join(["Usage: supervisor", *path, "[OPTIONS]"]))
    assert result.stderr == ""
    assert "\nOptions:\n" in result.stdout
    command: click.Command = cli
    for name in path:
        command = t.cast("click.Group", command).commands[name]
    assert [p.name for p in command.params if isinstance(p, click.Option) and not p.help] == []


def test_python_dash_m_help_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: supervisor [OPTIONS] COMMAND [ARGS]...")
    for command in ("new", "start", "stop", "ls", "logs", "send", "tail", "attach"):
        assert re.search(rf"^  {command}\b", proc.stdout, re.MULTILINE), command


# -- recipes ---------------------------------------------------------------------


def test_recipes_text_and_json(home: Path) -> None:
    text = invoke("recipes").stdout
    assert text.splitlines()[0].split() == ["NAME", "MQTT", "SOURCE", "DESCRIPTION"]
    assert re.search(r"^example-bot\s+agent\s+builtin:example-bot", text, re.MULTILINE)
    assert re.search(r"^hummingbot\s+plugin\s+github.com/hummingbot/hummingbot\s", text, re.MULTILINE)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "ticker" not in text

    found = {r["name"]: r for r in json.loads(invoke("recipes", "--json").stdout)}
    assert {"example-bot", "hummingbot"} <= set(found)
    assert found["example-bot"]["settable"] == ["interval"]
    assert found["hummingbot"]["plugin"] is True

    with_ticker = {r["name"]: r for r in json.loads(invoke("recipes", "--json", "-r", TICKER).stdout)}
    assert with_ticker["ticker"]["builtin"] is False
    assert with_ticker["ticker"]["path"] == TICKER
    assert re.search(r"^ticker \*\s+agent\s", invoke("recipes", "-r", TICKER).stdout, re.MULTILINE)


def run_supervisor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a child process, so stderr is what a user sees."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("stray", [b"name: [\n", b"name: caf\xe9\n", b""], ids=["bad-yaml", "not-utf8", "empty"])
def test_a_broken_recipe_file_hides_neither_fleet_nor_recipes(home: Path, bot_origin: Path, stray: bytes) -> None:
    invoke("new", "kept", "-r", TICKER, "--repo", str(bot_origin))
    (home / "recipes").mkdir(exist_ok=True)
    (home / "recipes" / "stray.yaml").write_bytes(stray)
    (home / "recipes" / "mine.yaml").write_text(
        (RECIPES / "ticker.yaml").read_text().replace("name: ticker", "name: mine")
    )

    # `ls` without an agent, on its click-free path and through click (any SUPERVISOR_LS_* setting), then `recipes`.
    for args, env in ((["ls"], {}), (["ls"], {"SUPERVISOR_LS_AS_JSON": "1"}), (["recipes"], {})):
        proc = run_supervisor(*args, env=env)
        assert proc.returncode == 0, (args, env, proc.stderr)
        warnings = proc.stderr.splitlines()
        assert len(warnings) == 1, (args, env, proc.stderr)
        assert warnings[0].startswith("WARNING ")
        assert f"recipe '{home / 'recipes' / 'stray.yaml'}': " in warnings[0]
        assert "skipped" in warnings[0]
        expected = ("mine", "example-bot") if args == ["recipes"] else ("kept",)
        for name in expected:
            assert re.search(rf"\b{name}\b", proc.stdout), (args, name, proc.stdout)


# -- the whole life of an example bot, on both backends ----------------------------


def test_example_bot_lifecycle(home: Path, backend: str) -> None:
    created = invoke("new", "ex-1", "-r", "example-bot", "--backend", backend)
    assert created.stdout.startswith(f"created 'ex-1' (example-bot, {backend}) at {home / 'instances'}")
    assert "start it with: supervisor start ex-1" in created.stdout
    assert "==> mirror" in created.stderr
    assert (home / "origins" / "example-bot" / ".git").is_dir()

    started = invoke("start", "ex-1", "--wait")
    assert started.stdout.strip() == f"started 'ex-1' in {backend} session 'sup-ex-1'."
    again = invoke("start", "ex-1")
    assert again.stdout.startswith("instance 'ex-1' is already running (pid ")

    table = invoke("ls", "--no-foreign").stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "RECIPE",
        "BACKEND",
        "STATE",
        "WANT",
        "PID",
        "CPU%",
        "RSS",
        "UPTIME",
        "RESTARTS",
        "COMMIT",
    ]
    assert table[1].split()[:5] == ["ex-1", "example-bot", backend, "running", "running"]

    [record] = ls_json()
    assert record["state"] == "running"
    assert record["backend"] == backend
    assert b"bot.py" in Path(f"/proc/{record['pid']}/cmdline").read_bytes()
    assert record["rss"] > 0
    assert HEX40.fullmatch(record["commit"])
    assert record["restarts"] == 0

    assert invoke("send", "ex-1", "status").stdout == ""
    wait_until(lambda: "No strategy is currently running!" in invoke("tail", "ex-1").stdout, message="the bot's answer")
    logs = invoke("logs", "ex-1", "-n", "20").stdout
    assert f"example-bot 'ex-1' ready (pid {record['pid']})." in logs
    assert "\x1b" not in logs

    stopped = invoke("stop", "ex-1")
    assert stopped.stdout.strip() == "stopped 'ex-1' by its console quit sequence."
    assert not Path(f"/proc/{record['pid']}").exists()
    assert "Bye." in invoke("logs", "ex-1").stdout

    status = invoke("status", "ex-1", code=3)
    assert re.search(r"^state\s+stopped$", status.stdout, re.MULTILINE)
    assert re.search(r"^pid\s+-$", status.stdout, re.MULTILINE)
    as_json = json.loads(invoke("status", "ex-1", "--json", code=3).stdout)
    assert (as_json["state"], as_json["desired"], as_json["pid"]) == ("stopped", "stopped", None)

    assert invoke("stop", "ex-1").stdout.strip() == "instance 'ex-1' is not running."
    assert invoke("tail", "ex-1", code=3).stderr == (
        "Error: instance 'ex-1' is not running (state: stopped). Start it with 'supervisor start ex-1'.\n"
    )

    checkout = Path(as_json["checkout"])
    assert checkout.is_dir()
    removed = invoke("rm", "ex-1", "--purge", "--yes")
    assert removed.stdout.strip() == f"removed 'ex-1' and deleted {checkout}"
    assert not checkout.exists()
    assert ls_json() == []


# -- exact error lines ---------------------------------------------------------------


class ErrorCase(t.NamedTuple):
    test_id: str
    args: list[str]
    code: int
    stderr: str


ERROR_CASES = [
    ErrorCase(
        "start-unknown",
        ["start", "nope"],
        1,
        "Error: instance 'nope' not found. Run 'supervisor ls' to see instances.\n",
    ),
    ErrorCase(
        "status-unknown",
        ["status", "nope"],
        1,
        "Error: instance 'nope' not found. Run 'supervisor ls' to see instances.\n",
    ),
    ErrorCase(
        "start-nothing-named",
        ["start"],
        1,
        "Error: no instance named. Give one or more NAMEs, or --all.\n",
    ),
    ErrorCase(
        "stop-nothing-named",
        ["stop"],
        1,
        "Error: no instance named. Give one or more NAMEs, or --all.\n",
    ),
    ErrorCase(
        "bad-name",
        ["new", "Bad.Name", "-r", "example-bot"],
        1,
        "Error: instance name 'Bad.Name' is not valid. Use lowercase letters, digits, '-' and '_', "
        "starting with a letter or digit (at most 48 characters).\n",
    ),
    ErrorCase(
        "unknown-recipe",
        ["new", "x", "-r", "no-such-recipe"],
        1,
        "Error: recipe 'no-such-recipe' not found. Known recipes: example-bot, hummingbot, hummingbot-venv. "
        "Run 'supervisor recipes' or pass a file with -r PATH.\n",
    ),
    ErrorCase(
        "unknown-setting",
        ["new", "x", "-r", "example-bot", "--set", "colour=red"],
        1,
        "Error: setting 'colour' is not known to recipe 'example-bot'. Settable keys: interval, env.NAME.\n",
    ),
    ErrorCase(
        "adopt-unknown-session",
        ["adopt", "no-such-session", "--name", "x"],
        1,
        "Error: session 'no-such-session' not found among sessions that look like bots. "
        "Run 'supervisor ls' to see them.\n",
    ),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.test_id for c in ERROR_CASES])
def test_error_lines(home: Path, case: ErrorCase) -> None:
    result = invoke(*case.args, code=case.code)
    assert result.stderr == case.stderr
    assert result.stdout == ""
    assert not (home / "instances").exists()
    assert ls_json() == []


def test_unknown_backend_is_a_usage_error(home: Path, bot_origin: Path) -> None:
    result = invoke("new", "x", "-r", TICKER, "--repo", str(bot_origin), "--backend", "nope", code=2)
    assert result.stderr.splitlines()[0] == "Usage: supervisor new [OPTIONS] NAME"
    assert (
        result.stderr.splitlines()[-1] == "Error: Invalid value for '--backend': 'nope' is not one of 'tmux', 'screen'."
    )
    assert not (home / "instances").exists()


def test_failing_install_shows_step_and_log_tail(home: Path, bot_origin: Path) -> None:
    result = invoke("new", "bad", "-r", FAILING, "--repo", str(bot_origin), code=1)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1
    assert "install step 2/2" in errors[0]
    assert "exit code 7" in errors[0]
    tail = result.stderr.split("--- last lines of the install log ---\n", 1)[1]
    assert "about to fail" in tail
    assert state_of("bad") == "install-failed"

    start = invoke("start", "bad", code=1)
    assert start.stderr.startswith("Error: instance 'bad' cannot start: it is install-failed. ")
    # --all skips instances that cannot start instead of failing on them.
    assert invoke("start", "--all").stdout == ""

    (Path(ls_json("bad")[0]["checkout"]) / ".ok").write_text("")
    assert invoke("install", "bad").stdout.startswith("installed 'bad' at ")
    assert state_of("bad") == "stopped"


def test_send_to_stopped_instance_exits_3(home: Path, bot_origin: Path) -> None:
    created = json.loads(invoke("new", "s1", "-r", TICKER, "--repo", str(bot_origin), "--json").stdout)
    assert (created["name"], created["recipe"], created["state"]) == ("s1", "ticker", "stopped")
    result = invoke("send", "s1", "status", code=3)
    assert result.stderr == (
        "Error: instance 's1' is not running (state: stopped). Start it with 'supervisor start s1'.\n"
    )


def test_rm_guards(home: Path, bot_origin: Path) -> None:
    invoke("new", "r1", "-r", TICKER, "--repo", str(bot_origin))
    checkout = Path(ls_json("r1")[0]["checkout"])

    # CliRunner's stdin is not a terminal, so there is nobody to ask.
    purge = invoke("rm", "r1", "--purge", code=1)
    assert purge.stderr == f"Error: instance 'r1': --purge deletes {checkout}. Pass --yes to confirm.\n"
    assert checkout.is_dir()

    invoke("start", "r1", "--wait")
    running = invoke("rm", "r1", code=1)
    assert running.stderr == (
        "Error: instance 'r1' is running; refusing to remove it. "
        "Stop it first with 'supervisor stop r1' or pass --force.\n"
    )
    pid = ls_json("r1")[0]["pid"]
    assert pid

    removed = invoke("rm", "r1", "--force")
    assert removed.stdout.strip() == f"removed 'r1' (checkout kept at {checkout})"
    assert not Path(f"/proc/{pid}").exists()
    assert checkout.is_dir()
    assert ls_json() == []


def test_start_returns_once_launched_and_wait_waits_for_the_ready_line(
    home: Path, lifecycle_bot_origin: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "headless.yaml"
    recipe.write_text((RECIPES / "headless.yaml").read_text().replace("ready_timeout: 15", "ready_timeout: 1"))
    flag = tmp_path / "go"
    invoke(
        "new", "slow", "-r", str(recipe), "--repo", str(lifecycle_bot_origin), "--set", f"ready_flag={flag}",
        "--secret", "password=@-", stdin="pw",
    )  # fmt: skip
    started = json.loads(invoke("start", "slow", "--json").stdout)
    assert [(r["name"], r["ok"], r["changed"]) for r in started] == [("slow", True, True)]
    # Returned without the ready line: the bot is alive and says 'starting' until it prints it.
    record = wait_until(lambda: ls_json("slow")[0]["pid"] and ls_json("slow")[0])
    assert record["state"] == "starting"
    waited = invoke("start", "slow", "--wait", code=1)
    assert "did not print /lifecycle-bot ready/ within 1s" in waited.stderr, waited.stderr
    assert ls_json("slow")[0]["pid"] == record["pid"]
    flag.touch()
    again = invoke("start", "slow", "--wait")
    assert ls_json("slow")[0]["state"] == "running", again.stdout
    assert ls_json("slow")[0]["pid"] == record["pid"]


def test_start_all_stop_all_and_restart(home: Path, bot_origin: Path) -> None:
    for name in ("a1", "a2"):
        invoke("new", name, "-r", TICKER, "--repo", str(bot_origin))

    started = json.loads(invoke("start", "--all", "--json").stdout)
    assert [(r["name"], r["action"], r["changed"]) for r in started] == [("a1", "start", True), ("a2", "start", True)]
    # Without --wait the command does not wait for the ready lines: 'starting' turns 'running' by itself.
    wait_until(lambda: [r["state"] for r in ls_json()] == ["running", "running"], message="both ready")

    before = ls_json("a1")[0]["pid"]
    restarted = invoke("restart", "a1")
    assert restarted.stdout.strip() == "restarted 'a1' (stopped: console)."
    a1, a2 = ls_json()
    assert (a1["state"], a1["restarts"]) == ("running", 1)
    assert a1["pid"] != before
    assert a2["restarts"] == 0

    stopped = invoke("stop", "--all").stdout.splitlines()
    assert stopped == ["stopped 'a1' by its console quit sequence.", "stopped 'a2' by its console quit sequence."]
    assert [(r["state"], r["pid"]) for r in ls_json()] == [("stopped", None), ("stopped", None)]
    again = json.loads(invoke("stop", "--all", "--json").stdout)
    assert [(r["name"], r["changed"], r["step"]) for r in again] == [
        ("a1", False, "already-stopped"),
        ("a2", False, "already-stopped"),
    ]


def test_ls_fits_100_columns(home: Path) -> None:
    # A small bot's row is len(name) + 83 + pid digits wide: names of up to 10 characters fit
    # even with 7-digit pids (pid_max 4194304).
    names = ["mm-1", "demo-3", "binance-01"]
    for name in names:
        invoke("new", name, "-r", "example-bot")
    invoke("start", *names, "--wait")
    lines = invoke("ls", "--no-foreign").stdout.splitlines()
    assert len(lines) == 1 + len(names)
    widest = max(len(line) for line in lines)
    assert widest <= 100, "\n".join(lines)


def test_logs_follow_prints_new_lines(home: Path, tmp_path: Path) -> None:
    invoke("new", "f1", "-r", "example-bot", "--set", "interval=0.2")
    invoke("start", "f1", "--wait")
    out = tmp_path / "follow.out"

    def ticks() -> list[int]:
        return [int(n) for n in re.findall(r"\[f1\] tick (\d+)", out.read_text())]

    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "logs", "f1", "-f", "-n", "1"], stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            wait_until(lambda: len(ticks()) >= 6, timeout=10, message="tick lines from logs -f")
            assert proc.poll() is None, "logs -f must keep running"
        finally:
            proc.terminate()
            proc.wait(5)
    seen = ticks()
    assert seen == sorted(seen), out.read_text()
    assert seen == list(range(seen[0], seen[0] + len(seen))), "no tick line lost or repeated"


def test_service_install_writes_a_user_unit(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    printed = invoke("service", "install", "--print", "--broker", "mqtt://broker.lan:1883").stdout
    assert f"Environment=SUPERVISOR_HOME={home}" in printed
    assert "-m supervisor agent --broker mqtt://broker.lan:1883" in printed
    assert "KillMode=process" in printed
    assert "WantedBy=default.target" in printed
    assert not (tmp_path / "config").exists()

    result = invoke("service", "install")
    unit = tmp_path / "config" / "systemd" / "user" / "bot-supervisor-agent.service"
    assert unit.read_text().startswith("[Unit]\n")
    assert "ExecStart=" in unit.read_text()
    assert "loginctl enable-linger" in result.stdout
    assert "systemctl --user enable --now bot-supervisor-agent" in result.stdout


# -- hardening (issue 11) ---------------------------------------------------------------


def test_send_refuses_control_characters_and_send_keys_presses_keys(home: Path, bot_origin: Path) -> None:
    invoke("new", "k1", "-r", TICKER, "--repo", str(bot_origin))
    invoke("start", "k1", "--wait")
    pid = ls_json("k1")[0]["pid"]
    for text, found in (("x\x03", "U+0003"), ("\x15history", "U+0015"), ("\x1b[A", "U+001B"), ("a\x9bb", "U+009B")):
        result = invoke("send", "k1", text, code=1)
        assert result.stderr == (
            f"Error: instance 'k1': the text to send holds control characters ({found}); "
            "console text must be printable. To press keys on purpose use 'supervisor send --keys'.\n"
        )
    assert invoke("send", "k1", "two", "words", code=1).stderr == (
        "Error: send takes one TEXT argument, got 2. Quote the line: supervisor send k1 'a b c'.\n"
    )
    assert invoke("send", "k1", "--keys", "Ctrl-C", code=1).stderr.startswith("Error: key 'Ctrl-C' is not known.")
    assert ls_json("k1")[0]["pid"] == pid
    log = home / "instances" / "k1" / "console.log"
    assert "history" not in log.read_text(errors="replace")

    invoke("send", "k1", "status", "--keys", code=1)  # 'status' is not a key name: nothing pressed
    invoke("send", "k1", "--keys", "s", code=1)
    invoke("send", "k1", "--keys", "C-c")
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), message="Ctrl-C to end the bot")


def test_names_with_a_trailing_newline_are_refused(home: Path, bot_origin: Path) -> None:
    result = invoke("new", "abc\n", "-r", TICKER, "--repo", str(bot_origin), code=1)
    assert result.stderr.startswith("Error: instance name 'abc\n' is not valid.")
    recipe = home / "newline-env.yaml"
    recipe.write_text(Path(TICKER).read_text().replace("    TICK_INTERVAL:", '    "EVIL\\n":'))
    result = invoke("new", "ok", "-r", str(recipe), "--repo", str(bot_origin), code=1)
    assert result.stderr.startswith(f"Error: recipe '{recipe}': key 'run.env.EVIL\n' is not a valid environment")
    assert ls_json() == []
    assert not (home / "instances").exists()


def test_builtin_sources_are_plain_shipped_names_and_stay_under_home(home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s3cret")
    relative = os.path.relpath(outside, home / "origins")
    for repo in (f"builtin:{relative}", f"builtin:{outside}", "builtin:no-such-bot", "builtin:"):
        result = invoke("new", "x", "-r", "example-bot", "--repo", repo, code=1)
        assert result.stderr == (
            f"Error: source '{repo}' is not a bot shipped with bot-supervisor. "
            "Built-in sources are: builtin:example-bot.\n"
        )
    recipe = tmp_path / "escape.yaml"
    recipe.write_text(Path(TICKER).read_text().replace("repo: set-by-test", f"repo: builtin:{relative}"))
    result = invoke("new", "y", "-r", str(recipe), code=1)
    assert result.stderr == (
        f"Error: recipe '{recipe}': key 'source.repo' names no folder shipped with bot-supervisor: "
        "use builtin:NAME with a plain name. See the recipe format in the README.\n"
    )
    # A user's recipe next to a folder of that name still gets the shipped bot, not its neighbour.
    (tmp_path / "example-bot").mkdir()
    (tmp_path / "example-bot" / "bot.py").write_text("raise SystemExit('not the shipped bot')\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text((Path(__file__).parent.parent / "recipes" / "example-bot.yaml").read_text())
    invoke("new", "z", "-r", str(mine))
    checkout = Path(ls_json("z")[0]["checkout"])
    assert "not the shipped bot" not in (checkout / "bot.py").read_text()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]  # never initialised, no lock beside it
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")) == []
    assert (home / "origins" / "example-bot" / ".git").is_dir()
    assert (home / "origins").stat().st_mode & 0o777 == 0o700
    assert [r["name"] for r in ls_json()] == ["z"]


def test_a_non_utf8_recipe_is_one_error_line(home: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes(Path(TICKER).read_bytes().replace(b"test bot", b"test b\xf6t"))
    result = invoke("new", "x", "-r", str(recipe), code=1)
    assert result.stderr == (f"Error: recipe '{recipe}': not UTF-8 text (byte 32). Save it as UTF-8 and try again.\n")


class BrokenRegistry(t.NamedTuple):
    test_id: str
    content: bytes
    what: str


GOOD_RECORD = {"name": "a", "recipe": "r", "backend": "tmux", "session": "sup-a", "checkout": "/x", "repo": "/r"}
BROKEN_REGISTRIES = [
    BrokenRegistry(
        "instances-list", b'{"version": 1, "instances": []}', "'instances' is a list, not an object of records by name"
    ),
    BrokenRegistry("top-level-list", b"[1, 2]", "a JSON list, not an object"),
    BrokenRegistry(
        "record-not-object",
        b'{"version": 1, "instances": {"a": 3}}',
        "the record of instance 'a' is a int, not an object",
    ),
    BrokenRegistry(
        "missing-fields",
        json.dumps({"version": 1, "instances": {"a": GOOD_RECORD}}).encode(),
        "the record of instance 'a' lacks 'ref'",
    ),
    BrokenRegistry(
        "wrong-field",
        json.dumps({"version": 1, "instances": {"a": {**GOOD_RECORD, "ref": "main", "checkout": None}}}).encode(),
        "the record of instance 'a' has a wrong 'checkout'",
    ),
    BrokenRegistry("not-utf8", b'{"version": 1, "instances": {"\xff": {}}}', "not UTF-8 text (byte 30)"),
    BrokenRegistry("deeply-nested", b"[" * 100_000, "nested too deeply to be a registry"),
]


@pytest.mark.parametrize("case", BROKEN_REGISTRIES, ids=[c.test_id for c in BROKEN_REGISTRIES])
def test_a_broken_registry_is_one_error_line(home: Path, case: BrokenRegistry) -> None:
    (home / "registry.json").write_bytes(case.content)
    for args in (["ls", "--no-foreign"], ["start", "a"], ["status", "a"]):
        result = invoke(*args, code=1)
        assert result.stderr == (
            f"Error: registry '{home / 'registry.json'}': {case.what}. Restore it from a backup or fix it by hand.\n"
        )
        assert "Traceback" not in result.output


def test_os_errors_are_one_line_naming_the_file(home: Path, bot_origin: Path) -> None:
    invoke("new", "o1", "-r", TICKER, "--repo", str(bot_origin))
    run_dir = home / "instances" / "o1"
    (run_dir / "run.sh").mkdir()  # the run script cannot be written over a folder
    result = invoke("start", "o1", code=1)
    # The temporary name is random (atomic_write's mkstemp); the rest of the line is fixed.
    assert re.fullmatch(
        re.escape(f"Error: '{run_dir}/.run.sh.")
        + r"\w+"
        + re.escape(f".tmp' -> '{run_dir / 'run.sh'}': Is a directory. Check that file and its folder, then try again.")
        + "\n",
        result.stderr,
    ), result.stderr
    assert "Traceback" not in result.output


@contextlib.contextmanager
def unwritable_registry(home: Path) -> Iterator[None]:
    """Make ``registry.json`` impossible to replace: immutable as root, a read-only folder otherwise."""
    registry = home / "registry.json"
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(registry)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(registry)], check=False)
    else:
        home.chmod(0o555)
        try:
            yield
        finally:
            home.chmod(0o755)


def test_start_with_an_unwritable_registry_launches_nothing(home: Path, bot_origin: Path, tmux_socket: str) -> None:
    invoke("new", "w1", "-r", TICKER, "--repo", str(bot_origin))
    with unwritable_registry(home):
        result = invoke("start", "w1", code=1)
        assert result.stderr.startswith(f"Error: registry '{home / 'registry.json'}': cannot be written ("), result
        assert result.stderr.endswith(" Nothing was recorded.\n"), result.stderr
        sessions = subprocess.run(
            ["tmux", "-L", tmux_socket, "list-sessions", "-F", "#{session_name}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert "sup-w1" not in sessions
        assert (state_of("w1"), ls_json("w1")[0]["pid"]) == ("stopped", None)
    invoke("start", "w1", "--wait")
    assert state_of("w1") == "running"


def fill_disk(folder: Path) -> Path:
    """Write a filler file in ``folder`` until its file system is full."""
    filler = folder / f"filler-{len(list(folder.glob('filler-*')))}"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(chunk)
        with contextlib.suppress(OSError):
            while True:  # the last few bytes, one page at a time
                handle.write(chunk[:4096])
    return filler


@pytest.fixture
def full_home(home: Path) -> Iterator[Path]:
    """``SUPERVISOR_HOME`` on a real 8 MB tmpfs (unmounted at teardown, even on failure)."""
    if os.geteuid() != 0:
        missing("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(home)], check=True)
    try:
        yield home
    finally:
        with contextlib.suppress(Exception):
            for record in ls_json():
                if record["pid"]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(record["pid"], signal.SIGKILL)
        for filler in home.glob("filler-*"):
            filler.unlink()
        CliRunner().invoke(cli, ["stop", "--all", "--timeout", "2"])
        if subprocess.run(["umount", str(home)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(home)], check=False)


def test_a_full_disk_never_blocks_stop_or_purge_and_new_leaves_nothing(full_home: Path) -> None:
    home = full_home
    invoke("new", "f1", "-r", "example-bot")
    invoke("new", "f2", "-r", "example-bot")
    invoke("start", "f1", "--wait")
    pid = ls_json("f1")[0]["pid"]
    assert pid
    fill_disk(home)

    stopped = invoke("stop", "f1")  # exit 0: the bot stopped
    assert stopped.stdout == "stopped 'f1' by its console quit sequence.\n"
    assert stopped.stderr.startswith(
        f"Warning: the stop of 'f1' could not be recorded (registry '{home / 'registry.json'}': "
        "cannot be written (No space left on device)."
    ), stopped.stderr
    assert not Path(f"/proc/{pid}").exists()

    checkout = Path(ls_json("f2")[0]["checkout"])
    removed = invoke("rm", "f2", "--purge", "--yes")
    assert removed.stdout == f"removed 'f2' and deleted {checkout}\n"
    assert not checkout.exists()
    assert [r["name"] for r in ls_json()] == ["f1"]

    big = fill_disk(home)
    failed = invoke("new", "f3", "-r", "example-bot", code=1)
    assert failed.stderr.startswith("Error: ") and failed.stderr.count("\n") == 1, failed.stderr
    assert "No space left on device" in failed.stderr
    # Room for the record but not for the checkout: nothing half-made either.
    os.truncate(big, big.stat().st_size - 16384)
    failed = invoke("new", "f4", "-r", "example-bot", code=1)
    assert "Traceback" not in failed.output
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, failed.stderr
    assert "could not check out 'main'" in errors[0]  # it failed after recording the instance
    assert [r["name"] for r in ls_json()] == ["f1"]
    assert sorted(p.name for p in (home / "instances").iterdir()) == ["f1"]

    for filler in home.glob("filler-*"):
        filler.unlink()
    invoke("stop", "f1")
    assert ls_json("f1")[0]["desired"] == "stopped"


def test_sessions_of_ours_without_a_record_are_orphans_and_can_be_adopted(
    home: Path, bot_origin: Path, tmux_socket: str
) -> None:
    invoke("new", "o1", "-r", TICKER, "--repo", str(bot_origin))
    invoke("start", "o1", "--wait")
    pid = ls_json("o1")[0]["pid"]
    checkout = ls_json("o1")[0]["checkout"]
    # Someone else's bot on the same server, started by hand.
    (home / "recipes").mkdir()
    (home / "recipes" / "ticker.yaml").write_text(Path(TICKER).read_text())
    subprocess.run(
        [
            "tmux",
            "-L",
            tmux_socket,
            "new-session",
            "-d",
            "-s",
            "byhand",
            f"{sys.executable} -c 'import time; time.sleep(60)' ticker_marker",
        ],
        check=True,
    )
    (home / "registry.json").unlink()

    listing = json.loads(invoke("ls", "--json").stdout)
    assert listing["instances"] == []
    found = {f["session"]: f for f in listing["foreign_sessions"]}
    assert set(found) == {"sup-o1", "byhand"}
    assert (found["sup-o1"]["state"], found["sup-o1"]["cwd"]) == ("orphan", checkout)
    assert (found["byhand"]["state"], found["byhand"]["recipe"]) == ("foreign", "ticker")
    text = invoke("ls").stdout
    assert re.search(r"^sup-o1\s+orphan\s+tmux\s", text, re.MULTILINE), text
    assert re.search(r"^byhand\s+foreign\s+tmux\s", text, re.MULTILINE), text

    adopted = invoke("adopt", "sup-o1", "--name", "o1", "-r", TICKER)
    assert adopted.stdout == "adopted session 'sup-o1' as 'o1' (ticker, running)\n"
    [record] = ls_json()
    assert (record["state"], record["pid"], record["checkout"]) == ("running", pid, checkout)
    assert "sup-o1" not in {f["session"] for f in json.loads(invoke("ls", "--json").stdout)["foreign_sessions"]}
    invoke("stop", "o1")
    assert not Path(f"/proc/{pid}").exists()


def test_fleet_send_refuses_control_characters_before_sending(home: Path) -> None:
    # The broker address is never reached: the text is refused first.
    result = invoke("fleet", "--broker", "mqtt://127.0.0.1:9", "send", "h1/x", "stop\x03", code=1)
    assert result.stderr == (
        "Error: target 'h1/x': the text to send holds control characters (U+0003); console text must be "
        "printable. To press keys on purpose use 'supervisor send --keys'.\n"
    )


def test_update_with_a_typo_or_nothing_new_leaves_the_bot_running(home: Path, bot_origin: Path) -> None:
    invoke("new", "u1", "-r", TICKER, "--repo", str(bot_origin))
    invoke("start", "u1", "--wait")
    pid = ls_json("u1")[0]["pid"]
    typo = invoke("update", "u1", "--ref", "typo", code=1)
    assert typo.stderr.startswith(f"Error: repository '{bot_origin}': ref 'typo' not found."), typo.stderr
    same = invoke("update", "u1")
    assert same.stdout.startswith("'u1' is already at main ["), same.stdout
    assert "nothing changed" in same.stdout
    assert ls_json("u1")[0]["pid"] == pid
    assert ls_json("u1")[0]["state"] == "running"


# -- broker options, declared once -------------------------------------------------


BROKER_COMMANDS = [("agent",), ("fleet",), ("dashboard",), ("events", "serve")]


def option_lines(path: tuple[str, ...]) -> list[str]:
    command: click.Command = cli
    for name in path:
        command = t.cast("click.Group", command).commands[name]
    return [
        next(o for o in param.opts if o.startswith("--"))
        for param in command.params
        if isinstance(param, click.Option) and param.name in {"broker", "ca", "cert", "key", "config_file"}
    ]


@pytest.mark.parametrize("path", BROKER_COMMANDS, ids=lambda p: " ".join(p))
def test_every_broker_command_has_the_same_broker_options(path: tuple[str, ...]) -> None:
    assert option_lines(path) == ["--broker", "--ca", "--cert", "--key", "--config"]
    shown = invoke(*path, "--help").stdout
    assert "Agent TOML file. Default: $SUPERVISOR_HOME/agent.toml if it exists." in " ".join(shown.split())


def test_agent_toml_is_found_in_one_place(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.cli.remote import BrokerOptions
    from supervisor.errors import AgentError
    from supervisor.paths import Paths

    paths = Paths.from_env()
    nothing = BrokerOptions(None, None, None, None, None)
    assert nothing.load(paths).broker.url == "mqtt://localhost:1883"  # no agent.toml: the default
    (home / "agent.toml").write_text('[broker]\nurl = "mqtt://10.1.2.3:1999"\n[agent]\nnamespace = "ns"\n')
    assert (nothing.load(paths).broker.url, nothing.load(paths).namespace) == ("mqtt://10.1.2.3:1999", "ns")
    given = BrokerOptions("mqtt://10.9.9.9", None, None, None, None)
    assert given.load(paths, namespace="cli").broker.url == "mqtt://10.9.9.9:1883"
    assert given.load(paths, namespace="cli").namespace == "cli"
    monkeypatch.setenv("SUPERVISOR_BROKER", "mqtt://10.7.7.7:1")
    assert nothing.load(paths).broker.url == "mqtt://10.7.7.7:1"
    other = tmp_path / "other.toml"
    other.write_text('[agent]\nhost_id = "h-9"\n')
    assert BrokerOptions(None, None, None, None, other).load(paths).host_id == "h-9"
    with pytest.raises(AgentError, match=re.escape(f"config file '{tmp_path / 'nope.toml'}': not found.")):
        BrokerOptions(None, None, None, None, tmp_path / "nope.toml").load(paths)


CLI_STRATEGY_RECIPE = """\
name: strategy-bot
source: {repo: set-by-test, ref: main}
run:
  command: '{python} bot.py'
  strategy_args: '[--conf {conf}][ --script {script}]'
  ready: 'ticker-bot ready'
  ready_timeout: 15
console:
  quit: [exit]
"""


def test_start_and_restart_take_a_strategy_that_ls_and_status_show(
    home: Path, bot_origin: Path, tmp_path: Path
) -> None:
    import psutil

    recipe = tmp_path / "strategy-bot.yaml"
    recipe.write_text(CLI_STRATEGY_RECIPE)
    invoke("new", "sb", "-r", str(recipe), "--repo", str(bot_origin))

    def argv() -> list[str]:
        pid = json.loads(invoke("status", "sb", "--json").stdout)["pid"]  # exit 0: it runs
        return list(psutil.Process(pid).cmdline())

    invoke("start", "sb", "--strategy", "probe.yml", "--wait")
    assert argv()[-2:] == ["--conf", "probe.yml"]
    [record] = json.loads(invoke("ls", "sb", "--json").stdout)["instances"]
    assert record["strategy"] == {"conf": "probe.yml"}
    assert json.loads(invoke("status", "sb", "--json").stdout)["strategy"] == {"conf": "probe.yml"}
    assert "conf=probe.yml" in invoke("ls", "sb").stdout
    assert re.search(r"^strategy\s+conf=probe\.yml$", invoke("status", "sb").stdout, re.MULTILINE)

    invoke("restart", "sb")  # the recorded strategy comes back
    assert argv()[-2:] == ["--conf", "probe.yml"]
    invoke("restart", "sb", "--script", "other.py")
    assert argv()[-2:] == ["--script", "other.py"]
    assert json.loads(invoke("status", "sb", "--json").stdout)["strategy"] == {"script": "other.py"}

    bad = invoke("restart", "sb", "--strategy", "../x.yml", code=1)
    assert "conf '../x.yml': must be a file name" in bad.stderr
    invoke("new", "plain", "-r", TICKER, "--repo", str(bot_origin))
    refused = invoke("start", "plain", "--strategy", "probe.yml", code=1)
    assert refused.stderr.startswith("Error: instance 'plain': recipe 'ticker' has no run.strategy_args")


def test_the_examples_of_new_help_name_recipes_and_secret_keys_that_exist(home: Path) -> None:
    from supervisor.core.recipe import find_recipe

    text = invoke("new", "--help").stdout
    examples = [line.split() for line in text.splitlines() if line.strip().startswith("supervisor new ")]
    assert examples
    for argv in examples:
        recipe = find_recipe(argv[argv.index("-r") + 1], home / "recipes")
        for option in (a for i, a in enumerate(argv) if i and argv[i - 1] == "--secret"):
            assert option.split("=@")[0] in recipe.run.secrets.values(), argv


LOG_BOT = """\
import pathlib, time
pathlib.Path("logs").mkdir(exist_ok=True)
with open("logs/logs_main.log", "a") as log:
    log.writelines(f"readable line {i}\\n" for i in range(3))
print("\\x1b[2J\\x1b[H368", flush=True)  # what a full-screen redraw leaves in the console log
print("log-bot ready", flush=True)
time.sleep(600)
"""


def test_logs_shows_the_bots_own_log_file_when_its_recipe_names_them(home: Path, tmp_path: Path) -> None:
    from tests.conftest import make_origin

    origin = tmp_path / "log-origin"
    make_origin(origin, {"bot.py": LOG_BOT, ".gitignore": "logs/\n"}).close()
    recipe = tmp_path / "log-bot.yaml"
    recipe.write_text(
        "name: log-bot\nsource: {repo: set-by-test, ref: main}\n"
        "run: {command: '{python} bot.py', ready: 'log-bot ready'}\n"
        "log_files: ['logs/logs_*.log']\n"
    )
    invoke("new", "lb", "-r", str(recipe), "--repo", str(origin))
    invoke("start", "lb", "--wait")
    shown = invoke("logs", "lb", "-n", "2")
    assert shown.stdout.splitlines() == ["readable line 1", "readable line 2"]
    assert "the bot's own log" in shown.stderr and "logs_main.log" in shown.stderr
    assert "log-bot ready" in invoke("logs", "lb", "--console").stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("logs/logs_*.log", "/var/log/x.log"))
    refused = invoke("new", "lb2", "-r", str(bad), "--repo", str(origin), code=1)
    assert "log_files[0]" in refused.stderr
