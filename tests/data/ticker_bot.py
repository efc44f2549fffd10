"""A tiny console bot for tests: a prompt, a few commands, a tick line every interval."""

from __future__ import annotations

import os
import sys
import threading
import time

INTERVAL = float(os.environ.get("TICK_INTERVAL", "1"))
EXIT_CODE = int(os.environ.get("BOT_EXIT_CODE", "0"))
CRASH_AFTER = float(os.environ.get("BOT_CRASH_AFTER", "0"))
state = {"running": False, "ticks": 0}


def tick() -> None:
    while True:
        time.sleep(INTERVAL)
        state["ticks"] += 1
        print(f"tick {state['ticks']} running={state['running']}", flush=True)


def main() -> None:
    if CRASH_AFTER:
        time.sleep(CRASH_AFTER)
        print("bot: crashing on purpose", flush=True)
        sys.exit(EXIT_CODE or 1)
    threading.Thread(target=tick, daemon=True).start()
    print("ticker-bot ready", flush=True)
    while True:
        sys.stdout.write(">>> ")
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            return
        cmd = line.strip()
        if cmd.startswith("start"):
            state["running"] = True
            print(f"started: {cmd}", flush=True)
        elif cmd == "stop":
            state["running"] = False
            print("stopped strategy", flush=True)
        elif cmd == "status":
            print(f"status: running={state['running']} ticks={state['ticks']}", flush=True)
        elif cmd == "exit":
            print("bye", flush=True)
            sys.exit(EXIT_CODE)
        elif cmd:
            print(f"echo: {cmd}", flush=True)


if __name__ == "__main__":
    main()
