"""Start and stop bots: the run script, launches (batched per backend), the readiness wait, stop escalation.

Stop escalation: the recipe's console quit lines (or its stop signal/command for headless
bots), then SIGTERM to the tree, then SIGKILL. psutil loads only when a process is waited on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import shlex
import signal
import time
import typing as t
from pathlib import Path

from supervisor.core import readiness, secrets
from supervisor.core import status as live
from supervisor.core.parts import session_name
from supervisor.core.recipe import STRATEGY_VARS, Recipe, render
from supervisor.core.registry import DESIRED_RUNNING, DESIRED_STOPPED, INSTALLED, Instance
from supervisor.core.sessions import SessionSpec
from supervisor.errors import (
    BackendUnavailable,
    InstanceError,
    InstanceNotFound,
    ReadyTimeout,
    RegistryWriteError,
    SecretMissing,
    SessionError,
    SupervisorError,
)
from supervisor.files import atomic_write
from supervisor.logfiles import clean_console, private_file, read_chunk, rotate_log
from supervisor.paths import ensure_dir
from supervisor.states import State

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from supervisor.core.metrics import ProcessSample
    from supervisor.core.parts import Parts
    from supervisor.core.sessions import SessionBackend

logger = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 30.0
ALIVE_TIMEOUT = 10.0
"""How long a launch may take to show its bot's process (and a bot without a ready pattern to be up)."""

_GRACEFUL_STEPS = ("console", "stop-command", "stop-signal")
_STRATEGY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# ``exec CMD``, but not ``exec >log`` / ``exec 2>&1`` (redirections only) nor ``exec -a NAME`` (options).
_LEADING_EXEC_RE = re.compile(r"\s*exec\s+(?![-<>&]|\d+[<>])")


@dataclasses.dataclass(frozen=True)
class ActionResult:
    """What one start, stop or restart did."""

    name: str
    action: str
    changed: bool
    message: str
    step: str | None = None
    status: live.InstanceStatus | None = None
    ok: bool = True
    warning: str | None = None
    """Something the user should know although the action succeeded (e.g. it could not be recorded)."""

    def to_dict(self) -> dict[str, t.Any]:
        """Return the result as a JSON-able dict."""
        data = dataclasses.asdict(self)
        data["status"] = self.status.to_dict() if self.status else None
        return data


@dataclasses.dataclass(frozen=True)
class Launch:
    """A session just started (or one already starting), waited on until its bot is up."""

    name: str
    backend: str
    session: str
    log: Path
    offset: int
    pattern: re.Pattern[str] | None
    deadline: float
    timeout: float
    login: re.Pattern[str] | None = None
    joined: bool = False
    """The bot was already starting (launched earlier); this start only waits for it."""


# -- the run script ------------------------------------------------------------------------------


def check_strategy(values: t.Mapping[str, t.Any]) -> dict[str, str]:
    """Return the ``script``/``conf`` of a start request that are set, checked to be plain file names.

    They reach a shell command line (quoted) and the bot's config folder, so
    only a file name is accepted: no path, no leading dash or dot.

    Raises
    ------
    InstanceError
        When a value is not a string or not a plain file name.
    """
    found: dict[str, str] = {}
    for key in STRATEGY_VARS:
        value = values.get(key)
        if value not in (None, ""):
            found[key] = check_file_name(key, value)
    return found


def check_file_name(what: str, value: object) -> str:
    """Return ``value`` if it is a plain file name (one console argument, no path), else raise.

    Raises
    ------
    InstanceError
        When ``value`` is not a string or not a plain file name (a space would make it two arguments).
    """
    if not isinstance(value, str) or not _STRATEGY_NAME_RE.fullmatch(value):
        msg = (
            f"{what} {str(value)[:80]!r}: must be a file name (letters, digits, '.', '_', '-'; "
            "at most 128, not starting with '.' or '-'). Give the name of a file in the bot's folder."
        )
        raise InstanceError(msg)
    return value


