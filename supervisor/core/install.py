"""Git mirrors, checkouts and recipe install steps; the only ``import git``.

Of ours it imports only ``_proc`` and ``errors``. GitPython loads lazily (its import
spawns ``git version``), so :func:`current_commit` and :func:`describe_ref` stay cheap.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import typing as t
import urllib.parse
from pathlib import Path

from supervisor import _proc
from supervisor.errors import InstallError
from supervisor.files import locked

if t.TYPE_CHECKING:
    import git

logger = logging.getLogger(__name__)

ProgressFn = t.Callable[[str, int | None, int | None], None]
"""``(stage text, current, total)``; ``total`` is ``None`` when git does not know it."""

LineFn = t.Callable[[str], None]
"""Receives one human line per install event, such as ``"[2/3] ./compile"``."""

# Progress parsing and error messages rely on git's English wording; no credential
# prompt may ever block a clone that runs without a terminal.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "LANGUAGE": "C"}
_HEX_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_PROGRESS_LINE = re.compile(r"(?:remote: )?([A-Za-z][A-Za-z ]+):\s+(?:\d+% \((\d+)/(\d+)\)|(\d+))")
_KILL_GRACE = 5.0


# -- URLs and mirror locations -------------------------------------------------------


def _is_local(url: str) -> bool:
    """Tell whether ``url`` names a local folder (plain path or ``file://``)."""
    if url.startswith("file://"):
        return True
    if "://" in url:
        return False
    # git reads "host:path" (a colon before the first slash) as scp-like ssh.
    return ":" not in url.split("/", 1)[0]


def _local_path(url: str) -> Path:
    """Return the absolute folder a local ``url`` points at."""
    if url.startswith("file://"):
        url = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    return Path(url).expanduser().resolve()


def _normalise_url(url: str) -> str:
    """Return one spelling per repository, so equivalent URLs share a mirror."""
    url = url.strip()
    if _is_local(url):
        return str(_local_path(url))
    url = url.rstrip("/").removesuffix(".git")
    if "://" in url:
        parts = urllib.parse.urlsplit(url)
        return urllib.parse.urlunsplit(parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower()))
    return url


def _clone_source(url: str) -> str:
    """Return what git clones from: local paths made absolute, others unchanged."""
    url = url.strip()
    if _is_local(url) and not url.startswith("file://"):
        return str(_local_path(url))
    return url


def mirror_path(mirrors_dir: Path, url: str) -> Path:
    """Return the folder of the shared bare mirror of ``url``.

    The name is ``<slug>-<hash>.git``: the slug (last part of the URL) keeps it
    readable, and 12 hex digits of the SHA-1 of the normalised URL keep two
    repositories of the same name apart.
    """
    normalised = _normalise_url(url)
    last = re.split(r"[/:]", normalised.rstrip("/"))[-1].removesuffix(".git")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip(".-")[:40] or "repo"
    digest = hashlib.sha1(normalised.encode(), usedforsecurity=False).hexdigest()[:12]
    return mirrors_dir / f"{slug}-{digest}.git"


# -- running git through GitPython ---------------------------------------------------


