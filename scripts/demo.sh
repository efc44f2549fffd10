#!/usr/bin/env bash
# `make demo`: three example bots, each in its own tmux session, then `supervisor ls`.
set -euo pipefail
cd "$(dirname "$0")/.."
sup=".venv/bin/supervisor"
# Idempotent: existing instances are reused and running bots are left alone.
for n in demo-1 demo-2 demo-3; do
  # `ls NAME` exits 1 only when the instance does not exist.
  if ! "$sup" ls "$n" --json >/dev/null 2>&1; then
    "$sup" new "$n" -r example-bot
  fi
done
# `status` exits 0 only when the bot runs: give demo-2 its strategy once, right after its first start.
demo2_was_running=yes
"$sup" status demo-2 >/dev/null 2>&1 || demo2_was_running=no
"$sup" start --wait demo-1 demo-2 demo-3   # ready before demo-2 is given its strategy
if [ "$demo2_was_running" = no ]; then
  "$sup" send demo-2 "start --script demo_strategy.py"
fi
sleep 1
echo
"$sup" ls
echo
echo "Try:  $sup tail demo-2      (the bot's screen)"
echo "      $sup attach demo-1    (its real console; detach with Ctrl-b d)"
echo "      $sup stop demo-3      (graceful: 'stop', 'exit', then signals)"
echo "      make demo-clean       (stop and remove the demo bots)"