def strip_exec(command: str) -> str:
    """Drop a leading ``exec`` so the bot runs as the wrapper's child and its exit code is recorded."""
    match = _LEADING_EXEC_RE.match(command)
    return command[match.end() :] if match else command


def _strategy_args(instance: Instance, recipe: Recipe) -> str:
    """Return the recipe's ``run.strategy_args`` for the recorded strategy, shell-quoted ("" without one)."""
    if not recipe.run.strategy_args or not instance.strategy:
        return ""
    values = {k: shlex.quote(v) for k, v in instance.strategy.items() if k in STRATEGY_VARS and v}
    if not values:
        return ""
    return render(recipe.run.strategy_args, values, optional_groups=True).strip()


WRAPPER_LOG = "wrapper.log"
"""The run wrapper's own messages (bash's job reports), per instance, rewritten at every start."""
# Words that make a line more than one simple command (or a compound one).
_CONTROL_TOKENS = frozenset({";", "&", "&&", "|", "||", "|&", ";;", "(", ")", "\n"})
_RESERVED_WORDS = frozenset(
    {"!", "{", "}", "[[", "case", "coproc", "for", "function", "if", "select", "time", "until", "while"}
)


def _is_simple_command(command: str) -> bool:
    """Tell whether ``command`` is one simple command (words, assignments, redirections), as far as shlex can tell."""
    if "\n" in command:
        return False
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return False
    return bool(tokens) and tokens[0] not in _RESERVED_WORDS and not _CONTROL_TOKENS.intersection(tokens)


def _bot_subshell(command: str, pid_file: Path) -> str:
    """Return the wrapper's line that runs ``command`` in a subshell which first records its own pid.

    The subshell's stderr is the terminal (fd 3) while the wrapper's own stays in
    its file, so bash's report of a killed bot goes to the file. A simple command
    is ``exec``'d (after its leading assignments): the recorded pid is the bot's.
    A compound one (or one led by a builtin such as ``command``) runs in the
    subshell, whose oldest child is then the bot (the
    record says ``group``; an ``exec`` inside makes the subshell the bot); bash may
    report a kill inside it on the terminal.
    """
    body = _exec_form(command) if _is_simple_command(command) else None
    if body is not None:
        kind = "exec"
    else:
        kind, body = "group", f"{{ {command}\n}}"
    path = shlex.quote(str(pid_file))
    # Not written (a full disk): no record at all, and status falls back to the wrapper's oldest child.
    record = f"{{ printf '%s {kind}\\n' \"$BASHPID\" > {path} || rm -f -- {path}; }}"
    return f"( exec 2>&3 3>&-; {record}; {body} )"


# A leading ``NAME=value`` word (quoted parts allowed): ``exec`` goes after these.
_ASSIGNMENT_RE = re.compile(r"""\s*[A-Za-z_][A-Za-z0-9_]*=(?:[^\s'"\\]|\\.|'[^']*'|"(?:[^"\\]|\\.)*")*(?=\s|$)""")


# Builtins that are no program (or run one themselves): ``exec`` cannot run them, so they run as a group.
_SHELL_ONLY = frozenset(
    {".", "builtin", "cd", "command", "eval", "export", "read", "set", "source", "trap", "ulimit", "umask", "wait"}
)


def _exec_form(command: str) -> str | None:
    """Return the simple ``command`` with ``exec`` after its leading assignments (``A=1 exec bot ...``).

    ``None`` when its first word is a shell builtin that ``exec`` cannot run.
    """
    end = 0
    while match := _ASSIGNMENT_RE.match(command, end):
        end = match.end()
    rest = command[end:].lstrip()
    if not rest or rest.split(maxsplit=1)[0] in _SHELL_ONLY:
        return None
    return f"{command[:end]} exec {rest}".lstrip()


