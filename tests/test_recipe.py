from __future__ import annotations

import re
import typing as t
from pathlib import Path

import pytest

from supervisor.core.recipe import check_name, find_recipe, list_recipes, load_recipe, parse_settings, render
from supervisor.errors import InvalidName, RecipeError, RecipeNotFound
from tests.conftest import RECIPES


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = "name: r\nsource: {repo: x}\nrun: {command: bot}\n"


def test_builtin_recipes_load_and_validate(tmp_path: Path) -> None:
    names = {r.name for r in list_recipes(tmp_path / "none")}
    assert {"example-bot", "hummingbot"} <= names
    assert "hummingbot-venv" in names
    for name in ("hummingbot", "hummingbot-venv"):
        hb = find_recipe(name, tmp_path / "none")
        assert hb.mqtt.plugin is True
        assert hb.mqtt.config == "conf/conf_client.yml"
        assert hb.run.command.endswith("python bin/hummingbot_quickstart.py")
        # Unattended start: the password comes from a secret, never from vars or argv.
        assert hb.run.secrets == {"CONFIG_PASSWORD": "hummingbot-password"}
        assert re.search(hb.run.ready or "", "16:29:12 - hummingbot_application - MQTT Bridge connected with success.")
        assert not re.search(hb.run.ready or "", ">>> ")
        assert re.search(hb.run.login or "", "Enter your password >>> ")
        assert render(hb.console.commands["start"], {"conf": "probe.yml"}, optional_groups=True) == (
            "start --v2 probe.yml"
        )
        assert render(hb.run.strategy_args or "", {"conf": "probe.yml"}, optional_groups=True) == "--v2 probe.yml"
        assert hb.console.quit == ("stop", "exit")
        # made at each start while missing, so a password set after `new` works too
        assert "store_password_verification" in (hb.run.prelude or "")
        assert not any("store_password_verification" in step for step in hb.install)
        assert not any(step.startswith("./install") for step in hb.install)  # its one host-wide env
    conda = find_recipe("hummingbot", tmp_path / "none")
    assert any("env create -p ./.conda" in step for step in conda.install)
    assert "conda activate ./.conda" in (conda.run.prelude or "")
    venv = find_recipe("hummingbot-venv", tmp_path / "none")
    assert venv.vars["python312"] == "python3.12"
    assert venv.vars["venvs"] == "{home}/venvs"
    assert "-m supervisor.core.sharedenv" in venv.install[0]
    example = find_recipe("example-bot", tmp_path / "none")
    assert example.source.builtin == "example-bot"
    assert example.builtin
    assert example.console.commands["stop_keep_orders"] == "stop --keep-orders"
    assert example.console.answer.prompt and example.console.answer.noise and example.console.answer.error
    assert example.console.trades and example.mqtt.performance
    assert [e.type for e in example.mqtt.events] == ["OrderFilled"]
    assert (example.mqtt.log, example.mqtt.log_rate) == (True, 20.0)


