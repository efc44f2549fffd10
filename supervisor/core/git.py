"""Git mirrors and checkouts: the only module that runs git or imports GitPython.

A bare mirror per repository, work trees borrowing its objects (``clone --shared``),
fetch and checkout run plain ``git`` through :mod:`supervisor._proc` (they stream progress
and are killed on a hang). Reading a repository on the update path (which commit a ref
names, whether it is a branch of origin, which tracked files changed) goes through GitPython.
Two readers stay by hand, each for a measured reason (README, "Why some paths skip a
library"): HEAD and refs on ``ls`` (one read per instance; GitPython's import alone costs more
than the whole read of 200), and the origin URL on ``new`` (a config edit instead of a process).
Of ours it imports only ``_proc``, ``errors`` and ``files``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import shutil
import subprocess
import typing as t
import urllib.parse
from pathlib import Path

from supervisor import _proc
from supervisor.errors import InstallError
from supervisor.files import locked

if t.TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    import git as gitpython

logger = logging.getLogger(__name__)

ProgressFn = t.Callable[[str, int | None, int | None], None]
"""``(stage text, current, total)``; ``total`` is ``None`` when git does not know it."""

# Progress parsing and error messages rely on git's English wording; no credential
# prompt may ever block a clone that runs without a terminal.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "LANGUAGE": "C"}
_HEX_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_PROGRESS_LINE = re.compile(r"(?:remote: )?([A-Za-z][A-Za-z ]+):\s+(?:\d+% \((\d+)/(\d+)\)|(\d+))")
_LINE_END = re.compile(rb"[\r\n]")
_TAIL_LINES = 20
_KILL_GRACE = 5.0

# Checkouts borrow objects through alternates: a mirror never drops any.
_MIRROR_CONFIG = {"gc.auto": "0", "gc.pruneExpire": "never", "maintenance.auto": "false"}
# One checkout worker per core (git >= 2.32; older gits ignore the key): writing a work tree
# of 1000 files takes about a third less time on 2 cores than git's default of one worker.
_WRITE_TREE = {"checkout.workers": "0"}
_QUIET_DETACH = {"advice.detachedHead": "false", **_WRITE_TREE}
_BUILTIN_AUTHOR = {"user.name": "bot-supervisor", "user.email": "bot-supervisor@localhost"}
_HINT_RETRY = "Check the ref and the repository, then run the install again."


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
    import hashlib  # only mirror naming needs it (new, update)

    digest = hashlib.sha1(normalised.encode(), usedforsecurity=False).hexdigest()[:12]
    return mirrors_dir / f"{slug}-{digest}.git"


# -- running git -----------------------------------------------------------------------


class _GitFailure(Exception):
    """A git command failed; carries the telling line and the stderr tail."""

    def __init__(self, reason: str, tail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tail = tail


def _env() -> dict[str, str]:
    return {**os.environ, **_GIT_ENV}


def _argv(args: Sequence[str], config: Mapping[str, str] | None) -> list[str]:
    options = [item for key, value in (config or {}).items() for item in ("-c", f"{key}={value}")]
    return ["git", *options, *args]


def _failure(stderr: str, returncode: int | None) -> _GitFailure:
    """Build the failure of a git run from its stderr: the last ``fatal:``/``error:`` line, and the tail."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    reason = (fatal or lines)[-1] if lines else f"git exited with status {returncode}"
    return _GitFailure(reason, "\n".join(lines[-_TAIL_LINES:]))


def _missing_git(error: OSError) -> _GitFailure:
    """Explain why git could not start: not installed, or (also ENOENT) a missing working folder."""
    missing = isinstance(error, FileNotFoundError) and shutil.which("git") is None
    return _GitFailure("the 'git' program is not installed" if missing else str(error), str(error))