class _GitFailure(Exception):
    """A git command failed; carries the telling line and the stderr tail.

    Raised by :func:`_git` and :func:`_set_config` so callers can build an
    :class:`InstallError` without importing GitPython.
    """

    def __init__(self, reason: str, tail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tail = tail


_STAGE_NAMES = {
    "COUNTING": "counting objects",
    "COMPRESSING": "compressing objects",
    "WRITING": "writing objects",
    "RECEIVING": "receiving objects",
    "RESOLVING": "resolving deltas",
    "FINDING_SOURCES": "finding sources",
    "CHECKING_OUT": "checking out files",
}


@functools.cache
def _relay_class() -> t.Callable[[ProgressFn], git.RemoteProgress]:
    """Build the ``RemoteProgress`` subclass on first use (GitPython loads lazily)."""
    import git

    stages = {getattr(git.RemoteProgress, op): name for op, name in _STAGE_NAMES.items()}

    class ProgressRelay(git.RemoteProgress):
        """Turns git's ``--progress`` lines into ``ProgressFn`` calls."""

        def __init__(self, callback: ProgressFn) -> None:
            super().__init__()
            self.callback = callback

        def update(
            self,
            op_code: int,
            cur_count: str | float,
            max_count: str | float | None = None,
            message: str = "",
        ) -> None:
            """Relay one line GitPython parsed."""
            stage = stages.get(op_code & self.OP_MASK, "working")
            self.callback(stage, _as_int(cur_count), _as_int(max_count))

        def line_dropped(self, line: str) -> None:
            """Relay stages GitPython skips, such as "Updating files"."""
            match = _PROGRESS_LINE.match(line)
            if match is None:
                return
            name, current, total, absolute = match.groups()
            self.callback(name.strip().lower(), _as_int(current or absolute), _as_int(total))

    return ProgressRelay


def _progress_relay(callback: ProgressFn) -> git.RemoteProgress:
    return _relay_class()(callback)


def _as_int(value: str | float | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _git(
    args: t.Sequence[str],
    *,
    cwd: Path | None = None,
    progress: ProgressFn | None = None,
    config: t.Mapping[str, str] | None = None,
) -> str:
    """Run ``git [-c k=v] ARGS`` and return its stdout.

    With ``progress``, ``--progress`` goes right after the subcommand and stderr
    is parsed live by the relay. Any failure becomes :class:`_GitFailure`.
    """
    import git
    from git.cmd import handle_process_output

    runner = git.Git(cwd)
    runner.update_environment(**_GIT_ENV)
    executable = str(git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git")
    options = [item for key, value in (config or {}).items() for item in ("-c", f"{key}={value}")]
    command = list(args)
    try:
        if progress is None:
            return runner.execute([executable, *options, *command])
        command.insert(1, "--progress")
        relay = _progress_relay(progress)
        # Text mode splits git's carriage-return updates into separate lines.
        process = runner.execute([executable, *options, *command], as_process=True, universal_newlines=True)
        handle_process_output(
            process,
            None,
            relay.new_message_handler(),
            finalizer=None,
            decode_streams=False,
        )
        process.wait(stderr="\n".join(relay.error_lines or relay.other_lines[-20:]))
    except (git.GitError, OSError) as e:
        raise _GitFailure(_reason(e), _tail_of(e)) from e
    return ""


def _set_config(repo_dir: Path, values: t.Mapping[tuple[str, str], str]) -> None:
    """Write ``{(section, option): value}`` into a repository's own config file."""
    import git

    try:
        with git.Repo(repo_dir).config_writer() as config:
            for (section, option), value in values.items():
                config.set_value(section, option, value)
    except (git.GitError, OSError) as e:
        raise _GitFailure(_reason(e), _tail_of(e)) from e


def _stderr_of(error: Exception) -> str:
    """Return git's stderr without GitPython's ``stderr: '...'`` frame."""
    import git

    if isinstance(error, git.CommandError):
        text = error.stderr.strip()
        return text.removeprefix("stderr: '").removesuffix("'").strip()
    return str(error)


def _reason(error: Exception) -> str:
    """Return the most telling line of a git failure, for an error message."""
    import git

    if isinstance(error, git.GitCommandNotFound):
        return "the 'git' program is not installed"
    lines = [line.strip() for line in _stderr_of(error).splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    if fatal or lines:
        return (fatal or lines)[-1]
    if isinstance(error, git.CommandError):
        return f"git exited with status {error.status}"
    return type(error).__name__


def _tail_of(error: Exception, lines: int = 20) -> str:
    return "\n".join(_stderr_of(error).splitlines()[-lines:])


# -- mirrors ---------------------------------------------------------------------------


def ensure_mirror(mirrors_dir: Path, url: str, *, progress: ProgressFn | None = None) -> Path:
    """Create or update the bare mirror of ``url`` and return its path.

    An existing mirror costs exactly one ``git fetch``. A new one is cloned into a
    temporary folder and renamed into place, so a crash never leaves half a mirror.
    A lock file next to the mirror serialises concurrent callers.

    Raises
    ------
    InstallError
        When the clone or fetch fails, or the mirror folder is not a repository.
    """
    mirror = mirror_path(mirrors_dir, url)
    mirrors_dir.mkdir(parents=True, exist_ok=True)
    with locked(mirror.with_name(mirror.name + ".lock")):
        if (mirror / "HEAD").is_file() and (mirror / "objects").is_dir():
            _fetch_mirror(mirror, url, progress)
        elif mirror.exists():
            msg = (
                f"mirror '{mirror}': the folder is not a git repository. "
                "Remove it (instances cloned from it must be reinstalled) "
                "and try again."
            )
            raise InstallError(msg)
        else:
            _create_mirror(mirror, url, progress)
    return mirror


def _create_mirror(mirror: Path, url: str, progress: ProgressFn | None) -> None:
    partial = mirror.with_name(f".{mirror.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    logger.debug("creating mirror %s of %s", mirror, url)
    try:
        _git(
            ["clone", "--mirror", "--", _clone_source(url), str(partial)],
            progress=progress,
        )
        # Checkouts borrow objects through alternates: never drop any here.
        _set_config(partial, _MIRROR_CONFIG)
        partial.rename(mirror)
    except (_GitFailure, OSError) as e:
        shutil.rmtree(partial, ignore_errors=True)
        msg = f"repository '{url}': could not clone it ({_why(e)}). Check the URL and that it is reachable."
        raise InstallError(msg, step="clone", log_tail=_tail(e)) from e
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


_MIRROR_CONFIG = {
    ("gc", "auto"): "0",
    ("gc", "pruneExpire"): "never",
    ("maintenance", "auto"): "false",
}


def _why(error: Exception) -> str:
    return error.reason if isinstance(error, _GitFailure) else str(error)


def _tail(error: Exception) -> str:
    return error.tail if isinstance(error, _GitFailure) else str(error)


def _fetch_mirror(mirror: Path, url: str, progress: ProgressFn | None) -> None:
    logger.debug("fetching mirror %s", mirror)
    try:
        # Never prune: a checkout may still sit on a commit whose branch was deleted.
        _git(["fetch", "--no-prune", "origin"], cwd=mirror, progress=progress)
    except (_GitFailure, OSError) as e:
        msg = f"repository '{url}': could not fetch it ({_why(e)}). Check that it is still reachable."
        raise InstallError(msg, step="fetch", log_tail=_tail(e)) from e


# -- checkouts -------------------------------------------------------------------------


def clone_checkout(mirror: Path, url: str, dest: Path, ref: str, *, progress: ProgressFn | None = None) -> str:
    """Create a work tree of ``ref`` at ``dest`` borrowing objects from ``mirror``.

    The clone copies no objects (``git clone --shared``); its ``origin`` is then
    pointed at the real ``url``. A branch becomes a local branch tracking
    ``origin/<ref>``; a tag or commit is checked out detached. An empty ``ref``
    means the repository's default branch.

    Returns
    -------
    str
        The hexsha of the checked-out commit.

    Raises
    ------
    InstallError
        When ``dest`` holds files, ``ref`` does not exist, or git fails; whatever
        was created at ``dest`` is removed first.
    """
    dest = dest.expanduser().absolute()
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir() or any(dest.iterdir()):
            msg = f"checkout '{dest}': the folder exists and is not empty. Remove it or choose another folder."
            raise InstallError(msg)
        created = False
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        created = True
    try:
        commit = _clone_into(mirror, url, dest, ref, progress)
    except BaseException:
        _discard(dest, created=created)
        raise
    logger.debug("cloned %s at %s into %s", url, commit, dest)
    return commit


def _clone_into(mirror: Path, url: str, dest: Path, ref: str, progress: ProgressFn | None) -> str:
    named = bool(ref) and (_read_ref(mirror, f"refs/heads/{ref}") or _read_ref(mirror, f"refs/tags/{ref}"))
    args = ["clone", "--shared"]
    if named:
        args += ["--branch", ref]  # git detaches HEAD itself when ref is a tag
    elif ref:
        args += ["--no-checkout"]
    try:
        _git([*args, "--", str(mirror), str(dest)], progress=progress)
        if ref and not named:
            _detach(dest, url, ref, _resolve_commit(dest, ref), progress)
        _set_origin_url(dest, url)
    except (_GitFailure, OSError) as e:
        msg = f"repository '{url}': could not check out '{ref or 'HEAD'}' into '{dest}' ({_why(e)}). {_HINT_RETRY}"
        raise InstallError(msg, step="checkout", log_tail=_tail(e)) from e
    return _checked_out_commit(dest)


_QUIET_DETACH = {"advice.detachedHead": "false"}
_HINT_RETRY = "Check the ref and the repository, then run the install again."


def _discard(dest: Path, *, created: bool) -> None:
    """Remove what a failed clone left at ``dest`` (the folder only if we made it)."""
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir() if dest.is_dir() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _detach(checkout: Path, url: str, ref: str, commit: str | None, progress: ProgressFn | None) -> None:
    """Check out ``commit`` (what ``ref`` resolved to) detached, or say that ``ref`` does not exist."""
    if commit is None:
        msg = (
            f"repository '{url}': ref '{ref}' not found. "
            f"Use a branch, tag or commit that exists there (see 'git ls-remote {url}')."
        )
        raise InstallError(msg, step="checkout")
    _git(["checkout", "-q", "--detach", commit], cwd=checkout, progress=progress, config=_QUIET_DETACH)


def _set_origin_url(checkout: Path, url: str) -> None:
    """Point ``origin`` at the real repository so ``git pull`` there works."""
    _set_config(checkout, {('remote "origin"', "url"): _clone_source(url)})


def _resolve_commit(checkout: Path, ref: str) -> str | None:
    """Return the commit ``ref`` names in ``checkout``, or ``None``."""
    try:
        out = _git(
            [
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                f"{ref}^{{commit}}",
            ],
            cwd=checkout,
        )
    except _GitFailure:
        return None
    return out.strip() or None


def fetch_and_checkout(
    checkout: Path,
    mirror: Path,
    url: str,
    ref: str,
    *,
    progress: ProgressFn | None = None,
) -> tuple[str, str]:
    """Bring ``checkout`` to the newest ``ref`` and return ``(old_commit, new_commit)``.

    The caller refreshes the mirror first (:func:`ensure_mirror`); this fetches
    from the mirror into ``refs/remotes/origin/*``, which moves no objects because
    the checkout already borrows them. A branch is reset to ``origin/<ref>``; a tag
    or commit is checked out detached. Untracked files (``conf/``) are kept.

    Raises
    ------
    InstallError
        When tracked files have uncommitted changes, ``ref`` does not exist,
        or git fails.
    """
    old = _fetch_from_mirror(checkout, mirror, progress)
    _refuse_local_changes(checkout)
    is_branch, target = _target(checkout, ref)
    try:
        if is_branch:
            _git(
                ["checkout", "-q", "-B", ref, "--track", f"origin/{ref}"],
                cwd=checkout,
                progress=progress,
            )
        else:
            _detach(checkout, url, ref, target, progress)
        _set_origin_url(checkout, url)
    except (_GitFailure, OSError) as e:
        msg = f"checkout '{checkout}': could not check out '{ref}' ({_why(e)}). {_HINT_RETRY}"
        raise InstallError(msg, step="checkout", log_tail=_tail(e)) from e
    return old, _checked_out_commit(checkout)


def resolve_update(checkout: Path, mirror: Path, url: str, ref: str, *, progress: ProgressFn | None = None) -> str:
    """Fetch the mirror's refs into ``checkout`` and return the commit ``ref`` names, changing no file.

    ``update`` calls this before it stops a bot, so a mistyped ref or a dirty
    work tree costs nothing.

    Raises
    ------
    InstallError
        When ``checkout`` is not a work tree, the fetch fails, tracked files
        have uncommitted changes, or ``ref`` does not exist.
    """
    _fetch_from_mirror(checkout, mirror, progress)
    _refuse_local_changes(checkout)
    _, commit = _target(checkout, ref)
    if commit is None:
        msg = (
            f"repository '{url}': ref '{ref}' not found. "
            f"Use a branch, tag or commit that exists there (see 'git ls-remote {url}')."
        )
        raise InstallError(msg, step="fetch")
    return commit


def _fetch_from_mirror(checkout: Path, mirror: Path, progress: ProgressFn | None) -> str:
    """Fetch branches (as ``origin/*``) and tags from the mirror; return the checkout's current commit."""
    old = current_commit(checkout)
    if old is None:
        msg = f"checkout '{checkout}': not a git work tree. Remove it and run 'supervisor install NAME' to clone again."
        raise InstallError(msg, step="fetch")
    try:
        _git(
            [
                "fetch",
                "--",
                str(mirror),
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
            cwd=checkout,
            progress=progress,
        )
    except (_GitFailure, OSError) as e:
        msg = f"checkout '{checkout}': could not fetch from the mirror ({_why(e)}). {_HINT_RETRY}"
        raise InstallError(msg, step="fetch", log_tail=_tail(e)) from e
    return old


def _target(checkout: Path, ref: str) -> tuple[bool, str | None]:
    """Return whether ``ref`` is a branch of origin, and the commit it names (``None``: unknown)."""
    gitdir = _git_dir(checkout) or checkout / ".git"
    if ref and _read_ref(gitdir, f"refs/remotes/origin/{ref}") is not None:
        return True, _resolve_commit(checkout, f"refs/remotes/origin/{ref}")
    return False, _resolve_commit(checkout, f"refs/tags/{ref}") or _resolve_commit(checkout, ref or "origin/HEAD")


def _refuse_local_changes(checkout: Path) -> None:
    try:
        out = _git(["status", "--porcelain", "--untracked-files=no"], cwd=checkout)
    except (_GitFailure, OSError) as e:
        msg = f"checkout '{checkout}': could not read its status ({_why(e)}). {_HINT_RETRY}"
        raise InstallError(msg, step="checkout", log_tail=_tail(e)) from e
    changed = [line[3:] for line in out.splitlines() if line.strip()]
    if changed:
        shown = ", ".join(changed[:3]) + (", ..." if len(changed) > 3 else "")
        msg = (
            f"checkout '{checkout}': tracked files have uncommitted changes ({shown}). "
            f"Commit or stash them ('git -C {checkout} stash') and update again."
        )
        raise InstallError(msg, step="checkout")


def checkout_commit(checkout: Path, commit: str) -> None:
    """Put the work tree (and the current branch, if any) back on ``commit``.

    Used to roll back a failed update; changes to tracked files are discarded,
    untracked files are kept.

    Raises
    ------
    InstallError
        When ``commit`` is unknown or git fails.
    """
    try:
        _git(["reset", "-q", "--hard", commit], cwd=checkout)
    except (_GitFailure, OSError) as e:
        msg = f"checkout '{checkout}': could not go back to commit {commit[:12]} ({_why(e)}). {_HINT_RETRY}"
        raise InstallError(msg, step="rollback", log_tail=_tail(e)) from e


# -- cheap HEAD reading (no git process, no GitPython objects) -----------------------


def _git_dir(checkout: Path) -> Path | None:
    """Return the git directory of a work tree, following a ``.git`` file."""
    dotgit = checkout / ".git"
    if dotgit.is_dir():
        return dotgit
    if dotgit.is_file():
        try:
            text = dotgit.read_text().strip()
        except OSError:
            return None
        if text.startswith("gitdir:"):
            target = Path(text.removeprefix("gitdir:").strip())
            return target if target.is_absolute() else checkout / target
    return None


def _common_dir(gitdir: Path) -> Path:
    """Return where shared refs live (differs from ``gitdir`` in linked worktrees)."""
    pointer = gitdir / "commondir"
    if pointer.is_file():
        with contextlib.suppress(OSError):
            target = Path(pointer.read_text().strip())
            return target if target.is_absolute() else gitdir / target
    return gitdir


def _read_ref(gitdir: Path, name: str) -> str | None:
    """Return the raw value of ref ``name``: a hexsha, ``ref: ...``, or ``None``."""
    if ".." in name or name.startswith("/"):
        return None  # never read outside the git directory
    common = _common_dir(gitdir)
    places = [gitdir / name] if name == "HEAD" else [gitdir / name, common / name]
    for place in places:
        if place.is_file():
            try:
                return place.read_text().strip()
            except OSError:
                return None
    packed = common / "packed-refs"
    if name != "HEAD" and packed.is_file():
        try:
            text = packed.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line[:1] in {"#", "^"}:
                continue
            sha, _, refname = line.partition(" ")
            if refname == name:
                return sha
    return None


def _read_head(checkout: Path) -> tuple[str | None, str | None] | None:
    """Return HEAD as ``(branch ref, hexsha)`` (each maybe None), or None to ask git."""
    gitdir = _git_dir(checkout)
    if gitdir is None:
        return (None, None)
    if (_common_dir(gitdir) / "reftable").is_dir():
        return None  # reftable refs are binary; let git read them
    value = _read_ref(gitdir, "HEAD")
    branch = None
    for _ in range(5):  # symbolic refs may chain; git itself stops at 5
        if value is None:
            return (branch, None)
        if value.startswith("ref:"):
            name = value.removeprefix("ref:").strip()
            branch = branch or name
            value = _read_ref(gitdir, name)
            continue
        return (branch, value if _HEX_SHA.fullmatch(value) else None)
    return (branch, None)


def current_commit(checkout: Path) -> str | None:
    """Return the hexsha of HEAD, or ``None`` when ``checkout`` is not a git work tree.

    Reads ``.git/HEAD``, loose refs and ``packed-refs`` directly, so listing many
    instances starts no process; only unusual layouts (reftable) ask git.
    """
    head = _read_head(checkout)
    if head is not None:
        return head[1]
    try:
        return _git(["rev-parse", "--verify", "--quiet", "HEAD"], cwd=checkout) or None
    except _GitFailure:
        return None


def _checked_out_commit(checkout: Path) -> str:
    """Return HEAD's hexsha after a checkout; git leaving none is an install error."""
    commit = current_commit(checkout)
    if commit is None:
        msg = f"checkout '{checkout}': git left no commit checked out. {_HINT_RETRY}"
        raise InstallError(msg, step="checkout")
    return commit


def describe_ref(checkout: Path) -> str | None:
    """Return the current branch name; ``None`` if detached or not a repository."""
    head = _read_head(checkout)
    if head is not None:
        branch = head[0]
        return None if branch is None else branch.removeprefix("refs/heads/")
    try:
        return _git(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd=checkout) or None
    except _GitFailure:
        return None


# -- install steps ---------------------------------------------------------------------


def run_install_steps(
    steps: t.Sequence[str],
    *,
    cwd: Path,
    env: t.Mapping[str, str],
    log_path: Path,
    on_line: LineFn | None = None,
    step_timeout: float | None = None,
) -> None:
    """Run each step with ``bash -c`` in ``cwd``, appending its output to ``log_path``.

    ``env`` is the complete environment of every step. Each step gets a header
    line in the log, and ``on_line`` hears ``"[i/n] step"`` before it starts.

    Raises
    ------
    InstallError
        When a step exits non-zero, times out (its process group is killed) or
        cannot start; ``step`` and ``log_tail`` are filled in.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    total = len(steps)
    for index, step in enumerate(steps, start=1):
        label = f"[{index}/{total}] {step}"
        if on_line is not None:
            on_line(label)
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        with log_path.open("ab") as log:
            log.write(f"==> {label}  ({stamp})\n".encode())
            log.flush()
            started = time.monotonic()
            try:
                process = _proc.spawn(
                    ["bash", "-c", step],
                    cwd=cwd,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            except OSError as e:
                log.write(f"<== could not start: {e}\n".encode())
                msg = (
                    f"install step {index}/{total} '{step}' could not start ({e}). "
                    f"Check that bash is installed and {cwd} is a folder."
                )
                raise InstallError(msg, step=step, log_tail=log_tail(log_path)) from e
            rc = _wait_step(process, step_timeout)
            took = time.monotonic() - started
            status = "timeout" if rc is None else rc
            log.write(f"<== exit {status} after {took:.1f}s\n".encode())
        if rc is None:
            msg = (
                f"install step {index}/{total} '{step}' timed out after "
                f"{step_timeout:g}s and was killed. See the log at {log_path}; "
                "fix the cause or raise the timeout, and run 'supervisor install NAME'."
            )
            raise InstallError(msg, step=step, log_tail=log_tail(log_path))
        if rc != 0:
            msg = (
                f"install step {index}/{total} '{step}' failed with exit code {rc}. "
                f"See the log at {log_path}; "
                "fix the cause and run 'supervisor install NAME'."
            )
            raise InstallError(msg, step=step, log_tail=log_tail(log_path))


def _wait_step(process: subprocess.Popen[bytes], timeout: float | None) -> int | None:
    """Wait for a step; on timeout (``None``) or Ctrl-C kill its process group."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return None
    except BaseException:
        _kill_group(process)
        raise


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the step's process group: SIGTERM, a grace period, then SIGKILL."""
    # spawn() starts a new session, so the step's pid is also its process group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(_KILL_GRACE)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def log_tail(path: Path, lines: int = 20) -> str:
    """Return the last ``lines`` lines of the file at ``path`` ("" if it is missing)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max(65536, 512 * lines)))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# -- bots shipped with the package ------------------------------------------------


def ensure_builtin_origin(folder: Path, origin: Path) -> str:
    """Make ``origin`` a git repository holding the shipped bot ``folder``; return its path.

    Created on first use with one commit on ``main``; when the shipped files
    change (an upgrade of bot-supervisor), a new commit records the new files,
    so ``supervisor update`` picks them up. Serialised with a lock file, since
    many ``supervisor new`` processes may ask at once.
    """
    import git

    origin.parent.mkdir(parents=True, exist_ok=True)
    with locked(origin.with_name(origin.name + ".lock")):
        try:
            if (origin / ".git").is_dir():
                repo = git.Repo(origin)
            else:
                repo = git.Repo.init(origin, initial_branch="main")
                with repo.config_writer() as cfg:
                    cfg.set_value("user", "name", "bot-supervisor")
                    cfg.set_value("user", "email", "bot-supervisor@localhost")
            shipped = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            for source in shipped:
                target = origin / source.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists() or target.read_bytes() != source.read_bytes():
                    shutil.copy2(source, target)
            repo.git.add(A=True)
            if not repo.head.is_valid() or repo.is_dirty(index=True, working_tree=False):
                repo.index.commit(f"bot-supervisor: shipped {folder.name}")
        except (git.GitCommandError, OSError) as e:
            msg = f"built-in origin '{origin}': could not be created ({_reason(e)}). Check that the folder is writable."
            raise InstallError(msg) from e
    return str(origin)


def copy_file_modes(source: Path, checkout: Path) -> None:
    """Give each file of ``checkout`` the permission bits of the same file in ``source``.

    Git records only whether a file is executable, so a shipped mode-600 file
    would otherwise be checked out readable by everyone.
    """
    for path in source.rglob("*"):
        if ".git" in path.parts or path.is_symlink() or not path.is_file():
            continue
        target = checkout / path.relative_to(source)
        if target.is_file() and not target.is_symlink():
            target.chmod(path.stat().st_mode & 0o7777)
