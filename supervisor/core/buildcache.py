"""Build outputs shared between checkouts of the same sources (``python -m supervisor.core.buildcache``).

An install step wraps a build command (Hummingbot's ``setup.py build_ext
--inplace``) with this module. The outputs it names (the built ``.so`` files)
are stored once per key, a hash of what the build reads: the content of the
tracked input files, the interpreter's version and platform, the versions of
the named build modules and the command itself (never a branch name). Another
checkout with the same key gets them as hard links, each put in place by a
rename, so nothing a running bot has open is ever written to; stored entries
are never changed. Imports only :mod:`supervisor._proc`, :mod:`supervisor.errors`
and :mod:`supervisor.files`.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import typing as t
from pathlib import Path

from supervisor import _proc
from supervisor.errors import InstallError
from supervisor.files import atomic_write, locked

if t.TYPE_CHECKING:
    from collections.abc import Sequence

COMPLETE = ".supervisor-complete"
"""Written last into a finished entry, with its manifest; an entry folder without it is a leftover."""

USAGE_FILE = "supervisor-buildcache"
"""In a checkout's ``.git``: the entry whose outputs the checkout holds (``supervisor gc`` reads it)."""

_PROBE = """\
import importlib.metadata as md, json, platform, sys, sysconfig
mods = {}
for name in sys.argv[1:]:
    try:
        mods[name] = md.version(name)
    except md.PackageNotFoundError:
        mods[name] = None
print(json.dumps({"python": platform.python_version(), "implementation": sys.implementation.cache_tag,
                  "platform": sysconfig.get_platform(), "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
                  "modules": mods}))
"""

Say = t.Callable[[str], None]


def _matches(path: str, patterns: Sequence[str]) -> bool:
    """Whether ``path`` matches one pattern: one without ``/`` matches the file name, one with it the path."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in p else name, p) for p in patterns)


def _git_files(checkout: Path, *extra: str) -> list[str]:
    """Return ``git ls-files -z EXTRA`` in ``checkout`` (paths relative to it)."""
    try:
        done = _proc.run(["git", "ls-files", "-z", *extra], cwd=checkout, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        msg = f"build cache: cannot list the files of '{checkout}' with git ({e}). Check that git is installed."
        raise InstallError(msg) from e
    if done.returncode != 0:
        msg = f"build cache: '{checkout}' is not a git checkout ({done.stderr.strip()[:200]}). Run it in one."
        raise InstallError(msg)
    return [p for p in done.stdout.split("\0") if p]


def probe_python(python: str, modules: Sequence[str]) -> dict[str, t.Any]:
    """Return what the build's interpreter contributes to the key: version, platform, module versions.

    Raises
    ------
    InstallError
        When the interpreter does not run.
    """
    try:
        done = _proc.run([python, "-c", _PROBE, *modules], timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        msg = f"build cache: python '{python}' does not run ({e}). Check the --python path."
        raise InstallError(msg) from e
    if done.returncode != 0:
        msg = f"build cache: python '{python}' failed ({done.stderr.strip()[-300:]}). Check the --python path."
        raise InstallError(msg)
    return t.cast("dict[str, t.Any]", json.loads(done.stdout))


def build_key(
    checkout: Path, inputs: Sequence[str], python_info: t.Mapping[str, t.Any], command: Sequence[str]
) -> tuple[str, int]:
    """Return the key of a build and the number of input files it covers.

    The inputs are the tracked files matching ``inputs``, hashed by content
    as they are in the work tree.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps({"python": python_info, "command": list(command)}, sort_keys=True).encode())
    files = sorted(p for p in _git_files(checkout) if _matches(p, inputs))
    for rel in files:
        path = checkout / rel
        if path.is_symlink() or not path.is_file():
            content = os.fsencode(str(path.readlink())) if path.is_symlink() else b""
        else:
            content = path.read_bytes()
        digest.update(f"{rel}\0{len(content)}\0".encode())
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()[:20], len(files)


def _outputs_in(checkout: Path, outputs: Sequence[str]) -> list[str]:
    """Return the untracked files in ``checkout`` that match ``outputs`` (what a build made)."""
    found = _git_files(checkout, "--others", "--ignored", "--exclude-standard")
    found += _git_files(checkout, "--others", "--exclude-standard")
    return sorted({p for p in found if _matches(p, outputs) and (checkout / p).is_file()})


def _place(source: Path, dest: Path) -> None:
    """Put ``source`` at ``dest`` as a hard link (a copy across file systems), by a rename."""
    with contextlib.suppress(OSError):
        if dest.samefile(source):
            return  # already this file (and rename(2) between two links of one file does nothing)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.buildcache-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    # The rename gives the path a new file; a bot that has the old one open keeps it unchanged.
    tmp.replace(dest)
    tmp.unlink(missing_ok=True)


def restore(entry: Path, checkout: Path, outputs: Sequence[str]) -> int:
    """Put an entry's files into ``checkout``; remove build outputs there that the entry lacks; return the count."""
    manifest = json.loads((entry / COMPLETE).read_text())["files"]
    for rel in manifest:
        _place(entry / "files" / rel, checkout / rel)
    wanted = set(manifest)
    for rel in _outputs_in(checkout, outputs):
        if rel not in wanted:
            (checkout / rel).unlink(missing_ok=True)  # left by another commit's build: it could shadow a module
    note_usage(checkout, entry)
    return len(manifest)


