"""The bench bot: one tiny program every peer runs (no tty needed).

Prints a ready line, then reads stdin until EOF (tmux/screen consoles); with
no stdin (supervisord, pm2 give /dev/null) it sleeps until it is signalled.
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    name = sys.argv[sys.argv.index("--name") + 1] if "--name" in sys.argv else "bot"
    print(f"benchbot {name} ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "exit":
            return
        print(f"echo: {line.strip()}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
