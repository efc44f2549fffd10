"""A test bot shaped like a headless Hummingbot: a password, a config file, a wind-down on SIGINT.

Environment: BOT_MODE (``headless``: password from CONFIG_PASSWORD; ``login``: asks
for it on the console), BOT_DELAY (seconds before it is ready), BOT_IGNORE_SIGINT,
BOT_STOP_FLAG (a file whose appearance ends it), BOT_READY_FLAG (a file it waits for
before it is ready), BOT_CRASH (exit with this code
before ready). Files of its checkout: VERSION (v2 adds a key to the config that v1
refuses), CRASH (like BOT_CRASH).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from pathlib import Path

CONF = Path("conf/bot.yml")
VERIFY = Path("conf/.password_verification")
VERSION = int(Path("VERSION").read_text()) if Path("VERSION").exists() else 1


def say(text: str) -> None:
    print(text, flush=True)


def check_password(password: str) -> bool:
    digest = hashlib.sha256(password.encode()).hexdigest()
    return VERIFY.exists() and VERIFY.read_text().strip() == digest


def wind_down(signum: int, frame: object) -> None:
    say("winding down: cancelling orders")
    say("bye")
    sys.exit(0)


def main() -> None:
    say(f"lifecycle-bot v{VERSION} pid {os.getpid()}")
    config = CONF.read_text() if CONF.exists() else ""
    if VERSION == 1 and "new_key" in config:
        say("config error: unknown key 'new_key' in conf/bot.yml")
        sys.exit(3)
    if VERSION >= 2:
        CONF.parent.mkdir(exist_ok=True)
        CONF.write_text(config + "new_key: 1\n")
        Path("conf/v2-only.yml").write_text("written by v2\n")
    if os.environ.get("BOT_MODE") == "login":
        while True:
            sys.stdout.write("Enter your password: ")
            sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                sys.exit(1)
            if check_password(line.strip()):
                break
            say("Invalid password")
    elif not check_password(os.environ.get("CONFIG_PASSWORD", "")):
        say("Invalid password")
        sys.exit(0)
    crash = int(os.environ.get("BOT_CRASH") or 0) or (int(Path("CRASH").read_text()) if Path("CRASH").exists() else 0)
    if crash:
        say(f"crashing before ready with code {crash}")
        sys.exit(crash)
    time.sleep(float(os.environ.get("BOT_DELAY", "0") or 0))
    ready_flag = os.environ.get("BOT_READY_FLAG")
    while ready_flag and not Path(ready_flag).exists():
        time.sleep(0.05)
    if os.environ.get("BOT_IGNORE_SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, wind_down)
    flag = os.environ.get("BOT_STOP_FLAG")
    say("lifecycle-bot ready")
    while True:
        if flag and Path(flag).exists():
            say(f"stop flag says: {Path(flag).read_text().strip()}")
            wind_down(0, None)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