def write_run_script(parts: Parts, instance: Instance, recipe: Recipe) -> Path:
    """Write the instance's ``run.sh``: environment, secrets, prelude, the command, then its exit record."""
    values = parts.values(instance, recipe)
    command = strip_exec(render(recipe.run.command, values))
    extra = _strategy_args(instance, recipe)
    if extra:
        command = f"{command} {extra}"
    exit_file = parts.paths.exit_file(instance.name)
    pid_file = live.bot_pid_file(parts.paths, instance.name)
    wrapper_log = parts.paths.instance_dir(instance.name) / WRAPPER_LOG
    lines = [
        "#!/usr/bin/env bash",
        f"# Written by bot-supervisor for instance {instance.name!r} at every start; edits are lost.",
        # bash's own reports ("run.sh: line 5: PID Killed CMD") go to a file, not the console: fd 3 is
        # the terminal, which the bot's stderr, the prelude and our notices use.
        f"exec 3>&2 2>{shlex.quote(str(wrapper_log))}",
        # An empty bot record: no bot yet, so none of the wrapper's helpers below passes for it.
        f": > {shlex.quote(str(pid_file))}",
        f"cd -- {shlex.quote(instance.checkout)} 2>&3 || exit 97",
        f"export SUPERVISOR_INSTANCE={shlex.quote(instance.name)}",
    ]
    env = {k: render(v, values) for k, v in recipe.run.env.items()}
    env.update(instance.env)
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    for var, key in recipe.run.secrets.items():
        # Read by bash itself ($(< file) forks no program): the value is never on an argv.
        path = shlex.quote(str(parts.paths.secret_file(instance.name, key)))
        missing = shlex.quote(
            f"bot-supervisor: secret '{key}' ({var}) is not set. Run: supervisor secret set {instance.name} {key}"
        )
        lines.append(f'if [ -r {path} ]; then export {var}="$(< {path})"; else echo {missing} >&3; rc=96; fi')
    if recipe.run.prelude:
        prelude = render(recipe.run.prelude, values)
        failed = "{ echo 'bot-supervisor: prelude failed' >&3; rc=98; }"
        lines.append(f'if [ -z "${{rc:-}}" ]; then {{ {prelude}; }} 2>&3 || {failed}; fi')
    lines += [
        # Only while the subshell runs does the record name a pid: after it, the wrapper's own
        # helpers (mv) are its children, and none of them is the bot.
        f'if [ -z "${{rc:-}}" ]; then {_bot_subshell(command, pid_file)}; rc=$?; : > {shlex.quote(str(pid_file))}; fi',
        (
            # printf's %(...)T is bash's own clock: no fork of date(1).
            f"printf '%s %(%s)T\\n' \"$rc\" -1 > {shlex.quote(str(exit_file))}.tmp"
            f" && mv -f -- {shlex.quote(str(exit_file))}.tmp {shlex.quote(str(exit_file))}"
        ),
        'exit "$rc"',
    ]
    script = parts.paths.run_script(instance.name)
    text = "\n".join(lines) + "\n"
    with contextlib.suppress(OSError):
        if script.read_text() == text:
            return script  # unchanged since the last start: no write
    ensure_dir(script.parent)
    atomic_write(script, text, mode=0o755, sync=False)
    return script


# -- start ---------------------------------------------------------------------------------------


