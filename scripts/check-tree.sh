#!/usr/bin/env bash
# Refuse a tree that cannot work on another machine: tracked files that .gitignore names (a committed
# virtualenv, caches), and tracked scripts whose shebang is an absolute path other than a system one.
set -uo pipefail
cd "${1:-$(dirname "$0")/..}"
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || exit 0
status=0
ignored=$(git ls-files -ci --exclude-standard)
if [ -n "$ignored" ]; then
  count=$(printf '%s\n' "$ignored" | wc -l)
  echo "error: $count tracked file(s) are ignored by .gitignore (untrack them with 'git rm -r --cached'): $(printf '%s\n' "$ignored" | head -n 5 | paste -sd ' ')" >&2
  status=1
fi
shebangs=$(git grep -I -l -E '^#!/' -- . 2>/dev/null | while IFS= read -r file; do
  line=$(head -n 1 -- "$file")
  case "$line" in
    '#!/'*) ;;
    *) continue ;;
  esac
  interpreter=${line#\#!}
  interpreter=${interpreter%% *}
  case "$interpreter" in
    /bin/* | /usr/bin/* | /usr/local/bin/* | /usr/sbin/* | /sbin/*) ;;
    *) printf '%s (%s)\n' "$file" "$interpreter" ;;
  esac
done)
if [ -n "$shebangs" ]; then
  echo "error: tracked script(s) with a shebang that points into one machine's folders (use '#!/usr/bin/env NAME'): $(printf '%s\n' "$shebangs" | head -n 5 | paste -sd ' ')" >&2
  status=1
fi
exit $status