def note_usage(checkout: Path, entry: Path) -> None:
    """Record in the checkout's ``.git`` which entry it holds the outputs of."""
    gitdir = checkout / ".git"
    if gitdir.is_dir():
        atomic_write(gitdir / USAGE_FILE, f"{entry}\n", mode=0o644, sync=False)


def _store(entry: Path, checkout: Path, files: Sequence[str], info: dict[str, t.Any]) -> None:
    """Copy the built ``files`` into a new entry (read-only), then mark it complete."""
    tmp = entry.parent / f".{entry.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in files:
        dest = tmp / "files" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(checkout / rel, dest)
        dest.chmod(dest.stat().st_mode & ~0o222)  # never written again: shared by every checkout
    (tmp / "files").mkdir(parents=True, exist_ok=True)
    tmp.rename(entry)
    atomic_write(entry / COMPLETE, json.dumps({**info, "files": list(files)}, indent=1) + "\n", mode=0o644)


def ensure_build(
    checkout: Path,
    root: Path,
    prefix: str,
    command: Sequence[str],
    *,
    inputs: Sequence[str],
    outputs: Sequence[str],
    python: str,
    modules: Sequence[str] = (),
    say: Say = print,
    timeout: float = 3600.0,
) -> Path:
    """Give ``checkout`` the outputs of ``command`` for its sources: from the cache, or built once and stored.

    Concurrent callers with one key wait on one lock; the first builds (in its
    own checkout), the others restore what it stored.

    Raises
    ------
    InstallError
        When the build fails (nothing is stored) or makes no output.
    """
    info = probe_python(python, modules)
    key, count = build_key(checkout, inputs, info, command)
    entry = root / f"{prefix}-py{'.'.join(str(info['python']).split('.')[:2])}-{key}"
    say(f"buildcache: key {key} ({count} input files, Python {info['python']}, {info['platform']})")
    root.mkdir(parents=True, exist_ok=True)
    if (entry / COMPLETE).is_file():
        say(f"buildcache: restored {restore(entry, checkout, outputs)} files from {entry}")
        return entry
    say(f"buildcache: waiting for the lock on {entry.name}")
    with locked(root / f".{entry.name}.lock"):
        if (entry / COMPLETE).is_file():
            say(f"buildcache: restored {restore(entry, checkout, outputs)} files from {entry} (built meanwhile)")
            return entry
        if entry.exists():
            say(f"buildcache: removing the unfinished {entry}")
            shutil.rmtree(entry)
        for rel in _outputs_in(checkout, outputs):
            (checkout / rel).unlink()  # never build into a file another checkout shares
        say(f"buildcache: no build for this key yet; running {' '.join(command)}")
        sys.stdout.flush()
        started = time.monotonic()
        try:
            done = _proc.run(list(command), cwd=checkout, timeout=timeout, stdout=None, stderr=None)
        except (OSError, subprocess.SubprocessError) as e:
            msg = f"build cache: the build '{' '.join(command)}' could not run ({e}). See the install log."
            raise InstallError(msg) from e
        if done.returncode != 0:
            msg = f"build cache: the build '{' '.join(command)}' failed with exit code {done.returncode}. See the log."
            raise InstallError(msg)
        files = _outputs_in(checkout, outputs)
        if not files:
            msg = (
                f"build cache: the build '{' '.join(command)}' made no file matching {', '.join(outputs)}. "
                "Check the recipe's --output patterns."
            )
            raise InstallError(msg)
        seconds = round(time.monotonic() - started, 1)
        _store(entry, checkout, files, {"key": key, "python": info, "built_at": time.time(), "seconds": seconds})
        restore(entry, checkout, outputs)  # this checkout shares the stored files too
        say(f"buildcache: built and stored {len(files)} files in {entry} in {seconds}s")
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the install step; prints progress, exits 1 with a one-line error."""
    parser = argparse.ArgumentParser(
        prog="python -m supervisor.core.buildcache",
        description="Run a build once per key and share its outputs between checkouts as hard links.",
    )
    parser.add_argument("--root", required=True, type=Path, help="folder holding the build cache entries")
    parser.add_argument("--prefix", default="build", help="name prefix of the entry folders")
    parser.add_argument("--input", action="append", required=True, help="tracked files the build reads (glob)")
    parser.add_argument("--output", action="append", required=True, help="untracked files the build makes (glob)")
    parser.add_argument("--python", default=sys.executable, help="the build's interpreter (its version is keyed)")
    parser.add_argument("--module", action="append", default=[], help="a build module whose version is keyed")
    parser.add_argument("command", nargs="+", help="the build command, after --")
    args = parser.parse_args(argv)
    try:
        ensure_build(
            Path.cwd(),
            args.root.expanduser().absolute(),
            args.prefix,
            args.command,
            inputs=args.input,
            outputs=args.output,
            python=args.python,
            modules=args.module,
        )
    except InstallError as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:
        print(f"Error: build cache: {e}. Check the disk space and permissions.", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
