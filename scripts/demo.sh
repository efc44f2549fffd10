#!/usr/bin/env bash
# `make demo`: three example bots, each in its own tmux session, then `supervisor ls`.
set -euo pipefail
cd "$(dirname "$0")/.."
sup=".venv/bin/supervisor"
for n in demo-1 demo-2 demo-3; do
  if ! "$sup" status "$n" --json >/dev/null 2>&1 && ! "$sup" ls "$n" --json >/dev/null 2>&1; then
    "$sup" new "$n" -r example-bot
  fi
done
"$sup" start demo-1 demo-2 demo-3
"$sup" send demo-2 "start --script demo_strategy.py"
sleep 1
echo
"$sup" ls
echo
echo "Try:  $sup tail demo-2      (the bot's screen)"
echo "      $sup attach demo-1    (its real console; detach with Ctrl-b d)"
echo "      $sup stop demo-3      (graceful: 'stop', 'exit', then signals)"
echo "      make demo-clean       (stop and remove the demo bots)"