def test_user_recipe_hides_builtin(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    write(user, MINIMAL.replace("name: r", "name: hummingbot"), "hummingbot.yaml")
    recipe = find_recipe("hummingbot", user)
    assert not recipe.builtin
    assert recipe.run.command == "bot"


def test_recipe_by_path() -> None:
    recipe = find_recipe(str(RECIPES / "ticker.yaml"), Path("/nonexistent"))
    assert recipe.name == "ticker"
    assert recipe.vars == {"interval": "0.2"}


BROKEN_FILES = {
    "bad.yaml": (b"name: [\n", "not valid YAML at line 2"),
    "latin.yml": (b"name: caf\xe9\n", "not UTF-8 text (byte 9)"),
    "empty.yaml": (b"", "the file is empty"),
}


def test_broken_user_recipe_files_are_skipped_with_one_warning_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    user = tmp_path / "user"
    user.mkdir()
    write(user, MINIMAL.replace("name: r", "name: mine"), "mine.yaml")
    for name, (raw, _) in BROKEN_FILES.items():
        (user / name).write_bytes(raw)
    with caplog.at_level("WARNING", logger="supervisor.core.recipe"):
        names = {r.name for r in list_recipes(user)}
        list_recipes(user)  # an agent lists again and again: still one line per broken file
    assert {"mine", "example-bot", "hummingbot"} <= names
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == len(BROKEN_FILES)
    for name, (_, reason) in BROKEN_FILES.items():
        assert [w for w in warnings if f"recipe '{user / name}': {reason}" in w], (name, warnings)
    # Asked for by name, a broken recipe is still an error.
    with pytest.raises(RecipeError, match="not valid YAML"):
        find_recipe("bad", user)


def test_unknown_recipe_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(RecipeNotFound) as info:
        find_recipe("nope", tmp_path)
    assert "recipe 'nope' not found" in str(info.value)
    assert "example-bot" in str(info.value)


class Bad(t.NamedTuple):
    test_id: str
    text: str
    key: str


BAD = [
    Bad("not-yaml", "name: [unclosed", "not valid YAML at line"),
    Bad("not-mapping", "- a\n- b\n", "must be a mapping"),
    Bad("missing-name", "source: {repo: x}\nrun: {command: b}\n", "key 'name' is required"),
    Bad("bad-name", "name: Bad.Name\nsource: {repo: x}\nrun: {command: b}\n", "key 'name' must match"),
    Bad("missing-command", "name: r\nsource: {repo: x}\nrun: {}\n", "key 'run.command' is required"),
    Bad("unknown-top", MINIMAL + "colour: red\n", "key 'colour' is not known"),
    Bad("unknown-run", "name: r\nsource: {repo: x}\nrun: {command: b, cmd: c}\n", "key 'run.cmd' is not known"),
    Bad("bad-ready", "name: r\nsource: {repo: x}\nrun: {command: b, ready: '(('}\n", "key 'run.ready' is not a valid"),
    Bad("unknown-var", "name: r\nsource: {repo: x}\nrun: {command: 'b {nope}'}\n", "uses '{nope}'"),
    Bad("install-type", MINIMAL + "install: {a: 1}\n", "key 'install' must be a string or a list"),
    Bad("plugin-type", MINIMAL + "mqtt: {plugin: yes-please}\n", "key 'mqtt.plugin' must be true or false"),
    Bad("values-need-config", MINIMAL + "mqtt: {values: {a: 1}}\n", "key 'mqtt.config' is required"),
    Bad("env-name", "name: r\nsource: {repo: x}\nrun: {command: b, env: {'1X': y}}\n", "key 'run.env.1X'"),
    Bad("answer-key", MINIMAL + "console: {answer: {errors: [x]}}\n", "key 'console.answer.errors' is not known"),
    Bad("answer-regex", MINIMAL + "console: {answer: {noise: [a, '((']}}\n", "key 'console.answer.noise[1]'"),
    Bad("trades-groups", MINIMAL + "console: {trades: 'trade (\\d+)'}\n", "key 'console.trades' needs named groups"),
    Bad("keep-orders-var", MINIMAL + "console: {stop_keep_orders: 'stop {nope}'}\n", "uses '{nope}'"),
    Bad("log-rate", MINIMAL + "mqtt: {log_rate: 0}\n", "key 'mqtt.log_rate' must be above 0"),
    Bad("events-list", MINIMAL + "mqtt: {events: {match: x}}\n", "key 'mqtt.events' must be a list"),
    Bad("event-type", MINIMAL + "mqtt: {events: [{match: x}]}\n", "key 'mqtt.events[0].type' is required"),
    Bad("event-key", MINIMAL + "mqtt: {events: [{match: x, type: Y, kind: Z}]}\n", "key 'mqtt.events[0].kind'"),
    Bad("performance-groups", MINIMAL + "mqtt: {performance: 'pnl=\\S+'}\n", "key 'mqtt.performance' needs named"),
    Bad("secret-env", "name: r\nsource: {repo: x}\nrun: {command: b, secrets: {'1X': pw}}\n", "key 'run.secrets.1X'"),
    Bad(
        "secret-key",
        "name: r\nsource: {repo: x}\nrun: {command: b, secrets: {PW: '../pw'}}\n",
        "key 'run.secrets.PW' must be a secret key",
    ),
    Bad(
        "secret-in-env",
        "name: r\nsource: {repo: x}\nrun: {command: b, env: {PW: x}, secrets: {PW: pw}}\n",
        "key 'run.secrets.PW' is also set in run.env",
    ),
    Bad("secrets-type", "name: r\nsource: {repo: x}\nrun: {command: b, secrets: [pw]}\n", "key 'run.secrets' must be"),
    Bad(
        "login-needs-ready",
        "name: r\nsource: {repo: x}\nrun: {command: b, login: 'password:'}\n",
        "key 'run.login' needs run.ready",
    ),
    Bad(
        "bad-login",
        "name: r\nsource: {repo: x}\nrun: {command: b, ready: up, login: '(('}\n",
        "key 'run.login' is not a valid",
    ),
    Bad(
        "stop-signal",
        "name: r\nsource: {repo: x}\nrun: {command: b, stop: {signal: SIGKILL}}\n",
        "key 'run.stop.signal' must be one of SIGINT, SIGTERM, SIGHUP",
    ),
    Bad(
        "stop-empty",
        "name: r\nsource: {repo: x}\nrun: {command: b, stop: {grace: 3}}\n",
        "key 'run.stop' needs exactly one of 'signal' or 'command'",
    ),
    Bad(
        "stop-both",
        "name: r\nsource: {repo: x}\nrun: {command: b, stop: {signal: INT, command: x}}\n",
        "key 'run.stop' needs exactly one",
    ),
    Bad(
        "stop-grace",
        "name: r\nsource: {repo: x}\nrun: {command: b, stop: {signal: INT, grace: -1}}\n",
        "key 'run.stop.grace' must be a non-negative number",
    ),
    Bad(
        "stop-unknown-key",
        "name: r\nsource: {repo: x}\nrun: {command: b, stop: {sig: INT}}\n",
        "key 'run.stop.sig' is not known",
    ),
    Bad("stop-var", "name: r\nsource: {repo: x}\nrun: {command: b, stop: {command: 'x {nope}'}}\n", "uses '{nope}'"),
    Bad("config-abs", MINIMAL + "config_files: [/etc/passwd]\n", "key 'config_files[0]' must be a path or glob inside"),
    Bad("config-up", MINIMAL + "config_files: [conf/a.yml, ../x]\n", "key 'config_files[1]' must be a path"),
    Bad("config-type", MINIMAL + "config_files: {a: 1}\n", "key 'config_files' must be a string or a list"),
]


@pytest.mark.parametrize("case", BAD, ids=[c.test_id for c in BAD])
def test_malformed_recipes_name_file_and_key(tmp_path: Path, case: Bad) -> None:
    path = write(tmp_path, case.text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value)
    assert case.key in str(info.value)


def test_console_lines_use_the_bot_commands_and_fields(tmp_path: Path) -> None:
    # Every field of a bot request that is typed (not the agent's own switches) may appear in a line.
    lines = {
        "start": "start[ --script {script}][ --conf {conf}]",
        "config": "config {params}",
        "import": "import {strategy}",
        "history": "history --days {days} --verbose {verbose} --precision {precision}",
        "balance_limit": "balance limit {exchange} {asset} {amount}",
        "balance_paper": "balance paper {asset} {amount}",
    }
    console = "".join(f"  {key}: '{line}'\n" for key, line in lines.items())
    recipe = load_recipe(write(tmp_path, MINIMAL + "console:\n" + console))
    assert dict(recipe.console.commands) == lines
    refused = [
        ("console: {start: 'start {async_backend}'}\n", "uses '{async_backend}'"),
        ("console: {stop: 'stop {skip_order_cancellation}'}\n", "uses '{skip_order_cancellation}'"),
        ("console: {command_shortcuts: x}\n", "key 'console.command_shortcuts' is not known"),
        ("console: {balance/limit: x}\n", "key 'console.balance/limit' is not known"),
    ]
    for text, key in refused:
        with pytest.raises(RecipeError, match=re.escape(key)):
            load_recipe(write(tmp_path, MINIMAL + text))


def test_file_name_must_match_recipe_name(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL, "other.yaml")
    with pytest.raises(RecipeError, match="is 'r' but the file is named 'other'"):
        find_recipe("other", tmp_path)


def test_render_optional_groups_and_shell_vars() -> None:
    template = "start[ --script {script}][ --conf {conf}]"
    assert render(template, {"script": "a.py", "conf": ""}, optional_groups=True) == "start --script a.py"
    assert (
        render(template, {"script": "a.py", "conf": "c.yml"}, optional_groups=True)
        == "start --script a.py --conf c.yml"
    )
    assert render(template, {}, optional_groups=True) == "start"
    assert render("echo ${HOME} {name}", {"name": "x"}) == "echo ${HOME} x"
    # install steps keep shell brackets: optional groups only apply to console lines
    assert render("[ -f x ] && {name}", {"name": "y"}) == "[ -f x ] && y"


def test_parse_settings(tmp_path: Path) -> None:
    recipe = find_recipe(str(RECIPES / "ticker.yaml"), tmp_path)
    variables, env = parse_settings(recipe, ["interval=5", "env.API_KEY=a=b"])
    assert variables == {"interval": "5"}
    assert env == {"API_KEY": "a=b"}
    with pytest.raises(
        RecipeError,
        match=re.escape("setting 'colour' is not known to recipe 'ticker'. Settable keys: interval, env.NAME"),
    ):
        parse_settings(recipe, ["colour=red"])
    with pytest.raises(RecipeError, match="is not KEY=VALUE"):
        parse_settings(recipe, ["novalue"])


@pytest.mark.parametrize("name", ["mm-1", "a", "bot_2", "0x"])
def test_valid_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "MM", "-a", "a.b", "a:b", "a b", "a/b", "é", "x" * 49])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidName, match="is not valid"):
        check_name(name)


