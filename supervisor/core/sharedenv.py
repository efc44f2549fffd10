"""Shared Python virtual environments for recipes (``python -m supervisor.core.sharedenv``).

An install step calls this to get a venv holding a checkout's dependencies.
Envs are keyed by a hash of the interpreter's version and the dependency list,
built under a lock, marked complete last, and never modified afterwards: an
install for one instance can never change the env under a running bot. Imports
only :mod:`supervisor._proc` and :mod:`supervisor.errors`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import re
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
"""Written last into a finished env; an env folder without it is a leftover and is rebuilt."""

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")
_PIP_MIN = "pip>=25.1"  # older pips (23.x on Python 3.12) give up on Hummingbot's dependency graph


def find_python(spec: str, *, want: str | None = None) -> tuple[Path, str]:
    """Return the interpreter ``spec`` names and its full version (``3.12.1``).

    ``spec`` is a path, or a name looked up on ``PATH`` and then in pyenv's
    versions (``pyenv root``/versions/*/bin). ``want`` (``3.12``) is the
    required major.minor.

    Raises
    ------
    InstallError
        When no such interpreter exists, it does not run, or its version differs.
    """
    candidates: list[Path] = []
    if "/" in spec:
        candidates.append(Path(spec).expanduser())
    else:
        found = shutil.which(spec)
        if found:
            candidates.append(Path(found))
        candidates.extend(_pyenv_candidates(spec, want))
    hint = (
        f"Install Python {want or spec} (for example 'pyenv install {want or '3.12'}') "
        f"or give its path with --set python{(want or '').replace('.', '')}=/path/to/python{want or ''}."
    )
    tried: list[str] = []
    for candidate in candidates:
        version = _version_of(candidate)
        if version is None:
            tried.append(f"{candidate} (does not run)")
            continue
        if want and not (version == want or version.startswith(f"{want}.")):
            tried.append(f"{candidate} (is {version})")
            continue
        return candidate, version
    where = f"; tried {', '.join(tried)}" if tried else " on PATH or in pyenv"
    msg = f"python '{spec}': no Python {want or ''} found{where}. {hint}".replace("  ", " ")
    raise InstallError(msg)


def _pyenv_candidates(spec: str, want: str | None) -> list[Path]:
    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = _proc.run(["pyenv", "root"], timeout=10)
            roots.insert(0, out.stdout.strip())
    found: list[Path] = []
    for root in dict.fromkeys(r for r in roots if r):
        versions = Path(root) / "versions"
        if not versions.is_dir():
            continue
        for folder in sorted(versions.iterdir(), key=_version_key, reverse=True):
            if want and not (folder.name == want or folder.name.startswith(f"{want}.")):
                continue
            binary = folder / "bin" / spec
            if binary.is_file():
                found.append(binary)
    return found


def _version_key(folder: Path) -> tuple[int, ...]:
    match = _VERSION_RE.match(folder.name)
    return tuple(int(part or 0) for part in match.groups()) if match else (0,)


def _version_of(python: Path) -> str | None:
    try:
        out = _proc.run([str(python), "-c", "import platform; print(platform.python_version())"], timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.strip()
    return text if out.returncode == 0 and _VERSION_RE.match(text) else None


def read_setup_requirements(setup_py: Path) -> list[str]:
    """Return the literal ``install_requires`` list of a ``setup.py``, without running it.

    Running ``setup.py`` would cythonize the whole tree; the list is a literal
    in the projects this serves (Hummingbot), either as ``install_requires =
    [...]`` or as the ``install_requires=[...]`` keyword.

    Raises
    ------
    InstallError
        When the file cannot be read or holds no literal list of strings.
    """
    try:
        tree = ast.parse(setup_py.read_text(encoding="utf-8"), filename=str(setup_py))
    except (OSError, SyntaxError, ValueError) as e:
        msg = f"setup file '{setup_py}': cannot be read ({e}). Check the checkout."
        raise InstallError(msg) from e
    for node in ast.walk(tree):
        is_list = (isinstance(node, ast.keyword) and node.arg == "install_requires") or (
            isinstance(node, ast.Assign)
            and any(isinstance(target, ast.Name) and target.id == "install_requires" for target in node.targets)
        )
        if not is_list:
            continue
        assert isinstance(node, (ast.keyword, ast.Assign))
        value = node.value
        with contextlib.suppress(ValueError):
            found = ast.literal_eval(value)
            if isinstance(found, (list, tuple)) and all(isinstance(item, str) for item in found):
                return [item.strip() for item in found if item.strip()]
    msg = (
        f"setup file '{setup_py}': no literal install_requires list found. "
        "Give the dependencies with --requirements FILE instead."
    )
    raise InstallError(msg)


def read_requirements(path: Path) -> list[str]:
    """Return the requirement lines of a requirements file (comments and blanks dropped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        msg = f"requirements file '{path}': cannot be read ({e.strerror}). Check the path."
        raise InstallError(msg) from e
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def env_key(python_version: str, requirements: Sequence[str]) -> str:
    """Return the key of the env for this interpreter version and requirement list (order does not matter)."""
    normalised = sorted({re.sub(r"\s+", "", req).lower() for req in requirements})
    blob = json.dumps({"python": python_version, "requirements": normalised}, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_env(
    root: Path,
    prefix: str,
    python: Path,
    python_version: str,
    requirements: Sequence[str],
    *,
    say: t.Callable[[str], None] = print,
    timeout: float = 3600.0,
) -> Path:
    """Return the complete env for ``requirements`` under ``root``, building it if needed.

    Concurrent callers for the same key wait on one lock; the first builds, the
    others reuse. A folder left without its completion mark (a crash mid-build)
    is removed and built again. A complete env is never touched.

    Raises
    ------
    InstallError
        When the venv cannot be created or pip fails (the partial env is removed).
    """
    key = env_key(python_version, requirements)
    major_minor = ".".join(python_version.split(".")[:2])
    env = root / f"{prefix}-py{major_minor}-{key}"
    root.mkdir(parents=True, exist_ok=True)
    if (env / COMPLETE).is_file():
        say(f"sharedenv: reusing {env}")
        return env
    say(f"sharedenv: waiting for the lock on {env.name}")
    with locked(root / f".{env.name}.lock"):
        if (env / COMPLETE).is_file():
            say(f"sharedenv: reusing {env} (built meanwhile)")
            return env
        if env.exists():
            say(f"sharedenv: removing the unfinished {env}")
            shutil.rmtree(env)
        started = time.monotonic()
        try:
            _build(env, python, requirements, say, timeout)
        except BaseException:
            shutil.rmtree(env, ignore_errors=True)
            raise
        info = {
            "python": str(python),
            "python_version": python_version,
            "requirements": list(requirements),
            "built_at": time.time(),
            "seconds": round(time.monotonic() - started, 1),
        }
        atomic_write(env / COMPLETE, json.dumps(info, indent=1) + "\n", mode=0o644)
        say(f"sharedenv: built {env} in {info['seconds']}s")
    return env


def _build(env: Path, python: Path, requirements: Sequence[str], say: t.Callable[[str], None], timeout: float) -> None:
    steps: list[tuple[str, list[str]]] = [
        ("creating the venv", [str(python), "-m", "venv", str(env)]),
        ("upgrading pip", [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", _PIP_MIN]),
        (
            f"installing {len(requirements)} requirements from PyPI",
            [str(env / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", *requirements],
        ),
    ]
    for what, argv in steps:
        say(f"sharedenv: {what}")
        sys.stdout.flush()
        try:
            done = _proc.run(argv, timeout=timeout, stdout=None, stderr=None)
        except (OSError, subprocess.SubprocessError) as e:
            msg = f"shared env '{env}': {what} failed ({e}). See the install log."
            raise InstallError(msg) from e
        if done.returncode != 0:
            msg = f"shared env '{env}': {what} failed with exit code {done.returncode}. See the install log above."
            raise InstallError(msg)


def link_env(checkout: Path, link: str, env: Path) -> Path:
    """Point ``checkout/link`` at ``env`` (replaced atomically) and keep git from listing it.

    The link is added to the checkout's ``.git/info/exclude`` (a local ignore
    list), so ``git status`` stays clean and ``update`` keeps working.
    """
    target = checkout / link
    tmp = checkout / f".{Path(link).name}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(env)
    tmp.replace(target)
    gitdir = checkout / ".git"
    if gitdir.is_dir():
        exclude = gitdir / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        entry = f"/{link}"
        lines = exclude.read_text().splitlines() if exclude.is_file() else []
        if entry not in lines:
            with exclude.open("a") as handle:
                handle.write(f"{entry}\n")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the install step; prints progress, exits 1 with a one-line error."""
    parser = argparse.ArgumentParser(
        prog="python -m supervisor.core.sharedenv",
        description="Create or reuse a shared, never-modified venv holding a checkout's dependencies.",
    )
    parser.add_argument("--python", required=True, help="interpreter: a path, or a name found on PATH or in pyenv")
    parser.add_argument("--require", help="required major.minor version, e.g. 3.12")
    parser.add_argument("--root", required=True, type=Path, help="folder holding the shared envs")
    parser.add_argument("--prefix", default="env", help="name prefix of the env folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--setup-py", type=Path, help="read the literal install_requires of this setup.py")
    source.add_argument("--requirements", type=Path, help="read a requirements file")
    parser.add_argument("--extra", action="append", default=[], help="one more requirement (repeatable)")
    parser.add_argument("--link", help="make this path in the current folder a symlink to the env")
    parser.add_argument("--check-only", action="store_true", help="only find and check the interpreter")
    args = parser.parse_args(argv)
    try:
        python, version = find_python(args.python, want=args.require)
        print(f"sharedenv: using Python {version} at {python}", flush=True)
        if args.check_only:
            return 0
        requirements = read_setup_requirements(args.setup_py) if args.setup_py else read_requirements(args.requirements)
        requirements = [*requirements, *args.extra]
        env = ensure_env(args.root.expanduser().absolute(), args.prefix, python, version, requirements)
        if args.link:
            link_env(Path.cwd(), args.link, env)
            print(f"sharedenv: {args.link} -> {env}", flush=True)
    except InstallError as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
