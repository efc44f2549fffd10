"""What another local user must not read: the state folder, the console logs, the audit and agent logs.

And a log file on a full disk: one line on stderr, not a traceback per record.
"""

from __future__ import annotations

import logging
import typing as t
from pathlib import Path

import pytest
from click.testing import CliRunner

from supervisor.audit import AuditLog
from supervisor.cli import cli
from supervisor.core.manager import Manager
from supervisor.logfiles import rotate_log
from supervisor.mqtt.guard import PrivateLogFile
from tests.conftest import wait_until
from tests.test_external_delivery import fill, small_disk


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_new_state_folder_is_owner_only(tmp_path: Path) -> None:
    home = tmp_path / "fresh" / "home"
    result = CliRunner().invoke(cli, ["--home", str(home), "ls"])
    assert result.exit_code == 0, result.output
    assert mode(home) == 0o700


def test_console_audit_and_agent_logs_are_owner_only(manager: Manager, tmp_path: Path) -> None:
    manager.new("ex-1", "example-bot")
    manager.start(["ex-1"])
    log = manager.log_path("ex-1")
    wait_until(lambda: log.exists() and log.stat().st_size > 0, message="the console log has the bot's output")
    assert mode(log) == 0o600
    audit = AuditLog(tmp_path / "audit.log")
    audit.record(source="test", msg="one line")
    assert mode(tmp_path / "audit.log") == 0o600
    handler = PrivateLogFile(tmp_path / "agent.log", maxBytes=100, backupCount=2, encoding="utf-8")
    try:
        handler.emit(logging.LogRecord("t", logging.WARNING, __file__, 1, "x" * 200, None, None))
        handler.emit(logging.LogRecord("t", logging.WARNING, __file__, 1, "y" * 200, None, None))
    finally:
        handler.close()
    modes = [mode(p) for p in tmp_path.glob("agent.log*")]
    assert len(modes) >= 2  # rotated: the new file is owner-only too
    assert set(modes) == {0o600}
    rotate_log(tmp_path / "audit.log", max_bytes=1)
    assert mode(tmp_path / "audit.log.1") == 0o600


def test_an_agent_log_on_a_full_disk_says_so_once_and_recovers(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with small_disk(tmp_path / "disk", size="1m") as disk:
        handler = PrivateLogFile(disk / "agent.log", maxBytes=10_000_000, backupCount=2, encoding="utf-8")
        try:

            def record(text: str) -> logging.LogRecord:
                return logging.LogRecord("supervisor.agent", logging.WARNING, __file__, 1, text, None, None)

            handler.emit(record("before"))
            fill(disk / "filler")
            for n in range(200):
                handler.emit(record(f"while full {n} " + "z" * 4000))
            err = capfd.readouterr().err
            assert "Traceback" not in err
            assert "Logging error" not in err
            lines: list[t.Any] = [line for line in err.splitlines() if "agent.log" in line]
            assert len(lines) == 1
            assert lines[0].startswith(f"supervisor: cannot write the agent log {disk / 'agent.log'} (")
            (disk / "filler").unlink()
            handler.emit(record("after"))
            assert capfd.readouterr().err == f"supervisor: the agent log {disk / 'agent.log'} can be written again\n"
        finally:
            handler.close()
        assert "after" in (disk / "agent.log").read_text()
