#!/usr/bin/env bash
# Install the programs bot-supervisor and its tests need when they are missing:
# tmux, GNU screen, git and mosquitto (Debian/Ubuntu package names).
set -euo pipefail
need=()
for pair in tmux:tmux screen:screen git:git mosquitto:mosquitto mosquitto_sub:mosquitto-clients nats-server:nats-server chromium:chromium; do
  cmd=${pair%%:*} pkg=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ]; then need+=("$pkg"); fi
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "==> installing system packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
  echo "error: missing ${need[*]} and not root (no sudo). Install them with your package manager." >&2; exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing ${need[*]}; this script knows only apt-get. Install them with your package manager." >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# Debian's mosquitto package may try to start its own service; policy-rc.d keeps it from grabbing port 1883 twice.
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