def test_lifecycle_keys_parse(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "name: r\nsource: {repo: x}\n"
        "config_files: ['conf/*.yml', conf/.password_verification]\n"
        "run:\n  command: b\n  ready: 'up$'\n  login: 'Enter your password'\n"
        "  secrets: {CONFIG_PASSWORD: password}\n"
        "  stop: {signal: int, grace: 12}\n",
    )
    recipe = load_recipe(path)
    assert recipe.run.secrets == {"CONFIG_PASSWORD": "password"}
    assert recipe.run.login == "Enter your password"
    assert recipe.run.stop is not None
    assert (recipe.run.stop.signal, recipe.run.stop.command, recipe.run.stop.grace) == ("SIGINT", None, 12.0)
    assert recipe.config_files == ("conf/*.yml", "conf/.password_verification")
    command = load_recipe(
        write(tmp_path, MINIMAL.replace("{command: bot}", "{command: b, stop: {command: 'hbot stop'}}"))
    )
    assert command.run.stop is not None
    assert (command.run.stop.signal, command.run.stop.command, command.run.stop.grace) == (None, "hbot stop", 30.0)
    plain = load_recipe(write(tmp_path, MINIMAL))
    assert (plain.run.secrets, plain.run.login, plain.run.stop, plain.config_files) == ({}, None, None, ())