def start_many(
    parts: Parts,
    names: Sequence[str],
    *,
    wait: bool = True,
    count_restart: bool = False,
    only_if_wanted: bool = False,
    strategy: dict[str, str] | None = None,
) -> list[ActionResult]:
    """Start ``names``: launch every session first (a few backend calls), then wait for all at once.

    ``wait`` waits for each bot's ready line; without it, for its process.
    ``strategy`` None keeps each record's strategy, a dict (maybe empty) replaces it.
    With several names a bot that fails to come up is reported in its result
    (``ok`` false); with one name, it raises.
    """
    names = list(dict.fromkeys(names))
    done: dict[str, ActionResult] = {}
    already_running: set[str] = set()
    launched: list[Launch] = []
    with contextlib.ExitStack() as locks:
        for name in sorted(names):  # a fixed order: two batch starts never deadlock
            locks.enter_context(parts.instance_lock(name, wait=60))
        records = parts.registry.all()
        for name in names:
            if name not in records:
                raise InstanceNotFound(name)
        # A bot launched without its record would run unsupervised, meant to be stopped: write first.
        parts.registry.check_writable()
        look = live.take(parts, names, records=records)
        to_launch: list[Instance] = []
        for name in names:
            record = records[name]
            current = look.status(name)
            if only_if_wanted and (record.desired != DESIRED_RUNNING or record.fatal):
                # Checked under the lock: a user's stop that raced the agent always wins.
                message = f"instance '{name}' is no longer meant to run; left alone."
                done[name] = ActionResult(name, "start", False, message)
                continue
            if record.lifecycle != INSTALLED:
                msg = (
                    f"instance '{name}' cannot start: it is {record.lifecycle}. "
                    f"Run 'supervisor install {name}' first (see {parts.paths.install_log(name)})."
                )
                raise InstanceError(msg)
            if current.is_running:
                already_running.add(name)
                joined = _join_start(parts, record, current) if wait else None
                if joined is not None:
                    launched.append(joined)
                    continue
                message = f"instance '{name}' is already {current.state} (pid {current.pid})."
                done[name] = ActionResult(name, "start", False, message)
                continue
            missing = secrets.missing(parts.paths, name, parts.recipe_for(record))
            if missing:
                raise SecretMissing(name, missing)
            if strategy is not None:
                record = dataclasses.replace(record, strategy=strategy or None)
            to_launch.append(record)
        fresh = launch(parts, to_launch, look.sessions)
        launched += fresh
        now = time.time()
        try:
            with parts.registry.transaction() as instances:
                for name in already_running:
                    instances[name].desired = DESIRED_RUNNING
                for item in fresh:
                    record = instances[item.name]
                    record.session = item.session
                    record.desired = DESIRED_RUNNING
                    record.started_at = now
                    record.fatal = False
                    record.last_error = None
                    record.restarts += 1 if count_restart else 0
                    if strategy is not None:
                        record.strategy = strategy or None
        except SupervisorError:
            # The record could not be kept after all (the disk filled meanwhile): undo the launches.
            for item in fresh:
                with contextlib.suppress(SupervisorError):
                    parts.backend(item.backend).kill_session(item.session)
            raise
    parts.forget_sessions()
    failures, logins = wait_up(parts, launched, ready=wait)
    if failures:
        with parts.registry.transaction() as instances:
            for name, error in failures.items():
                instances[name].last_error = str(error).splitlines()[0]
        if len(names) == 1:
            raise failures[names[0]]
    after = live.take(parts, names)
    results = []
    for name in names:
        status = after.status(name)
        if name in done:
            results.append(dataclasses.replace(done[name], status=status))
        elif name in failures:
            results.append(ActionResult(name, "start", True, str(failures[name]), status=status, ok=False))
        else:
            item = next(item for item in launched if item.name == name)
            message = f"started '{name}' in {item.backend} session '{item.session}'."
            if item.joined:
                message = f"instance '{name}' was already starting; it is up now."
            if name in logins:
                message += f" It waits at its login dialog: log in with 'supervisor attach {name}'."
            results.append(ActionResult(name, "start", not item.joined, message, status=status))
    return results


def _join_start(parts: Parts, record: Instance, status: live.InstanceStatus) -> Launch | None:
    """Return a wait for a bot that is still ``starting`` (launched earlier), or ``None``."""
    if status.state != State.STARTING:
        return None
    run = parts.recipe_for(record).run
    seen = readiness.load(parts.paths.readiness_file(record.name))
    if not run.ready or seen is None:
        return None
    return Launch(
        record.name,
        record.backend,
        record.session,
        parts.paths.console_log(record.name),
        seen.offset,
        re.compile(run.ready),
        time.monotonic() + run.ready_timeout,
        run.ready_timeout,
        login=re.compile(run.login) if run.login else None,
        joined=True,
    )


