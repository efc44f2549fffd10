"""The dashboard's JSON API as a script uses it (README, Dashboard, "JSON API"): plain HTTP, no browser."""

from __future__ import annotations

import json
import subprocess
import time
import typing as t

from supervisor.fleet.dashboard.auth import hash_password
from tests.conftest import require_binary, wait_until
from tests.test_dashboard import PASSWORD, fleet, raw_request, request

if t.TYPE_CHECKING:
    from pathlib import Path

    from tests.test_dashboard import Fleet

__all__ = ["fleet"]  # a fixture, used by name

TARGET = "host-1/mm-1"


def test_a_script_logs_in_reads_the_snapshot_sends_a_command_and_logs_out(fleet: Fleet, tmp_path: Path) -> None:
    fleet.add("mm-1")
    fleet.start_agent()
    home = tmp_path / "dash-home"
    home.mkdir()
    (home / "dashboard.toml").write_text(f'[dashboard]\npassword_hash = "{hash_password(PASSWORD)}"\n')
    _, url = fleet.start_dashboard(home)

    status, _, session = request(url, "GET", "/api/session")
    assert status == 200
    assert {k: session[k] for k in ("login_required", "authenticated", "csrf")} == {
        "login_required": True,
        "authenticated": False,
        "csrf": None,
    }
    assert request(url, "GET", "/api/snapshot")[2] == {"error": "log in first"}

    status, headers, login = request(url, "POST", "/api/login", {"password": PASSWORD})
    assert status == 200 and login["ok"] is True and login["csrf"], login
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie.startswith("supervisor_session="), headers["set-cookie"]
    jar = {"Cookie": cookie}
    again = request(url, "GET", "/api/session", headers=jar)[2]
    assert again["authenticated"] is True and again["csrf"] == login["csrf"]
    assert again["version"] and "webhook" in again

    def listed() -> dict[str, t.Any] | None:
        snapshot = request(url, "GET", "/api/snapshot", headers=jar)[2]
        found = [i for i in snapshot["instances"] if i["target"] == TARGET and i["state"] == "running"]
        return {"snapshot": snapshot, "item": found[0]} if found else None

    seen = wait_until(listed, timeout=20, message="the running bot in /api/snapshot")
    snapshot, item = seen["snapshot"], seen["item"]
    assert {"now", "connected", "broker", "hosts", "instances"} <= set(snapshot)
    assert snapshot["connected"] is True and snapshot["broker"] == fleet.broker.url
    assert abs(snapshot["now"] - time.time()) < 300  # epoch seconds of the dashboard's clock
    assert [(h["host"], h["online"]) for h in snapshot["hosts"]] == [("host-1", True)]
    assert (item["host"], item["instance"], item["health"]) == ("host-1", "mm-1", "ok")
    assert item["pid"] == fleet.pid("mm-1")
    for field in ("cpu_percent", "rss", "restarts", "recipe", "heartbeat_ts", "pnl"):
        assert field in item, field

    stop = {"target": TARGET, "verb": "stop", "data": {}}
    refused = request(url, "POST", "/api/command", stop, jar)
    assert refused[0] == 403 and "X-CSRF-Token" in refused[2]["error"]
    csrf = {**jar, "X-CSRF-Token": login["csrf"]}
    assert raw_request(url, "POST", "/api/command", b"{}", {**csrf, "Content-Type": "text/plain"})[0] == 415
    unknown = request(url, "POST", "/api/command", {**stop, "verb": "shell"}, csrf)
    assert unknown[0] == 400 and "Known verbs: " in unknown[2]["error"]
    assert fleet.pid("mm-1") is not None  # nothing was sent yet

    status, _, reply = request(url, "POST", "/api/command", stop, csrf)
    assert status == 200, reply
    assert (reply["target"], reply["verb"], reply["ok"], reply["timed_out"]) == (TARGET, "stop", True, False)
    assert {"status", "msg", "result"} <= set(reply)
    assert fleet.manager.status(["mm-1"])[0].state == "stopped"

    status, _, history = request(url, "GET", f"/api/history/{TARGET}", headers=jar)
    assert status == 200 and history["target"] == TARGET
    assert {"performance", "controllers", "messages"} <= set(history)

    assert request(url, "POST", "/api/logout", {}, csrf)[0] == 200
    assert request(url, "GET", "/api/snapshot", headers=jar)[0] == 403


def test_on_loopback_without_a_password_the_session_hands_out_the_csrf_token(fleet: Fleet) -> None:
    _, url = fleet.start_dashboard(fleet.home)
    session = request(url, "GET", "/api/session")[2]
    assert session["login_required"] is False and session["authenticated"] is True and session["csrf"]
    assert request(url, "GET", "/api/snapshot")[0] == 200  # no cookie needed
    stop = {"target": TARGET, "verb": "stop", "data": {}}
    assert request(url, "POST", "/api/command", stop)[0] == 403  # but every POST needs the token


def test_the_readmes_curl_session(fleet: Fleet, tmp_path: Path) -> None:
    curl = require_binary("curl")
    fleet.add("mm-1")
    fleet.start_agent()
    home = tmp_path / "dash-home"
    home.mkdir()
    (home / "dashboard.toml").write_text(f'[dashboard]\npassword_hash = "{hash_password(PASSWORD)}"\n')
    _, url = fleet.start_dashboard(home)
    jar = str(tmp_path / "jar")

    def run(*args: str) -> t.Any:
        done = subprocess.run([curl, "-s", *args], capture_output=True, check=True, timeout=30)
        return json.loads(done.stdout)

    login = run(
        "-c", jar, "-H", "Content-Type: application/json", "-d", json.dumps({"password": PASSWORD}), f"{url}/api/login"
    )
    assert login["ok"] is True and login["csrf"]
    wait_until(
        lambda: any(
            i["target"] == TARGET and i["state"] == "running"
            for i in run("-b", jar, f"{url}/api/snapshot")["instances"]
        ),
        timeout=20,
        message="the bot in the snapshot",
    )
    command = json.dumps({"target": TARGET, "verb": "restart", "data": {}})
    reply = run(
        "-b",
        jar,
        "-H",
        "Content-Type: application/json",
        "-H",
        f"X-CSRF-Token: {login['csrf']}",
        "-d",
        command,
        f"{url}/api/command",
    )
    assert reply["ok"] is True, reply
    assert fleet.manager.status(["mm-1"])[0].restarts >= 1
