from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from supervisor.core import secrets
from supervisor.core.manager import Manager
from supervisor.errors import SecretError, SecretMissing
from supervisor.paths import Paths
from tests.conftest import RECIPES, invoke, make_origin

if t.TYPE_CHECKING:
    from collections.abc import Iterator

HEADLESS = str(RECIPES / "headless.yaml")
PASSWORD = "s3cret pässword 'with' $quotes"


@pytest.fixture
def home(isolated_env: Path, tmux_socket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("SUPERVISOR_TMUX_SOCKET", tmux_socket)
    yield isolated_env
    with contextlib.suppress(Exception):
        for status in Manager(Paths.from_env(isolated_env, tmux_socket)).status():
            if status.pid:
                os.kill(status.pid, signal.SIGKILL)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def tree_argv(pid: int) -> list[bytes]:
    """The command lines of ``pid`` and all its descendants."""
    found = []
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            found.append(Path(f"/proc/{current}/cmdline").read_bytes())
            todo += [int(k) for k in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
    return found


def test_secret_reaches_bot_and_install_but_no_argv_registry_or_log(
    home: Path, lifecycle_bot_origin: Path, tmp_path: Path
) -> None:
    value_file = tmp_path / "pw.txt"
    value_file.write_text(PASSWORD + "\n")
    invoke("new", "hb", "-r", HEADLESS, "--repo", str(lifecycle_bot_origin), "--secret", f"password=@{value_file}")
    paths = Paths.from_env(home)
    stored = paths.secret_file("hb", "password")
    assert stored.read_bytes() == PASSWORD.encode()  # the trailing newline is dropped
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.secrets_dir("hb").stat().st_mode) == 0o700
    # the install step had it: it wrote the password's digest
    checkout = paths.default_checkout("hb")
    digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
    assert (checkout / "conf/.password_verification").read_text().strip() == digest

    invoke("start", "hb", "--wait")  # ready only if the bot got the right password from its environment
    listing = invoke("ls", "--json", "--no-foreign").stdout
    [record] = json.loads(listing)["instances"]
    assert record["state"] == "running"
    pid = record["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"CONFIG_PASSWORD={PASSWORD}".encode() in environ
    everywhere = [
        listing.encode(),
        invoke("status", "hb", "--json").stdout.encode(),
        paths.registry.read_bytes(),
        paths.run_script("hb").read_bytes(),
        paths.console_log("hb").read_bytes(),
        paths.install_log("hb").read_bytes(),
        *tree_argv(parent_of(pid)),  # run.sh and everything under it
    ]
    for blob in everywhere:
        assert PASSWORD.encode() not in blob
    shown = invoke("secret", "ls", "hb", "--json").stdout
    assert json.loads(shown) == [{"key": "password", "env": "CONFIG_PASSWORD", "is_set": True}]
    assert PASSWORD not in shown


def test_start_refuses_without_a_needed_secret_then_secret_set_from_stdin(
    home: Path, lifecycle_bot_origin: Path
) -> None:
    invoke("new", "hb", "-r", HEADLESS, "--repo", str(lifecycle_bot_origin), "--no-install")
    assert "password  CONFIG_PASSWORD  no" in invoke("secret", "ls", "hb").stdout
    result = invoke("start", "hb", code=1)
    assert result.stderr.strip() == (
        "Error: instance 'hb' cannot start: secret 'password' (for CONFIG_PASSWORD) is not set. "
        "Set it with 'supervisor secret set hb password' (the value is read from stdin)."
    )
    paths = Paths.from_env(home)
    assert not paths.run_script("hb").exists()  # nothing was launched

    invoke("secret", "set", "hb", "password", stdin=PASSWORD + "\r\n")
    assert paths.secret_file("hb", "password").read_bytes() == PASSWORD.encode()
    invoke("install", "hb")
    invoke("start", "hb", "--wait")
    assert json.loads(invoke("status", "hb", "--json").stdout)["state"] == "running"
    assert not list(paths.secrets_dir("hb").glob(".*.tmp"))


def test_secret_options_are_checked_before_anything_touches_disk(
    home: Path, lifecycle_bot_origin: Path, tmp_path: Path
) -> None:
    instances = home / "instances"
    refused = invoke(
        "new", "hb", "-r", HEADLESS, "--repo", str(lifecycle_bot_origin), "--secret", "password=plain", code=1
    )
    assert "must be KEY=@PATH" in refused.stderr
    assert "a secret never goes on the command line" in refused.stderr
    (tmp_path / "v").write_text("x")
    unknown = invoke(
        "new", "hb", "-r", HEADLESS, "--repo", str(lifecycle_bot_origin), "--secret", f"pin=@{tmp_path / 'v'}", code=1
    )
    assert "recipe 'headless' uses no secret 'pin' (its secrets: password)" in unknown.stderr
    missing = invoke(
        "new", "hb", "-r", HEADLESS, "--repo", str(lifecycle_bot_origin), "--secret", "password=@/nonexistent", code=1
    )
    assert "cannot read '/nonexistent'" in missing.stderr
    assert not instances.exists() or not any(instances.iterdir())
    assert invoke("ls", "--json", "--no-foreign").stdout.count('"name"') == 0

    invoke("new", "hb", "-r", HEADLESS, "--repo", str(lifecycle_bot_origin), "--no-install")
    assert "uses no secret 'pin'" in invoke("secret", "set", "hb", "pin", stdin="x", code=1).stderr
    assert "is empty" in invoke("secret", "set", "hb", "password", stdin="\n", code=1).stderr
    assert "NUL byte" in invoke("secret", "set", "hb", "password", stdin=b"a\0b", code=1).stderr
    assert "is not valid" in invoke("secret", "set", "hb", "../x", stdin="x", code=1).stderr
    assert "not set" in invoke("secret", "rm", "hb", "password", code=1).stderr


def test_secret_file_is_private_from_creation_whatever_the_umask(home: Path, tmux_socket: str) -> None:
    paths = Paths.from_env(home, tmux_socket)
    old = os.umask(0)
    try:
        path = secrets.write_secret(paths, "x", "password", b"v1")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secrets.write_secret(paths, "x", "password", b"v2")  # replaced atomically, still private
        assert path.read_bytes() == b"v2"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(paths.secrets_dir("x").stat().st_mode) == 0o700
    finally:
        os.umask(old)
    paths.secrets_dir("x").chmod(0o755)
    with pytest.raises(SecretError, match="can be read by others"):
        secrets.write_secret(paths, "x", "password", b"v3")


def test_run_wrapper_refuses_to_run_when_the_secret_vanished(
    home: Path, tmux_socket: str, lifecycle_bot_origin: Path
) -> None:
    manager = Manager(Paths.from_env(home, tmux_socket))
    manager.new("hb", HEADLESS, repo=str(lifecycle_bot_origin), install=False)
    with pytest.raises(SecretMissing):
        manager.start(["hb"])
    manager.set_secret("hb", "password", b"pw")
    record = manager.registry.get("hb")
    script = manager._write_run_script(record, manager.recipe_for(record))
    manager.remove_secret("hb", "password")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False, timeout=30)
    assert done.returncode == 96
    assert "secret 'password' (CONFIG_PASSWORD) is not set" in done.stderr
    assert "lifecycle-bot" not in done.stdout  # the bot never ran


# A stand-in for the two pieces of Hummingbot the built-in recipe's start touches: its password
# check (the quickstart crashes without conf/.password_verification, as 2.16 does) and the function
# that writes that file. The real bot runs in tests/hummingbot.
FAKE_CONFIG_CRYPT = """\
import hashlib
from pathlib import Path


class ETHKeyFileSecretManger:
    def __init__(self, password):
        self.password = password


def store_password_verification(manager):
    Path("conf/.password_verification").write_text(hashlib.sha256(manager.password.encode()).hexdigest())
"""
FAKE_QUICKSTART = """\
import hashlib, os, time
from pathlib import Path

stored = Path("conf/.password_verification").read_text()  # FileNotFoundError, as Hummingbot's
if stored != hashlib.sha256(os.environ["CONFIG_PASSWORD"].encode()).hexdigest():
    raise SystemExit("Invalid password")
print("MQTT Bridge connected with success", flush=True)
time.sleep(600)
"""


def test_a_hummingbot_password_set_after_new_is_what_the_next_start_uses(home: Path, tmp_path: Path) -> None:
    origin = tmp_path / "hb-origin"
    make_origin(
        origin,
        {
            "bin/hummingbot_quickstart.py": FAKE_QUICKSTART,
            "hummingbot/__init__.py": "",
            "hummingbot/client/__init__.py": "",
            "hummingbot/client/config/__init__.py": "",
            "hummingbot/client/config/config_crypt.py": FAKE_CONFIG_CRYPT,
            ".gitignore": "/.venv\nconf/\n",
        },
    ).close()
    invoke("new", "hb2", "-r", "hummingbot-venv", "--repo", str(origin), "--ref", "main", "--no-install")
    checkout = Paths.from_env(home).default_checkout("hb2")
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / ".venv" / "bin" / "python").symlink_to(sys.executable)
    refused = invoke("start", "hb2", code=1)
    assert "secret 'hummingbot-password'" in refused.stderr

    invoke("secret", "set", "hb2", "hummingbot-password", stdin=PASSWORD)
    invoke("start", "hb2", "--wait")
    [record] = json.loads(invoke("ls", "--json", "--no-foreign").stdout)["instances"]
    assert record["state"] == "running", record
    digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
    assert (checkout / "conf" / ".password_verification").read_text() == digest