def _git(args: Sequence[str], *, cwd: Path | None = None, config: Mapping[str, str] | None = None) -> str:
    """Run ``git [-c k=v] ARGS`` to completion and return its stdout without the final newline.

    Raises :class:`_GitFailure` when git cannot start or exits non-zero.
    """
    try:
        done = _proc.run(_argv(args, config), cwd=cwd, env=_env(), timeout=None)
    except OSError as e:
        raise _missing_git(e) from e
    if done.returncode != 0:
        raise _failure(done.stderr, done.returncode)
    return done.stdout.removesuffix("\n")


class _Run:
    """One git process running in the background, its stderr read as it comes.

    Progress lines go to the ``progress`` callback; the others are kept for the
    failure message. Start several and drive them together with :func:`_wait_all`.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: Path | None = None,
        progress: ProgressFn | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        command = list(args)
        if progress is not None:
            command.insert(1, "--progress")  # git prints progress only to a terminal unless asked
        self.progress = progress
        self.lines: list[str] = []
        self._pending = b""
        self.returncode: int | None = None
        self.start_error: OSError | None = None
        self.on_end: t.Callable[[], object] | None = None
        """Called as soon as this process has ended, while others may still run."""
        self.process: subprocess.Popen[bytes] | None = None
        try:
            self.process = _proc.spawn(
                _argv(command, config), cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as e:
            self.start_error = e

    def feed(self, data: bytes) -> None:
        """Take a chunk of stderr; ``b""`` means the end of it."""
        if data:
            parts = _LINE_END.split(self._pending + data)
            self._pending = parts.pop()  # an unfinished line waits for the next chunk
        else:
            parts, self._pending = [self._pending], b""
        for raw in parts:
            line = raw.decode("utf-8", errors="replace").strip()
            if line:
                self._line(line)

    def _line(self, line: str) -> None:
        match = _PROGRESS_LINE.match(line)
        if match is None:
            self.lines.append(line)
            del self.lines[: -4 * _TAIL_LINES]
            return
        if self.progress is not None:
            name, current, total, absolute = match.groups()
            self.progress(name.strip().lower(), _as_int(current or absolute), _as_int(total))

    def check(self) -> None:
        """Raise :class:`_GitFailure` unless git started and exited with 0."""
        if self.start_error is not None:
            raise _missing_git(self.start_error)
        if self.returncode != 0:
            raise _failure("\n".join(self.lines), self.returncode)

    def end(self) -> None:
        """Reap the process (its stderr is at its end) and tell ``on_end``."""
        if self.process is not None:
            self.returncode = self.process.wait()
            if self.process.stderr is not None:
                self.process.stderr.close()
        if self.on_end is not None:
            self.on_end()

    def kill(self) -> None:
        """Stop git (it runs in its own session, so Ctrl-C never reached it)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(_KILL_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


def _as_int(value: str | None) -> int | None:
    return int(value) if value else None


def _wait_all(runs: Sequence[_Run]) -> None:
    """Read every run's stderr and reap each run as it ends; on any exception kill them all."""
    try:
        with selectors.DefaultSelector() as selector:
            for run in runs:
                if run.process is not None and run.process.stderr is not None:
                    selector.register(run.process.stderr, selectors.EVENT_READ, run)
                else:
                    run.end()  # it never started
            while selector.get_map():
                for key, _ in selector.select():
                    run = key.data
                    data = os.read(key.fd, 65536)
                    run.feed(data)
                    if not data:
                        selector.unregister(key.fileobj)
                        run.end()
    except BaseException:
        for run in runs:
            run.kill()
        raise


def _git_progress(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    progress: ProgressFn | None = None,
    config: Mapping[str, str] | None = None,
) -> None:
    """Run a long git command (clone, fetch, checkout), relaying its progress."""
    run = _Run(args, cwd=cwd, progress=progress, config=config)
    _wait_all([run])
    run.check()


def _why(error: Exception) -> str:
    return error.reason if isinstance(error, _GitFailure) else str(error)


def _tail(error: Exception) -> str:
    return error.tail if isinstance(error, _GitFailure) else str(error)


# -- mirrors ---------------------------------------------------------------------------


def _is_repository(mirror: Path) -> bool:
    return (mirror / "HEAD").is_file() and (mirror / "objects").is_dir()


def _not_a_repository(mirror: Path) -> InstallError:
    msg = (
        f"mirror '{mirror}': the folder is not a git repository. "
        "Remove it (instances cloned from it must be reinstalled) "
        "and try again."
    )
    return InstallError(msg)


def _mirror_lock(mirror: Path) -> Path:
    return mirror.with_name(mirror.name + ".lock")


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
    with locked(_mirror_lock(mirror)):
        if _is_repository(mirror):
            _fetch_mirror(mirror, url, progress)
        elif mirror.exists():
            raise _not_a_repository(mirror)
        else:
            _create_mirror(mirror, url, progress)
    return mirror


def _create_mirror(mirror: Path, url: str, progress: ProgressFn | None) -> None:
    partial = mirror.with_name(f".{mirror.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    logger.debug("creating mirror %s of %s", mirror, url)
    try:
        # clone's own -c options land in the new repository's config.
        options = [item for key, value in _MIRROR_CONFIG.items() for item in ("-c", f"{key}={value}")]
        _git_progress(["clone", "--mirror", *options, "--", _clone_source(url), str(partial)], progress=progress)
        partial.rename(mirror)
    except (_GitFailure, OSError) as e:
        shutil.rmtree(partial, ignore_errors=True)
        msg = f"repository '{url}': could not clone it ({_why(e)}). Check the URL and that it is reachable."
        raise InstallError(msg, step="clone", log_tail=_tail(e)) from e
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _fetch_args() -> list[str]:
    # Never prune: a checkout may still sit on a commit whose branch was deleted.
    return ["fetch", "--no-prune", "origin"]


def _fetch_failed(url: str, error: Exception) -> InstallError:
    msg = f"repository '{url}': could not fetch it ({_why(error)}). Check that it is still reachable."
    return InstallError(msg, step="fetch", log_tail=_tail(error))


def _fetch_mirror(mirror: Path, url: str, progress: ProgressFn | None) -> None:
    logger.debug("fetching mirror %s", mirror)
    try:
        _git_progress(_fetch_args(), cwd=mirror, progress=progress)
    except (_GitFailure, OSError) as e:
        raise _fetch_failed(url, e) from e


# -- checkouts -------------------------------------------------------------------------


def _prepare_dest(dest: Path) -> bool:
    """Check that ``dest`` is missing or an empty folder; return whether we must create it."""
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir() or any(dest.iterdir()):
            msg = f"checkout '{dest}': the folder exists and is not empty. Remove it or choose another folder."
            raise InstallError(msg)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    return True


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
    created = _prepare_dest(dest)
    try:
        commit = _clone_into(mirror, url, dest, ref, progress)
    except BaseException:
        _discard(dest, created=created)
        raise
    logger.debug("cloned %s at %s into %s", url, commit, dest)
    return commit


def _is_named(mirror: Path, ref: str) -> bool:
    """Tell whether ``ref`` is a branch or tag of ``mirror`` (``clone --branch`` takes it)."""
    return bool(ref) and bool(_read_ref(mirror, f"refs/heads/{ref}") or _read_ref(mirror, f"refs/tags/{ref}"))


def _clone_args(mirror: Path, dest: Path, ref: str, *, named: bool) -> list[str]:
    args = ["clone", "--shared"]
    if named:
        args += ["--branch", ref]  # git detaches HEAD itself when ref is a tag
    elif ref:
        args += ["--no-checkout"]
    return [*args, "--", str(mirror), str(dest)]


def _checkout_failed(url: str, dest: Path, ref: str, error: Exception) -> InstallError:
    msg = f"repository '{url}': could not check out '{ref or 'HEAD'}' into '{dest}' ({_why(error)}). {_HINT_RETRY}"
    return InstallError(msg, step="checkout", log_tail=_tail(error))


def _clone_into(mirror: Path, url: str, dest: Path, ref: str, progress: ProgressFn | None) -> str:
    named = _is_named(mirror, ref)
    try:
        _git_progress(_clone_args(mirror, dest, ref, named=named), progress=progress, config=_WRITE_TREE)
        if ref and not named:
            _detach(dest, url, ref, _resolve_commit(dest, ref), progress)
        _set_origin_url(dest, url, cloned_from=mirror)
    except (_GitFailure, OSError) as e:
        raise _checkout_failed(url, dest, ref, e) from e
    return _checked_out_commit(dest)


def checkout_latest(
    mirrors_dir: Path, url: str, dest: Path, ref: str, *, progress: ProgressFn | None = None
) -> tuple[Path, str]:
    """Check out the newest ``ref`` of ``url`` at ``dest``; return ``(mirror, commit)``.

    What :func:`ensure_mirror` then :func:`clone_checkout` do, faster: when the
    mirror already holds ``ref`` as a branch or tag (or ``ref`` is empty), the
    mirror's fetch and the clone from it run at the same time, and only if the
    fetch moved ``ref`` is the checkout brought forward from the mirror. So the
    result is the newest ``ref``, as if the fetch had come first.

    Raises
    ------
    InstallError
        Like :func:`ensure_mirror` and :func:`clone_checkout`; whatever was
        created at ``dest`` is removed first.
    """
    mirror = mirror_path(mirrors_dir, url)
    if not _is_repository(mirror) or (ref and not _is_named(mirror, ref)):
        # A new mirror, or a commit or new branch only the fetch can bring: one after the other.
        mirror = ensure_mirror(mirrors_dir, url, progress=progress)
        return mirror, clone_checkout(mirror, url, dest, ref, progress=progress)
    dest = dest.expanduser().absolute()
    created = _prepare_dest(dest)
    try:
        fetch, clone = _fetch_while_cloning(mirror, dest, ref, progress)
        try:
            fetch.check()
        except _GitFailure as e:
            raise _fetch_failed(url, e) from e
        try:
            clone.check()
            _set_origin_url(dest, url, cloned_from=mirror)
        except (_GitFailure, OSError) as e:
            raise _checkout_failed(url, dest, ref, e) from e
        branch = describe_ref(dest)
        if _moved_by_fetch(mirror, dest, branch, ref):
            logger.debug("the fetch moved %s: bringing %s forward", ref or branch, dest)
            fetch_and_checkout(dest, mirror, url, branch or ref, progress=progress)
        commit = _checked_out_commit(dest)
    except BaseException:
        _discard(dest, created=created)
        raise
    logger.debug("cloned %s at %s into %s", url, commit, dest)
    return mirror, commit


def _fetch_while_cloning(mirror: Path, dest: Path, ref: str, progress: ProgressFn | None) -> tuple[_Run, _Run]:
    """Run the mirror's fetch and the clone from it at the same time; return both, ended.

    The mirror's lock is held only until the fetch ends, so concurrent ``new``s of
    one repository still write their work trees at the same time.
    """
    with contextlib.ExitStack() as held:
        held.enter_context(locked(_mirror_lock(mirror)))
        if not _is_repository(mirror):
            raise _not_a_repository(mirror)
        fetch = _Run(_fetch_args(), cwd=mirror, progress=progress)
        fetch.on_end = held.close
        clone = _Run(_clone_args(mirror, dest, ref, named=bool(ref)), progress=progress, config=_WRITE_TREE)
        _wait_all([fetch, clone])
    return fetch, clone


def _moved_by_fetch(mirror: Path, dest: Path, branch: str | None, ref: str) -> bool:
    """Tell whether the mirror's ``ref`` now differs from what the clone saw (refs read from files)."""
    gitdir = _git_dir(dest) or dest / ".git"
    if branch is not None:
        return _read_ref(mirror, f"refs/heads/{branch}") != _read_ref(gitdir, f"refs/remotes/origin/{branch}")
    return _read_ref(mirror, f"refs/tags/{ref}") != _read_ref(gitdir, f"refs/tags/{ref}")


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


def _ref_not_found(url: str, ref: str, step: str) -> InstallError:
    msg = (
        f"repository '{url}': ref '{ref}' not found. "
        f"Use a branch, tag or commit that exists there (see 'git ls-remote {url}')."
    )
    return InstallError(msg, step=step)


def _detach(checkout: Path, url: str, ref: str, commit: str | None, progress: ProgressFn | None) -> None:
    """Check out ``commit`` (what ``ref`` resolved to) detached, or say that ``ref`` does not exist."""
    if commit is None:
        raise _ref_not_found(url, ref, "checkout")
    _git_progress(["checkout", "-q", "--detach", commit], cwd=checkout, progress=progress, config=_QUIET_DETACH)


def _set_origin_url(checkout: Path, url: str, *, cloned_from: Path | None = None) -> None:
    """Point ``origin`` at the real repository so ``git pull`` there works.

    Right after ``git clone --shared`` (``cloned_from``: the mirror), the one
    ``url = <mirror>`` line is rewritten in place when neither value needs
    quoting in git's config syntax, which saves starting ``git config``.
    """
    value = _clone_source(url)
    if cloned_from is not None and _is_plain(value) and _is_plain(str(cloned_from)):
        config = (_git_dir(checkout) or checkout / ".git") / "config"
        text = config.read_text()
        line = f"\turl = {cloned_from}\n"
        if text.count(line) == 1 and text.count("\turl = ") == 1:
            config.write_text(text.replace(line, f"\turl = {value}\n"))
            return
    _git(["config", "remote.origin.url", value], cwd=checkout)


def _is_plain(value: str) -> bool:
    """Tell whether git writes ``value`` into a config file as it is (no quotes, no escapes)."""
    return value == value.strip() and not any(char in value for char in '"\\;#\n\t\b')


@contextlib.contextmanager
def _repository(checkout: Path) -> Iterator[gitpython.Repo]:
    """Open ``checkout`` with GitPython, closing its helper processes after; failures become :class:`_GitFailure`."""
    import git as gitpython

    try:
        repo = gitpython.Repo(checkout)
    except (gitpython.InvalidGitRepositoryError, gitpython.NoSuchPathError) as e:
        msg = f"not a git repository: {checkout}"
        raise _GitFailure(msg, "") from e
    try:
        yield repo
    except gitpython.GitCommandError as e:
        stderr = e.stderr.removeprefix("\n  stderr: '").removesuffix("'")
        raise _failure(stderr, e.status if isinstance(e.status, int) else None) from e
    finally:
        repo.close()


def _resolve_commit(checkout: Path, ref: str) -> str | None:
    """Return the commit ``ref`` names in ``checkout``, or ``None``."""
    if not ref or ref.startswith("-"):
        return None
    import git as gitpython

    try:
        with _repository(checkout) as repo:
            return repo.rev_parse(f"{ref}^{{commit}}").hexsha
    except (_GitFailure, gitpython.BadName, gitpython.BadObject, ValueError, IndexError, TypeError):
        return None


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
            _git_progress(
                ["checkout", "-q", "-B", ref, "--track", f"origin/{ref}"],
                cwd=checkout,
                progress=progress,
                config=_WRITE_TREE,
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
        raise _ref_not_found(url, ref, "fetch")
    return commit


def _fetch_from_mirror(checkout: Path, mirror: Path, progress: ProgressFn | None) -> str:
    """Fetch branches (as ``origin/*``) and tags from the mirror; return the checkout's current commit."""
    old = current_commit(checkout)
    if old is None:
        msg = f"checkout '{checkout}': not a git work tree. Remove it and run 'supervisor install NAME' to clone again."
        raise InstallError(msg, step="fetch")
    try:
        _git_progress(
            ["fetch", "--", str(mirror), "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"],
            cwd=checkout,
            progress=progress,
        )
    except (_GitFailure, OSError) as e:
        msg = f"checkout '{checkout}': could not fetch from the mirror ({_why(e)}). {_HINT_RETRY}"
        raise InstallError(msg, step="fetch", log_tail=_tail(e)) from e
    return old


def _target(checkout: Path, ref: str) -> tuple[bool, str | None]:
    """Return whether ``ref`` is a branch of origin, and the commit it names (``None``: unknown)."""
    if ref and _is_origin_branch(checkout, ref):
        return True, _resolve_commit(checkout, f"refs/remotes/origin/{ref}")
    return False, _resolve_commit(checkout, f"refs/tags/{ref}") or _resolve_commit(checkout, ref or "origin/HEAD")


def _is_origin_branch(checkout: Path, ref: str) -> bool:
    """Tell whether ``refs/remotes/origin/<ref>`` exists in ``checkout`` (loose or packed)."""
    import git as gitpython

    try:
        with _repository(checkout) as repo:
            return gitpython.RemoteReference(repo, f"refs/remotes/origin/{ref}").is_valid()
    except (_GitFailure, ValueError):
        return False


def _changed_tracked_files(checkout: Path) -> list[str]:
    """Return the tracked files whose index or work-tree content differs from HEAD (untracked ones aside)."""
    with _repository(checkout) as repo:
        head = repo.head.commit
        staged, unstaged = head.diff(), head.diff(None)
        return sorted({diff.b_path or diff.a_path or "?" for diff in (*staged, *unstaged)})


def _refuse_local_changes(checkout: Path) -> None:
    try:
        changed = _changed_tracked_files(checkout)
    except (_GitFailure, OSError, ValueError) as e:
        msg = f"checkout '{checkout}': could not read its status ({_why(e)}). {_HINT_RETRY}"
        raise InstallError(msg, step="checkout", log_tail=_tail(e)) from e
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


# -- cheap HEAD reading (no git process) ---------------------------------------------


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
    except (_GitFailure, OSError):
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
    except (_GitFailure, OSError):
        return None


# -- bots shipped with the package ------------------------------------------------


def ensure_builtin_origin(folder: Path, origin: Path) -> str:
    """Make ``origin`` a git repository holding the shipped bot ``folder``; return its path.

    Created on first use with one commit on ``main``; when the shipped files
    change (an upgrade of bot-supervisor), a new commit records the new files,
    so ``supervisor update`` picks them up. Serialised with a lock file, since
    many ``supervisor new`` processes may ask at once.
    """
    origin.parent.mkdir(parents=True, exist_ok=True)
    with locked(origin.with_name(origin.name + ".lock")):
        try:
            if not (origin / ".git").is_dir():
                _git(["init", "-q", "--initial-branch=main", str(origin)])
            shipped = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            for source in shipped:
                target = origin / source.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists() or target.read_bytes() != source.read_bytes():
                    shutil.copy2(source, target)
            _git(["add", "-A"], cwd=origin)
            if current_commit(origin) is None or _has_staged_changes(origin):
                _git(
                    ["commit", "-q", "-m", f"bot-supervisor: shipped {folder.name}"], cwd=origin, config=_BUILTIN_AUTHOR
                )
        except (_GitFailure, OSError) as e:
            msg = f"built-in origin '{origin}': could not be created ({_why(e)}). Check that the folder is writable."
            raise InstallError(msg) from e
    return str(origin)


def _has_staged_changes(repo: Path) -> bool:
    """Tell whether the index differs from HEAD (``diff --quiet`` exits 1 for "differs")."""
    done = _proc.run(["git", "diff", "--cached", "--quiet"], cwd=repo, env=_env(), timeout=None)
    if done.returncode not in {0, 1}:
        raise _failure(done.stderr, done.returncode)
    return done.returncode == 1


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