def launch(parts: Parts, records: Sequence[Instance], listing: live.Listing) -> list[Launch]:
    """Start the sessions of ``records`` (the caller holds their locks and records the starts).

    Each backend gets all its sessions in as few calls as it can (tmux: one
    command line per chunk). ``listing`` was taken under the locks: a leftover
    session of ours (a wrapper whose bot is gone) is ended first.

    Raises
    ------
    BackendUnavailable, SessionError
        At the first session that cannot start; those before it run.
    """
    prepared: dict[str, list[tuple[Launch, SessionSpec]]] = {}
    for record in records:
        recipe = parts.recipe_for(record)
        backend = parts.backend(record.backend)
        if not backend.is_available():
            raise BackendUnavailable(record.backend)
        session = session_name(record.name)
        if session in listing.get(record.backend, {}):
            backend.kill_session(session)
        script = write_run_script(parts, record, recipe)
        parts.paths.exit_file(record.name).unlink(missing_ok=True)
        _clear_bot_record(parts, record.name)
        log = parts.paths.console_log(record.name)
        rotate_log(log)
        private_file(log)  # the session appends to it: owner-only from the first line
        offset = log.stat().st_size if log.exists() else 0
        readiness.reset(parts.paths.readiness_file(record.name), offset)
        pattern = re.compile(recipe.run.ready) if recipe.run.ready else None
        timeout = recipe.run.ready_timeout if pattern else ALIVE_TIMEOUT
        login = re.compile(recipe.run.login) if recipe.run.login else None
        item = Launch(
            record.name, record.backend, session, log, offset, pattern, time.monotonic() + timeout, timeout, login
        )
        spec = SessionSpec(session, ("bash", str(script)), Path(record.checkout), log)
        prepared.setdefault(record.backend, []).append((item, spec))
    started: list[Launch] = []
    for backend_name, items in prepared.items():
        parts.backend(backend_name).new_sessions([spec for _, spec in items])
        now = time.monotonic()
        # The deadline counts from the launch, not from the preparation of the whole batch.
        started += [dataclasses.replace(item, deadline=now + item.timeout) for item, _ in items]
    return started


def _clear_bot_record(parts: Parts, name: str) -> None:
    """Leave an empty bot record (no bot yet) for a launch: the last run's pid is never read as its bot.

    Written before the session exists, so no look ever finds the record missing (which means a
    wrapper from before records, whose oldest child is taken) while this wrapper forks helpers.
    """
    path = live.bot_pid_file(parts.paths, name)
    try:
        atomic_write(path, "", sync=False)
    except (OSError, SupervisorError):
        path.unlink(missing_ok=True)  # a full disk: the wrapper empties it itself, first thing


