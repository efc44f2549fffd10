"""The one console-text rule (supervisor/consoletext.py) and every path that reaches it.

Text that was not valid UTF-8 (a raw byte in a command-line argument, decoded as a
lone surrogate) or holds a lone surrogate from a JSON ``\\uDC9B`` escape is refused
on each front end: tmux would type it back as the raw byte (0x9B, the C1 CSI).
"""

from __future__ import annotations

import os
import subprocess
import sys
import typing as t

import pytest

from supervisor.consoletext import check_console_text, control_characters
from supervisor.errors import UnsafeConsoleText
from tests.conftest import wait_until
from tests.test_agent import HOST, AgentRunner, Watcher, agents, console, new_ticker, next_matching, watchers
from tests.test_dashboard import Fleet, fleet, request
from tests.test_events import TOKEN, Receivers, hook, post, receivers, routes_toml

if t.TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from supervisor.core.manager import Manager
    from tests.conftest import Broker

__all__ = ["agents", "fleet", "receivers", "watchers"]  # fixtures, used by name

NOT_UTF8 = "is not valid UTF-8 (U+DC9B: a lone surrogate, from an undecodable byte or half a \\u pair)"
TAIL = "; console text must be printable. To press keys on purpose use 'supervisor send --keys'."


class TextCase(t.NamedTuple):
    test_id: str
    text: str
    found: list[str]


TEXT_CASES = [
    TextCase("low-surrogate", "a\udc9bb", ["U+DC9B"]),
    TextCase("high-surrogate", "\ud83d", ["U+D83D"]),
    TextCase("both-kinds", "x\x03\udc9b\udfff", ["U+0003", "U+DC9B", "U+DFFF"]),
    TextCase("c1", "a\x9bb", ["U+009B"]),
    TextCase("printable", "é 🚀 ∑ ok", []),
]


@pytest.mark.parametrize("case", TEXT_CASES, ids=[case.test_id for case in TEXT_CASES])
def test_control_characters_names_lone_surrogates_too(case: TextCase) -> None:
    assert control_characters(case.text) == case.found


def test_a_lone_surrogate_is_refused_as_not_utf8() -> None:
    with pytest.raises(UnsafeConsoleText) as refused:
        check_console_text("a\udc9bb", what="the text")
    assert str(refused.value) == f"the text {NOT_UTF8}{TAIL}"
    with pytest.raises(UnsafeConsoleText) as both:
        check_console_text("\x03\udc9b", what="the text")
    assert str(both.value) == f"the text holds control characters (U+0003) and {NOT_UTF8}{TAIL}"
    assert check_console_text("é 🚀", what="the text") == "é 🚀"


def run_cli(home: Path, socket: str, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI with raw ``bytes`` arguments, as a shell passes them (no decoding by the test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    env |= {"SUPERVISOR_HOME": str(home), "SUPERVISOR_TMUX_SOCKET": socket, "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args], env=env, capture_output=True, timeout=60, check=False
    )


def test_cli_send_refuses_a_raw_undecodable_byte_and_the_bot_keeps_reading(
    manager: Manager, bot_origin: Path, isolated_env: Path, tmux_socket: str
) -> None:
    pid = new_ticker(manager, "k1", bot_origin, start=True)
    done = run_cli(isolated_env, tmux_socket, "send", "k1", b"zz\x9bzz")
    assert done.returncode == 1, done
    assert done.stderr.decode() == f"Error: instance 'k1': the text to send {NOT_UTF8}{TAIL}\n"
    # fleet send refuses it before any broker is reached.
    done = run_cli(isolated_env, tmux_socket, "fleet", "--broker", "mqtt://127.0.0.1:9", "send", "h1/k1", b"x\x9b")
    assert done.returncode == 1, done
    assert done.stderr.decode() == f"Error: target 'h1/k1': the text to send {NOT_UTF8}{TAIL}\n"

    manager.send("k1", "after")
    wait_until(lambda: "echo: after" in console(manager, "k1"), message="the bot echoes the next line")
    assert manager.status(["k1"])[0].pid == pid
    assert b"zz" not in manager.paths.console_log("k1").read_bytes()


def test_hbot_import_and_own_send_with_a_json_surrogate_escape_get_400_and_type_nothing(
    manager: Manager,
    bot_origin: Path,
    mosquitto: Broker,
    agents: AgentRunner,
    watchers: Callable[..., Watcher],
) -> None:
    pid = new_ticker(manager, "tb", bot_origin, start=True)
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)

    data, _ = watcher.request("hbot/tb/import", {"strategy": "zz\udc9b"})
    assert data["status"] == 400, data
    assert f"field 'strategy' {NOT_UTF8}" in data["msg"], data
    data, _ = watcher.request(f"supervisor/{HOST}/tb/send", {"text": "zz\udc9b"})
    assert (data["status"], data["code"]) == (400, "bad_request"), data
    assert f"verb 'send': field 'text' {NOT_UTF8}" in data["msg"], data

    data, _ = watcher.request(f"supervisor/{HOST}/tb/send", {"text": "after"})
    assert data["status"] == 200, data
    wait_until(lambda: "echo: after" in console(manager, "tb"), message="the bot echoes the next line")
    assert manager.status(["tb"])[0].pid == pid
    assert b"zz" not in manager.paths.console_log("tb").read_bytes()


def test_webhook_and_mqtt_external_events_with_a_surrogate_are_reported_never_typed(
    mosquitto: Broker, receivers: Receivers, manager: Manager, agents: AgentRunner, watchers: Callable[..., Watcher]
) -> None:
    manager.new("ex-1", "example-bot")
    manager.start(["ex-1"])
    agents.start(mosquitto.url)
    watcher = watchers(mosquitto)
    events = watcher.watch(f"supervisor/{HOST}/ex-1/events")
    receiver = receivers.start(mosquitto.url, routes_toml(targets=[f"{HOST}/ex-1"]))

    assert post(hook(receiver), b'{"message": "zz\\udc9b"}', token=TOKEN).status == 202
    refused = next_matching(events, lambda m: "Not typed" in m.json()["msg"])
    assert f"value 'payload' {NOT_UTF8}" in refused.json()["msg"], refused.json()
    # The same on the MQTT path, as a hummingbot-api-style client publishes it.
    watcher.publish("hbot/ex-1/external/event/signal", b'{"data": {"message": "zz\\udc9b"}}')
    refused = next_matching(events, lambda m: "Not typed" in m.json()["msg"])
    assert NOT_UTF8 in refused.json()["msg"], refused.json()

    assert post(hook(receiver), b"after", token=TOKEN, content_type="text/plain").status == 202
    wait_until(lambda: "after" in console(manager, "ex-1"), timeout=10, message="the next alert is typed")
    assert b"zz" not in manager.paths.console_log("ex-1").read_bytes()


def test_dashboard_send_and_import_with_a_surrogate_get_400(fleet: Fleet) -> None:
    _, url = fleet.start_dashboard(fleet.home)
    csrf = {"X-CSRF-Token": request(url, "GET", "/api/session")[2]["csrf"]}
    for verb, data, field in (("send", {"text": "zz\udc9b"}, "text"), ("import", {"strategy": "\udc9b"}, "strategy")):
        status, _, body = request(
            url, "POST", "/api/command", {"target": "host-1/mm-1", "verb": verb, "data": data}, csrf
        )
        assert status == 400 and body["error"].endswith(f"field '{field}' {NOT_UTF8}{TAIL}"), body
