#!/usr/bin/env bash
# Print the path of a CPython of the given minor version (default 3.12), installing it with pyenv when
# this machine has pyenv but not that version. Exits 1 with what to do when neither works.
set -euo pipefail
want=${1:-3.12}
case "$want" in
  [0-9].[0-9] | [0-9].[0-9][0-9]) ;;
  *) echo "error: python version '$want': expected MAJOR.MINOR, such as 3.12" >&2; exit 2 ;;
esac

is_version() {  # is_version PATH: true when PATH runs and is CPython $want
  [ -x "$1" ] && [ "$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$want" ]
}

pyenv_bin=$(command -v pyenv || true)
if [ -z "$pyenv_bin" ] && [ -x "${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv" ]; then
  pyenv_bin="${PYENV_ROOT:-$HOME/.pyenv}/bin/pyenv"
fi
pyenv_root=""
[ -n "$pyenv_bin" ] && pyenv_root=$("$pyenv_bin" root)

find_one() {
  local candidate
  if [ -n "$pyenv_root" ]; then
    # Newest patch release first; pyenv's own folders, not its shims (a shim answers only for its global versions).
    for candidate in $(ls -d "$pyenv_root"/versions/"$want".*/bin/python"$want" 2>/dev/null | sort -V -r); do
      is_version "$candidate" && { echo "$candidate"; return 0; }
    done
  fi
  for candidate in "/usr/bin/python$want" "/usr/local/bin/python$want"; do
    is_version "$candidate" && { echo "$candidate"; return 0; }
  done
  return 1
}

if find_one; then
  exit 0
fi
if [ -n "$pyenv_bin" ]; then
  echo "==> Python $want is missing: installing it with pyenv (takes minutes, once)" >&2
  latest=$("$pyenv_bin" latest -k "$want" 2>/dev/null || true)
  [ -n "$latest" ] || { echo "error: pyenv knows no Python $want release. Update pyenv ('git -C $pyenv_root pull')." >&2; exit 1; }
  "$pyenv_bin" install -s "$latest" >&2
  find_one && exit 0
fi
echo "error: no Python $want on this machine and no pyenv to install it. Install python$want (apt-get install python$want python$want-venv, or pyenv) and run again." >&2
exit 1