def wait_up(
    parts: Parts, launched: Sequence[Launch], *, ready: bool = True
) -> tuple[dict[str, SupervisorError], set[str]]:
    """Wait until every launched bot is up; return the bots that died or timed out, and those at their login.

    With ``ready`` a bot is up once it printed its readiness pattern (without
    one, once it has a process); otherwise once its process is alive. One
    session query per backend every quarter second and a few file reads per
    round; no process-table scans.
    """
    from supervisor.core import metrics

    waiting = {item.name: item for item in launched}
    texts = {item.name: "" for item in launched}
    positions = {item.name: item.offset for item in launched}
    failures: dict[str, SupervisorError] = {}
    logins: set[str] = set()
    sessions: live.Listing = {}
    listed_at = 0.0
    while waiting:
        # Ready lines come from the logs; the session listing (to notice deaths) can lag a little.
        if time.monotonic() - listed_at > 0.25 or not sessions:
            parts.forget_sessions()
            sessions = parts.sessions({item.backend for item in waiting.values()})
            listed_at = time.monotonic()
        for name, item in list(waiting.items()):
            info = sessions.get(item.backend, {}).get(item.session)
            pattern = item.pattern if ready else None
            if pattern is not None:
                chunk, positions[name] = read_chunk(item.log, positions[name])
                texts[name] = (texts[name] + chunk)[-65536:]
                up = pattern.search(texts[name]) is not None
            else:
                bot = live.read_bot_record(parts.paths, name)
                up = info is not None and metrics.recorded_bot(info.pid, bot) is not None
            if up:
                if pattern is not None:
                    readiness.mark_ready(parts.paths.readiness_file(name))
                del waiting[name]
            elif pattern is not None and item.login is not None and item.login.search(texts[name]):
                # A person has to log in: waiting for that is not start's job.
                logins.add(name)
                del waiting[name]
            elif info is None:
                if pattern is None:
                    chunk, positions[name] = read_chunk(item.log, positions[name])
                    texts[name] = (texts[name] + chunk)[-65536:]
                exit_record = live.read_exit_record(parts.paths, name)
                code = f" with exit code {exit_record.code}" if exit_record else ""
                tail = "\n".join(clean_console(texts[name]).splitlines()[-15:])
                msg = f"instance '{name}': the bot exited during start{code}. Last output:\n{tail}"
                failures[name] = InstanceError(msg)
                del waiting[name]
            elif time.monotonic() > item.deadline:
                what = f"print /{pattern.pattern}/" if pattern else "start a process"
                msg = (
                    f"instance '{name}' did not {what} within {item.timeout:g}s. "
                    f"It is left running; check 'supervisor tail {name}'."
                )
                failures[name] = ReadyTimeout(msg)
                del waiting[name]
        if waiting:
            time.sleep(0.02)
    return failures, logins


# -- stop ----------------------------------------------------------------------------------------


def stop_one(parts: Parts, name: str, *, timeout: float | None = None, desired: str = DESIRED_STOPPED) -> ActionResult:
    """Stop one instance gracefully, recording the user's intent first (``desired``)."""
    with parts.instance_lock(name, wait=60):
        parts.forget_sessions()
        # The intent is recorded first when it can be; stopping never depends on it (a full disk).
        unrecorded = _record_stop(parts, name, desired)
        record = parts.registry.get(name)
        backend = parts.backend(record.backend)
        info = parts.sessions([record.backend])[record.backend].get(record.session)
        sampler = parts.sampler
        pid = info.pid if info else None
        bot = None if record.adopted else live.read_bot_record(parts.paths, name)
        sample = sampler.sample(pid, sampler.table(roots=[pid] if pid else []), match=parts.match(record), bot=bot)
        if info is None or not sample.alive:
            if info is not None and not record.adopted:
                backend.kill_session(record.session)
            if unrecorded is not None:
                unrecorded = _record_stop(parts, name, desired)
            return ActionResult(
                name,
                "stop",
                False,
                f"instance '{name}' is not running.",
                step="already-stopped",
                warning=unrecorded,
            )
        recipe = parts.recipe_for(record)
        step = _quit(parts, record, recipe, backend, sample, timeout)
        if step in _GRACEFUL_STEPS and sample.root_pid and sample.root_pid != sample.pid:
            from supervisor.core import metrics

            # The bot left on its own: let the wrapper record its exit code before the session goes.
            metrics.wait_gone([sample.root_pid], 3.0)
        if not record.adopted:
            with contextlib.suppress(SessionError):
                backend.kill_session(record.session)
        parts.forget_sessions()
        if unrecorded is not None:
            unrecorded = _record_stop(parts, name, desired)
    status = live.take(parts, [name]).status(name)
    how = {
        "console": "by its console quit sequence",
        "stop-command": "by its stop command",
        "stop-signal": f"by its stop signal ({recipe.run.stop.signal if recipe.run.stop else '?'})",
        "sigterm": "with SIGTERM",
        "sigkill": "with SIGKILL",
    }
    message = f"stopped '{name}' {how.get(step, step)}."
    return ActionResult(name, "stop", True, message, step=step, status=status, warning=unrecorded)


