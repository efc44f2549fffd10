#!/usr/bin/env bash
# Make sure .venv is this checkout's own virtualenv with the project and its dev group installed.
# A .venv that was copied, committed or made in another folder is removed and made anew, never trusted:
# its scripts would run another checkout's interpreter and code.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd -P)
# VENV names another folder of this checkout (.venv-3.12 for the second Python CI runs); .venv by default.
venv="$here/${VENV:-.venv}"
python=${PYTHON:-python3}

belongs_here() {
  [ -x "$venv/bin/python" ] || { echo "no interpreter"; return 1; }
  "$venv/bin/python" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null \
    || { echo "its python does not run as a virtualenv"; return 1; }
  local prefix
  prefix=$("$venv/bin/python" -c 'import os, sys; print(os.path.realpath(sys.prefix))' 2>/dev/null) || prefix=?
  [ "$prefix" = "$(realpath "$venv")" ] || { echo "its interpreter belongs to $prefix"; return 1; }
  if [ -n "${PYTHON:-}" ]; then
    # Asked for a given interpreter (CI's second Python): a venv of another version is made anew.
    local want have
    want=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || want=?
    have=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || have=?
    [ "$want" = "$have" ] || { echo "its Python is $have, not $want"; return 1; }
  fi
  if [ -e "$venv/bin/pip" ]; then
    local shebang
    shebang=$(head -n 1 "$venv/bin/pip")
    case "$shebang" in
      "#!$venv/bin/python"*) ;;
      *) echo "its scripts run ${shebang#\#!}"; return 1 ;;
    esac
  fi
  if [ -e "$venv/.installed" ]; then
    local origin
    origin=$("$venv/bin/python" -c 'import os, supervisor; print(os.path.realpath(supervisor.__file__))' 2>/dev/null) || origin=?
    case "$origin" in
      "$here/supervisor/"*) ;;
      *) echo "its 'supervisor' package is $origin"; return 1 ;;
    esac
  fi
}

if [ "${1:-}" = "--check" ]; then
  # Only say whether .venv belongs to this checkout (exit 0) or why not (exit 1); change nothing.
  why=$(belongs_here) || { echo "$why"; exit 1; }
  exit 0
fi

if [ -e "$venv" ] && ! why=$(belongs_here); then
  echo "==> ${venv#"$here/"} does not belong to this checkout ($why); making it anew"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating ${venv#"$here/"} with $("$python" --version 2>&1)"
  "$python" -m venv "$venv"
fi
if [ ! -e "$venv/.installed" ] || [ pyproject.toml -nt "$venv/.installed" ]; then
  echo "==> installing bot-supervisor and its dev group into ${venv#"$here/"}"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade 'pip>=25.1'
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e . --group dev
  touch "$venv/.installed"
fi