def _record_stop(parts: Parts, name: str, desired: str) -> str | None:
    """Record a stop; return a warning instead of raising when the registry cannot be written."""
    try:
        parts.registry.update(name, desired=desired, stopped_at=time.time())
    except RegistryWriteError as e:
        return (
            f"the stop of '{name}' could not be recorded ({e}) "
            f"Until it is, the agent may start it again: free space, then run 'supervisor stop {name}' again."
        )
    return None


def _quit(
    parts: Parts,
    record: Instance,
    recipe: Recipe,
    backend: SessionBackend,
    sample: ProcessSample,
    timeout: float | None,
) -> str:
    """Run the escalation: quit lines or stop signal/command, then SIGTERM, then SIGKILL; return the last step."""
    from supervisor.core import metrics

    assert sample.pid is not None
    watched = [sample.pid]
    if recipe.run.stop is not None:
        # Headless: nobody reads the console, so typed quit lines would only wait out the timeout.
        step = _graceful_stop(parts, record, recipe, sample.pid, recipe.run.stop.grace if timeout is None else timeout)
        if step is not None:
            return step
    elif recipe.console.quit:
        deadline = time.monotonic() + (DEFAULT_STOP_TIMEOUT if timeout is None else timeout)
        try:
            for i, line in enumerate(recipe.console.quit):
                backend.send_line(record.session, line)
                if i < len(recipe.console.quit) - 1:
                    time.sleep(recipe.console.quit_delay)
                    if not metrics.is_alive(sample.pid):
                        break
        except SessionError as e:
            logger.warning("typing the quit sequence into %s failed: %s", record.session, e)
        if not metrics.wait_gone(watched, max(0.0, deadline - time.monotonic())):
            return "console"
    # An adopted session's root is the user's own shell: signal only the bot's tree there.
    target = sample.pid if record.adopted else (sample.root_pid or sample.pid)
    return metrics.terminate_tree(target, timeout=5.0)


def _graceful_stop(parts: Parts, record: Instance, recipe: Recipe, pid: int, grace: float) -> str | None:
    """Send the recipe's stop signal to the bot's process, or run its stop command; wait ``grace`` seconds.

    Returns the step that ended the bot, or ``None`` when it is still alive.
    """
    from supervisor.core import metrics

    spec = recipe.run.stop
    assert spec is not None
    deadline = time.monotonic() + grace
    if spec.signal is not None:
        # The bot itself (the wrapper's child), not the wrapper shell: that is who winds down.
        metrics.signal_process(pid, getattr(signal, spec.signal))
        step = "stop-signal"
    else:
        assert spec.command is not None
        _run_stop_command(parts, record, recipe, spec.command, grace)
        step = "stop-command"
    if metrics.wait_gone([pid], max(0.0, deadline - time.monotonic())):
        return None
    return step


def _run_stop_command(parts: Parts, record: Instance, recipe: Recipe, command: str, timeout: float) -> None:
    """Run ``run.stop.command`` in the checkout with the run environment; its output goes to the console log."""
    from supervisor import _proc

    values = parts.values(record, recipe)
    line = render(command, values)
    if recipe.run.prelude:
        line = f"{render(recipe.run.prelude, values)} && {line}"
    log = parts.paths.console_log(record.name)
    try:
        with log.open("ab") as handle:
            handle.write(f"==> bot-supervisor: stop command: {render(command, values)}\n".encode())
            handle.flush()
            done = _proc.run(
                ["bash", "-c", line],
                cwd=Path(record.checkout),
                env=parts.install_env(record, recipe),
                timeout=max(timeout, 1.0),
                stdout=handle,
                stderr=_proc.STDOUT,
            )
        if done.returncode != 0:
            logger.warning("stop command of %s exited with %s", record.name, done.returncode)
    except _proc.TimeoutExpired:
        logger.warning("stop command of %s did not finish within %ss", record.name, timeout)
    except OSError as e:
        logger.warning("stop command of %s could not run: %s", record.name, e)
