"""The ``supervisor`` command: parse -> Manager -> render (text or ``--json``); nothing else.

The only module that imports click.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import typing as t
from pathlib import Path

import click

from supervisor import __version__
from supervisor.errors import InstallError, SupervisorError, os_error_hint
from supervisor.files import atomic_write
from supervisor.paths import Paths
from supervisor.states import BACKENDS as KNOWN_BACKENDS

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from supervisor.core.manager import ActionResult, InstanceStatus, Manager

logger = logging.getLogger(__name__)


class SupervisorGroup(click.Group):
    """Turn our errors into one ``Error: …`` line and the documented exit code."""

    def invoke(self, ctx: click.Context) -> t.Any:
        """Run the command and render our errors."""
        try:
            return super().invoke(ctx)
        except SupervisorError as e:
            if ctx.obj and ctx.obj.get("debug"):
                logger.exception("failed")
            click.echo(f"Error: {e}", err=True)
            if isinstance(e, InstallError) and e.log_tail:
                click.echo("--- last lines of the install log ---", err=True)
                click.echo(e.log_tail.rstrip(), err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except OSError as e:
            # Disk full, permissions, read-only file systems: name the file and what to do, no traceback.
            if ctx.obj and ctx.obj.get("debug"):
                logger.exception("failed")
            where = f"'{e.filename}'" + (f" -> '{e.filename2}'" if e.filename2 else "") + ": " if e.filename else ""
            click.echo(f"Error: {where}{e.strerror or e}. {os_error_hint(e)}", err=True)
            ctx.exit(1)


def _manager(ctx: click.Context) -> Manager:
    from supervisor.core.manager import Manager

    obj = ctx.find_root().obj
    if "manager" not in obj:
        paths = Paths.from_env(obj.get("home"), obj.get("tmux_socket"))
        obj["manager"] = Manager(paths, extra_recipes=obj.get("recipe_files", ()))
    return t.cast("Manager", obj["manager"])


def _json(data: t.Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit in ("B", "K") else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}G"


def _human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


STATE_COLOURS = {
    "running": "green",
    "starting": "cyan",
    "waiting-login": "magenta",
    "stopped": None,
    "exited": "yellow",
    "crashed": "red",
    "fatal": "red",
    "install-failed": "red",
    "installing": "cyan",
}


_ALIVE_STATES = ("running", "starting", "waiting-login")
"""States with a live process (its pid, CPU and memory are shown)."""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], colour_col: int | None = None) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=False)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip())
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=False)):
            text = cell.ljust(width)
            if i == colour_col and STATE_COLOURS.get(cell):
                text = click.style(text, fg=STATE_COLOURS[cell])
            cells.append(text)
        click.echo("  ".join(cells).rstrip())


def _progress() -> tuple[t.Callable[[str, int | None, int | None], None], t.Callable[[str], None]]:
    """Return (git progress, step line) callbacks: a live line on a terminal, plain lines otherwise."""
    tty = sys.stderr.isatty()
    last: dict[str, t.Any] = {"stage": "", "at": 0.0}

    def progress(stage: str, current: int | None, total: int | None) -> None:
        if tty:
            pct = f" {100 * (current or 0) // total:3d}% ({current}/{total})" if total else ""
            click.echo(f"\r  {stage}{pct}\x1b[K", nl=False, err=True)
        elif stage != last["stage"] or time.monotonic() - last["at"] > 5:
            click.echo(f"  {stage}" + (f" {current}/{total}" if total else ""), err=True)
        last.update(stage=stage, at=time.monotonic())

    def line(text: str) -> None:
        if tty and last["stage"]:
            click.echo("\r\x1b[K", nl=False, err=True)
            last["stage"] = ""
        click.echo(f"==> {text}", err=True)

    return progress, line


@click.group(
    cls=SupervisorGroup, context_settings={"auto_envvar_prefix": "SUPERVISOR", "help_option_names": ["-h", "--help"]}
)
@click.option(
    "--home",
    type=click.Path(path_type=Path, file_okay=False),
    help="State folder (registry, checkouts, logs). Default: ~/.local/share/bot-supervisor.",
)
@click.option("--tmux-socket", help="Name of our tmux server's socket (tmux -L). Default: bot-supervisor.")
@click.option("--debug", is_flag=True, help="Log debug output and show tracebacks.")
@click.version_option(__version__, prog_name="supervisor")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, tmux_socket: str | None, debug: bool) -> None:
    """Install, run and supervise many source-installed bots in tmux or screen sessions.

    \b
    Quick tour:
      supervisor recipes                     # what can be installed
      supervisor new mm-1 -r example-bot     # clone + install one instance
      supervisor start mm-1                  # run it in its own session
      supervisor ls                          # state, pid, CPU, memory, uptime
      supervisor attach mm-1                 # the bot's real console
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj.update(home=home, tmux_socket=tmux_socket, debug=debug)


@cli.command("recipes")
@click.option(
    "-r",
    "--recipe",
    "recipe_files",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Also list this recipe file (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def recipes_cmd(ctx: click.Context, recipe_files: tuple[Path, ...], as_json: bool) -> None:
    """List recipes: built-in ones, those in $SUPERVISOR_HOME/recipes, and files given with -r."""
    ctx.find_root().obj["recipe_files"] = recipe_files
    found = _manager(ctx).recipes()
    if as_json:
        _json([r.to_dict() for r in found])
        return
    rows = [
        [r.name + ("" if r.builtin else " *"), "plugin" if r.plugin else "agent", _short_source(r.source)]
        for r in found
    ]
    used = sum(max((len(row[k]) for row in rows), default=0) for k in range(3)) + 3 * 2
    for row, recipe in zip(rows, found, strict=True):
        row.append(_clip(recipe.description, max(20, 100 - used - 2)))
    _table(["NAME", "MQTT", "SOURCE", "DESCRIPTION"], rows)
    if not all(r.builtin for r in found):
        click.echo("* your own recipe (from $SUPERVISOR_HOME/recipes or -r)")


def _short_source(source: str) -> str:
    for prefix in ("https://", "http://", "ssh://", "git@"):
        source = source.removeprefix(prefix)
    return source.removesuffix(".git")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


@cli.command("new")
@click.argument("name")
@click.option("-r", "--recipe", "recipe", required=True, help="Recipe name or path to a recipe file.")
@click.option("--repo", help="Git URL or path to clone instead of the recipe's.")
@click.option("--ref", help="Branch, tag or commit to check out instead of the recipe's.")
@click.option(
    "--backend", type=click.Choice(KNOWN_BACKENDS), default="tmux", show_default=True, help="Session backend."
)
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False), help="Checkout folder.")
@click.option("--no-install", is_flag=True, help="Clone only; skip the recipe's install steps.")
@click.option(
    "--set", "settings", multiple=True, metavar="KEY=VALUE", help="Recipe variable or env.NAME=VALUE (repeatable)."
)
@click.option(
    "--secret",
    "secret_options",
    multiple=True,
    metavar="KEY=@PATH",
    help="Store a secret the recipe uses, read from PATH ('@-': stdin); never the value itself (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the new instance as JSON.")
@click.pass_context
def new_cmd(
    ctx: click.Context,
    name: str,
    recipe: str,
    repo: str | None,
    ref: str | None,
    backend: str,
    directory: Path | None,
    no_install: bool,
    settings: tuple[str, ...],
    secret_options: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create an instance: clone its own checkout and run the recipe's install steps.

    \b
    Example:
      supervisor new mm-1 -r hummingbot --ref v2.16.0 --set mqtt_host=10.0.0.5
      supervisor new mm-2 -r hummingbot --secret password=@/run/keys/mm-2.pw
    """
    from supervisor.core.secrets import parse_secret_option

    secret_values = dict(parse_secret_option(option) for option in secret_options)
    progress, line = _progress()
    status = _manager(ctx).new(
        name,
        recipe,
        repo=repo,
        ref=ref,
        backend=backend,
        directory=directory,
        install=not no_install,
        settings=settings,
        secret_values=secret_values,
        progress=progress,
        on_line=line,
    )
    if as_json:
        _json(status.to_dict())
    else:
        click.echo(
            f"created '{name}' ({status.recipe}, {status.backend}) at {status.checkout} [{(status.commit or '')[:10]}]"
        )
        click.echo(f"start it with: supervisor start {name}")


@cli.command("install")
@click.argument("name")
@click.pass_context
def install_cmd(ctx: click.Context, name: str) -> None:
    """Run an instance's install steps again (for example after a failed install)."""
    _, line = _progress()
    status = _manager(ctx).install(name, on_line=line)
    click.echo(f"installed '{name}' at {status.checkout}")


@cli.command("update")
@click.argument("name")
@click.option("--ref", help="Branch, tag or commit to move to (default: the instance's ref).")
@click.option(
    "--timeout", type=float, help="Seconds for the graceful stop (default: the recipe's run.stop.grace, else 30)."
)
@click.pass_context
def update_cmd(ctx: click.Context, name: str, ref: str | None, timeout: float | None) -> None:
    """Fetch and check out new code, reinstall, and restart if it was running.

    The bot is stopped only when REF exists and differs from what is checked
    out. If the install fails or the new commit does not come up, the previous
    commit and config files are put back and started again.
    """
    progress, line = _progress()
    manager = _manager(ctx)
    before = manager.status([name])[0]
    status = manager.update(name, ref=ref, progress=progress, on_line=line, stop_timeout=timeout)
    if status.commit == before.commit and before.state != "install-failed":
        click.echo(f"'{name}' is already at {status.ref} [{(status.commit or '')[:10]}]; nothing changed")
        return
    click.echo(f"updated '{name}' to {status.ref} [{(status.commit or '')[:10]}], state {status.state}")


@cli.command("rm")
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also delete the checkout and logs.")
@click.option("--force", is_flag=True, help="Stop the instance first if it is running.")
@click.option("--yes", is_flag=True, help="Do not ask before purging.")
@click.pass_context
def rm_cmd(ctx: click.Context, name: str, purge: bool, force: bool, yes: bool) -> None:
    """Remove an instance (keeps its checkout unless --purge)."""
    manager = _manager(ctx)
    if purge and not yes:
        record = manager.registry.get(name)
        if not sys.stdin.isatty():
            msg = f"instance '{name}': --purge deletes {record.checkout}. Pass --yes to confirm."
            raise SupervisorError(msg)
        click.confirm(f"Delete {record.checkout} and all logs of '{name}'?", abort=True)
    removed = manager.remove(name, purge=purge, force=force)
    click.echo(
        f"removed '{name}'"
        + (f" and deleted {removed.checkout}" if purge else f" (checkout kept at {removed.checkout})")
    )


def _render_actions(results: Sequence[ActionResult], as_json: bool) -> None:
    if as_json:
        _json([r.to_dict() for r in results])
    else:
        for result in results:
            if result.ok:
                click.echo(result.message)
            else:
                click.echo(f"Error: {result.message}", err=True)
            if result.warning:
                click.echo(f"Warning: {result.warning}", err=True)
    if not all(r.ok for r in results):
        click.get_current_context().exit(1)


def _names(ctx: click.Context, names: tuple[str, ...], all_: bool) -> list[str]:
    return _manager(ctx).resolve(names, all_instances=all_)


@cli.command("start")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Start every instance.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the recipe's readiness pattern.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.pass_context
def start_cmd(ctx: click.Context, names: tuple[str, ...], all_: bool, no_wait: bool, as_json: bool) -> None:
    """Start instances in their sessions (a running one is left alone)."""
    manager = _manager(ctx)
    selected = _names(ctx, names, all_)
    if all_:
        selected = [s.name for s in manager.status(selected) if s.state not in ("install-failed", "installing")]
    _render_actions(manager.start(selected, wait_ready=not no_wait), as_json)


@cli.command("stop")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Stop every instance.")
@click.option(
    "--timeout",
    type=float,
    help="Seconds after the quit lines or stop signal before SIGTERM (default: the recipe's run.stop.grace, else 30).",
)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.pass_context
def stop_cmd(ctx: click.Context, names: tuple[str, ...], all_: bool, timeout: float | None, as_json: bool) -> None:
    """Stop instances: the recipe's quit lines (or stop signal/command) first, then SIGTERM, then SIGKILL."""
    _render_actions(_manager(ctx).stop(_names(ctx, names, all_), timeout=timeout), as_json)


@cli.command("restart")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Restart every instance.")
@click.option(
    "--timeout", type=float, help="Seconds for the graceful stop (default: the recipe's run.stop.grace, else 30)."
)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.pass_context
def restart_cmd(ctx: click.Context, names: tuple[str, ...], all_: bool, timeout: float | None, as_json: bool) -> None:
    """Stop and start instances again."""
    _render_actions(_manager(ctx).restart(_names(ctx, names, all_), timeout=timeout), as_json)


@cli.command("ls")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every field, including checkout and repo).")
@click.option("--no-foreign", is_flag=True, help="Do not look for bot sessions that are not ours.")
@click.pass_context
def ls_cmd(ctx: click.Context, names: tuple[str, ...], as_json: bool, no_foreign: bool) -> None:
    """List instances with state, pid, CPU, memory, uptime, restarts and commit.

    CPU% is the average since the process started (like ps).
    """
    manager = _manager(ctx)
    statuses = manager.status(list(names) or None)
    foreign = [] if (no_foreign or names) else manager.foreign_sessions()
    if as_json:
        _json({"instances": [s.to_dict() for s in statuses], "foreign_sessions": [f.to_dict() for f in foreign]})
        return
    _print_statuses(statuses)
    if foreign:
        click.echo(
            "\nBot sessions not managed by supervisor (take one over with 'supervisor adopt SESSION --name NAME'):"
        )
        _table(
            ["SESSION", "STATE", "BACKEND", "SERVER", "PID", "RECIPE", "COMMAND"],
            [
                [f.session, f.state, f.backend, f.server, str(f.pid or "-"), f.recipe or "?", f.command[:40]]
                for f in foreign
            ],
        )
        if any(f.state == "orphan" for f in foreign):
            click.echo("orphan: a session of ours whose record is gone (adopt it with -r RECIPE if none is shown)")


def _print_statuses(statuses: Sequence[InstanceStatus]) -> None:
    if not statuses:
        click.echo("No instances. Create one with: supervisor new NAME -r RECIPE")
        return
    rows = [
        [
            s.name,
            s.recipe,
            s.backend,
            s.state,
            s.desired,
            str(s.pid or "-"),
            f"{s.cpu_percent:.1f}" if s.cpu_percent is not None else "-",
            _human_bytes(s.rss),
            _human_duration(s.uptime),
            str(s.restarts),
            (s.commit or "-")[:8],
        ]
        for s in statuses
    ]
    _table(
        ["NAME", "RECIPE", "BACKEND", "STATE", "WANT", "PID", "CPU%", "RSS", "UPTIME", "RESTARTS", "COMMIT"],
        rows,
        colour_col=3,
    )


@cli.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status_cmd(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one instance; exits 3 when it is not running."""
    status = _manager(ctx).status([name])[0]
    if as_json:
        _json(status.to_dict())
    else:
        for key, value in status.to_dict().items():
            click.echo(f"{key:12} {value if value is not None else '-'}")
    if not status.is_running:
        ctx.exit(3)


@cli.command("adopt")
@click.argument("session")
@click.option("--name", required=True, help="Instance name to record it under.")
@click.option("-r", "--recipe", help="Recipe (default: the one whose detect pattern matched).")
@click.pass_context
def adopt_cmd(ctx: click.Context, session: str, name: str, recipe: str | None) -> None:
    """Take over a bot session started by hand (for example 'screen -S hbot1')."""
    status = _manager(ctx).adopt(session, name, recipe)
    click.echo(f"adopted session '{session}' as '{name}' ({status.recipe}, {status.state})")


@cli.command("attach")
@click.argument("name")
@click.pass_context
def attach_cmd(ctx: click.Context, name: str) -> None:
    """Attach this terminal to the bot's console (detach again with the multiplexer's keys)."""
    manager = _manager(ctx)
    manager.attach_command(name)  # an unknown or stopped instance is reported before the terminal check
    if not sys.stdin.isatty():
        msg = (
            f"instance '{name}': attach needs a terminal. "
            f"Use 'supervisor tail {name}' or 'supervisor send {name} TEXT'."
        )
        raise SupervisorError(msg)
    manager.attach(name)


@cli.command("logs")
@click.argument("name")
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new output.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=50, show_default=True, help="Lines to show.")
@click.pass_context
def logs_cmd(ctx: click.Context, name: str, follow_: bool, lines: int) -> None:
    """Print the bot's console output from its log file."""
    from supervisor.logfiles import clean_console, follow, last_lines

    path = _manager(ctx).log_path(name)
    if follow_:
        for line in follow(path, lines):
            click.echo(clean_console(line) if line else line)
        return
    if not path.exists():
        click.echo(f"(no output logged yet at {path})", err=True)
        return
    for line in last_lines(path, lines):
        click.echo(clean_console(line))


@cli.command("tail")
@click.argument("name")
@click.option(
    "-n", "--lines", type=click.IntRange(min=1, max=10000), default=50, show_default=True, help="Lines to show."
)
@click.pass_context
def tail_cmd(ctx: click.Context, name: str, lines: int) -> None:
    """Print the bot's current screen."""
    click.echo(_manager(ctx).tail(name, lines))


@cli.command("send")
@click.argument("name")
@click.argument("text", nargs=-1, required=True)
@click.option("--keys", is_flag=True, help="Press the named keys instead of typing text (C-c, Enter, Escape, Up...).")
@click.pass_context
def send_cmd(ctx: click.Context, name: str, text: tuple[str, ...], keys: bool) -> None:
    """Type one line into the bot's console, literally, then Enter.

    Control characters (Ctrl keys, ESC, line breaks) are refused; press keys on
    purpose with --keys, which takes key names as tmux's send-keys does.

    \b
    Examples:
      supervisor send mm-1 status
      supervisor send mm-1 --keys C-c            # interrupt the bot
      supervisor send mm-1 --keys Escape Up Enter
    """
    manager = _manager(ctx)
    if keys:
        manager.send_keys(name, text)
        return
    if len(text) != 1:
        msg = f"send takes one TEXT argument, got {len(text)}. Quote the line: supervisor send {name} 'a b c'."
        raise SupervisorError(msg)
    manager.send(name, text[0])


@cli.group("secret")
def secret_grp() -> None:
    """Store the secrets a recipe passes to its bot (for example Hummingbot's password)."""


@secret_grp.command("set")
@click.argument("name")
@click.argument("key")
@click.option(
    "--from-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the value from this file instead of stdin.",
)
@click.pass_context
def secret_set_cmd(ctx: click.Context, name: str, key: str, from_file: Path | None) -> None:
    """Store one secret of an instance; the value comes from stdin, never the command line.

    The file is mode 600 under the instance's folder; a trailing line break is
    dropped. The bot sees the new value at its next start.

    \b
    Example:
      supervisor secret set mm-1 password < ~/mm-1.pw
      read -rs PW && printf %s "$PW" | supervisor secret set mm-1 password
    """
    from supervisor.core.secrets import read_value_file

    if from_file is None and sys.stdin.isatty():
        click.echo(f"Value for '{key}' (input hidden), then Enter:", err=True)
        value = click.prompt("", hide_input=True, prompt_suffix="", err=True).encode()
    else:
        value = read_value_file(from_file or Path("-"), what=f"secret '{key}'")
    _manager(ctx).set_secret(name, key, value)
    click.echo(f"stored secret '{key}' of '{name}'")


@secret_grp.command("ls")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def secret_ls_cmd(ctx: click.Context, name: str, as_json: bool) -> None:
    """List an instance's secrets: keys, variables and whether each is set (never values)."""
    found = _manager(ctx).secret_info(name)
    if as_json:
        _json([info.to_dict() for info in found])
        return
    if not found:
        click.echo(f"'{name}' uses no secrets.")
        return
    _table(["KEY", "ENV", "SET"], [[i.key, i.env or "-", "yes" if i.is_set else "no"] for i in found])


@secret_grp.command("rm")
@click.argument("name")
@click.argument("key")
@click.pass_context
def secret_rm_cmd(ctx: click.Context, name: str, key: str) -> None:
    """Delete one secret of an instance."""
    if not _manager(ctx).remove_secret(name, key):
        msg = f"instance '{name}': secret '{key}' is not set. Run 'supervisor secret ls {name}'."
        raise SupervisorError(msg)
    click.echo(f"removed secret '{key}' of '{name}'")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli.main(args=list(argv) if argv is not None else None, prog_name="supervisor")


def _agent_option(*names: str, **kwargs: t.Any) -> t.Callable[[t.Callable[..., t.Any]], t.Callable[..., t.Any]]:
    """Return an option that skips SUPERVISOR_AGENT_* (the agent config reads SUPERVISOR_* itself)."""
    return click.option(*names, allow_from_autoenv=False, **kwargs)


def _agent_toml(paths: Paths, config_file: Path | None) -> Path | None:
    """Return the agent TOML to read: ``--config``, else ``agent.toml`` if it exists, else none."""
    return config_file or (paths.agent_config if paths.agent_config.exists() else None)


def _log_info_to_console(ctx: click.Context) -> None:
    """Log INFO and above with timestamps, unless ``--debug`` already set the level."""
    if not ctx.find_root().obj.get("debug"):
        logging.getLogger().setLevel(logging.INFO)
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))


def _stop_on_signals(stop: t.Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM and SIGINT (the foreground services then close cleanly)."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop())
    signal.signal(signal.SIGINT, lambda *_: stop())


@cli.command("agent")
@_agent_option("--broker", help="mqtt://[user@]host[:port] or mqtts://… (env SUPERVISOR_BROKER).")
@_agent_option(
    "--ca", type=click.Path(path_type=Path, dir_okay=False), help="CA file that signs the broker's certificate."
)
@_agent_option("--cert", type=click.Path(path_type=Path, dir_okay=False), help="Client certificate (mutual TLS).")
@_agent_option("--key", type=click.Path(path_type=Path, dir_okay=False), help="Client certificate's private key.")
@_agent_option("--namespace", help="Hummingbot topic namespace. Default: hbot.")
@_agent_option("--host-id", help="This host's id in topics. Default: the short host name.")
@_agent_option("--mqtt5", is_flag=True, default=None, help="Speak MQTT 5 instead of 3.1.1.")
@_agent_option("--heartbeat-interval", type=click.FloatRange(min=0.05), help="Seconds between heartbeats. Default: 10.")
@_agent_option(
    "--state-interval", type=click.FloatRange(min=0.05), help="Seconds between state refreshes. Default: 30."
)
@_agent_option(
    "--check-interval",
    type=click.FloatRange(min=0.05),
    help="Seconds between crash checks. Default: the heartbeat interval.",
)
@_agent_option(
    "--fatal-after",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Restarts after fast failures before the instance is marked 'fatal' (the next fast failure ends it).",
)
@_agent_option(
    "--backoff", type=click.FloatRange(min=0), default=1.0, show_default=True, help="First restart delay (doubles)."
)
@_agent_option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML file (default $SUPERVISOR_HOME/agent.toml).",
)
@_agent_option(
    "--no-hbot-relay", is_flag=True, help="Do not answer Hummingbot's topics (they cannot be signed); heartbeats go on."
)
@_agent_option(
    "--embedded-broker",
    is_flag=True,
    help="Run an MQTT broker (amqtt) inside the agent, on --broker's address (default 127.0.0.1:1883).",
)
@click.pass_context
def agent_cmd(
    ctx: click.Context,
    broker: str | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    namespace: str | None,
    host_id: str | None,
    mqtt5: bool | None,
    heartbeat_interval: float | None,
    state_interval: float | None,
    check_interval: float | None,
    fatal_after: int,
    backoff: float,
    config_file: Path | None,
    no_hbot_relay: bool,
    embedded_broker: bool,
) -> None:
    """Run the MQTT agent in the foreground.

    It relays Hummingbot-style commands into the sessions, publishes heartbeats
    and state, and restarts crashed bots. Bots keep running when it stops.
    Keep the broker password out of the command line: use SUPERVISOR_BROKER_PASSWORD
    or password_file in the config file.
    """
    from supervisor.agent.host import Agent
    from supervisor.mqtt.config import load_agent_config
    from supervisor.mqtt.guard import configure_agent_logging

    manager = _manager(ctx)
    overrides = {
        "url": broker,
        "ca": ca,
        "cert": cert,
        "key": key,
        "namespace": namespace,
        "host_id": host_id,
        "protocol": "5" if mqtt5 else None,
        "heartbeat_interval": heartbeat_interval,
        "state_interval": state_interval,
    }
    config = load_agent_config(_agent_toml(manager.paths, config_file), os.environ, overrides)
    _log_info_to_console(ctx)
    configure_agent_logging(
        manager.paths.agent_log,
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"),
    )
    embedded = None
    if embedded_broker or config.embedded_broker:
        from supervisor.mqtt.embedded import EmbeddedBroker

        if broker is None and "SUPERVISOR_BROKER" not in os.environ and config_file is None:
            config.broker.host = "127.0.0.1"  # the default broker URL says localhost; bind loopback only
        embedded = EmbeddedBroker(config.broker.host, config.broker.port)
        embedded.start()
    agent = Agent(
        manager,
        config,
        fatal_after=fatal_after,
        backoff_base=backoff,
        check_interval=check_interval,
        hbot_relay=not no_hbot_relay,
    )
    _stop_on_signals(agent.stop)
    try:
        agent.run()
    finally:
        if embedded is not None:
            embedded.stop()


@cli.group("service")
def service_grp() -> None:
    """Run the agent as a systemd user service."""


@service_grp.command("install")
@click.option("--broker", help="Broker URL written into the unit (no password: use agent.toml's password_file).")
@click.option("--print", "print_only", is_flag=True, help="Print the unit instead of writing it.")
@click.pass_context
def service_install_cmd(ctx: click.Context, broker: str | None, print_only: bool) -> None:
    """Write a systemd user unit that starts the agent at boot and restarts it if it dies."""
    import shlex

    manager = _manager(ctx)
    argv = [sys.executable, "-m", "supervisor", "agent"] + (["--broker", broker] if broker else [])
    unit = "\n".join(
        [
            "[Unit]",
            "Description=bot-supervisor agent (MQTT relay, heartbeats, crash recovery)",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            f"Environment=SUPERVISOR_HOME={manager.paths.home}",
            f"Environment=SUPERVISOR_TMUX_SOCKET={manager.paths.tmux_socket}",
            f"ExecStart={shlex.join(argv)}",
            "Restart=on-failure",
            "RestartSec=5",
            "# A tmux server first started by the agent lives in this unit's cgroup: stopping the",
            "# agent must never take the bots down with it.",
            "KillMode=process",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )
    if print_only:
        click.echo(unit, nl=False)
        return
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    target = config_home / "systemd" / "user" / "bot-supervisor-agent.service"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, unit, mode=0o644)
    user = os.environ.get("USER", "$USER")
    click.echo(f"wrote {target}")
    click.echo("enable it with:")
    click.echo("  systemctl --user daemon-reload && systemctl --user enable --now bot-supervisor-agent")
    click.echo("and let it run without a login session (survives logout and reboot):")
    click.echo(f"  sudo loginctl enable-linger {user}")


@cli.group("fleet")
@_agent_option("--broker", help="Broker URL (env SUPERVISOR_BROKER; default from agent.toml).")
@_agent_option("--ca", type=click.Path(path_type=Path, dir_okay=False), help="CA file for mqtts://.")
@_agent_option("--cert", type=click.Path(path_type=Path, dir_okay=False), help="Client certificate.")
@_agent_option("--key", type=click.Path(path_type=Path, dir_okay=False), help="Client certificate's key.")
@_agent_option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="TOML config file.")
@click.pass_context
def fleet_grp(
    ctx: click.Context,
    broker: str | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    config_file: Path | None,
) -> None:
    """See and drive the instances of every host through the shared broker.

    \b
    Targets are HOST/INSTANCE; '*' selects many:
      supervisor fleet ls
      supervisor fleet restart host-1/mm-1
      supervisor fleet stop 'host-2/*'
      supervisor fleet status '*/mm-1'
    With SUPERVISOR_SECRET set (the same on agents), requests are signed.
    """
    ctx.obj["fleet"] = {"url": broker, "ca": ca, "cert": cert, "key": key, "config": config_file}


def _fleet(ctx: click.Context) -> t.Any:
    from supervisor.fleet.client import FleetClient
    from supervisor.mqtt.config import load_agent_config

    opts = dict(ctx.find_root().obj["fleet"])
    config_file = opts.pop("config")
    home_config = Paths.from_env(ctx.find_root().obj.get("home")).agent_config
    path = config_file or (home_config if home_config.exists() else None)
    return FleetClient(load_agent_config(path, os.environ, opts))


@fleet_grp.command("ls")
@click.option(
    "--wait", type=click.FloatRange(min=0.1, max=60), default=1.5, show_default=True, help="Seconds to collect."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def fleet_ls_cmd(ctx: click.Context, wait: float, as_json: bool) -> None:
    """List every host and instance the broker knows (offline hosts and stale records are marked)."""
    with _fleet(ctx) as client:
        snap = client.snapshot(wait)
    if as_json:
        _json(snap.to_dict())
        return
    if not snap.hosts and not snap.instances:
        click.echo("No agents seen on this broker. Start one with: supervisor agent --broker URL")
        return
    rows = []
    for view in snap.instances:
        rec = view.record
        alive = view.state in _ALIVE_STATES
        rows.append(
            [
                view.host,
                view.name,
                view.state,
                str(rec.get("pid") or "-") if alive else "-",
                f"{rec['cpu_percent']:.1f}" if alive and rec.get("cpu_percent") is not None else "-",
                _human_bytes(rec.get("rss")) if alive else "-",
                _human_duration(rec.get("uptime")) if alive else "-",
                str(rec.get("restarts", "-")),
                str(rec.get("commit") or "-")[:8],
                _human_duration(view.heartbeat_age),
                _human_duration(view.age),
            ]
        )
    headers = ["HOST", "INSTANCE", "STATE", "PID", "CPU%", "RSS", "UPTIME", "RESTARTS", "COMMIT", "HB AGE", "REC AGE"]
    _table(headers, rows, colour_col=2)
    offline = sorted(h.host for h in snap.hosts.values() if h.state != "online" and h.trusted)
    if offline:
        click.echo(f"\noffline hosts (agent's last will): {', '.join(offline)}")
    untrusted = sorted(h.host for h in snap.hosts.values() if not h.trusted)
    if untrusted:
        click.echo(
            f"\nuntrusted hosts (record not signed with the shared secret; never acted on): {', '.join(untrusted)}"
        )


def _fleet_command(
    ctx: click.Context, verb: str, targets: tuple[str, ...], data: dict[str, t.Any], timeout: float, as_json: bool
) -> None:
    from supervisor.fleet.client import Snapshot, expand

    with _fleet(ctx) as client:
        # Only wildcards need the fleet's view; explicit targets are sent as given.
        needs_view = any("*" in target for target in targets)
        snap = client.snapshot(1.5) if needs_view else Snapshot(hosts={}, instances=[])
        chosen = expand(targets, snap)
        replies = client.run(chosen, verb, data, timeout)
    if as_json:
        _json([r.to_dict() for r in replies])
    else:
        for reply in replies:
            mark = (
                "ok"
                if reply.ok
                else "TIMEOUT"
                if reply.timed_out
                else "FAILED" + (f" ({reply.status})" if reply.status else "")
            )
            click.echo(f"{reply.target}: {mark}: {reply.msg}")
            if verb == "tail" and reply.ok and isinstance(reply.result, dict):
                click.echo(reply.result.get("screen", ""))
    if not all(r.ok for r in replies):
        ctx.exit(1)


def _make_fleet_verb(verb: str, summary: str) -> None:
    @fleet_grp.command(verb, help=summary)
    @click.argument("targets", nargs=-1, required=True)
    @click.option(
        "--timeout", type=click.FloatRange(min=0.1), default=45.0, show_default=True, help="Seconds to wait per target."
    )
    @click.option("--json", "as_json", is_flag=True, help="Print replies as JSON.")
    @click.pass_context
    def command(ctx: click.Context, targets: tuple[str, ...], timeout: float, as_json: bool) -> None:
        _fleet_command(ctx, verb, targets, {}, timeout, as_json)


for _verb, _summary in (
    ("start", "Start instances on their hosts (HOST/INSTANCE...)."),
    ("stop", "Stop instances gracefully on their hosts (HOST/INSTANCE...)."),
    ("restart", "Restart instances on their hosts (HOST/INSTANCE...)."),
    ("status", "Ask hosts for the live status of instances (HOST/INSTANCE...)."),
):
    _make_fleet_verb(_verb, _summary)


@fleet_grp.command("tail")
@click.argument("targets", nargs=-1, required=True)
@click.option("-n", "--lines", type=click.IntRange(1, 1000), default=30, show_default=True, help="Lines of screen.")
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=15.0, show_default=True, help="Seconds to wait per target."
)
@click.option("--json", "as_json", is_flag=True, help="Print replies as JSON.")
@click.pass_context
def fleet_tail_cmd(ctx: click.Context, targets: tuple[str, ...], lines: int, timeout: float, as_json: bool) -> None:
    """Print the current screen of instances on their hosts."""
    _fleet_command(ctx, "tail", targets, {"lines": lines}, timeout, as_json)


@fleet_grp.command("send")
@click.argument("target")
@click.argument("text")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=15.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@click.pass_context
def fleet_send_cmd(ctx: click.Context, target: str, text: str, timeout: float, as_json: bool) -> None:
    """Type one line into an instance's console on its host, literally (control characters are refused)."""
    from supervisor.consoletext import check_console_text

    check_console_text(text, what=f"target '{target}': the text to send")
    _fleet_command(ctx, "send", (target,), {"text": text}, timeout, as_json)


@cli.group("dashboard", invoke_without_command=True)
@_agent_option("--broker", help="Broker URL (env SUPERVISOR_BROKER; default from agent.toml).")
@_agent_option("--ca", type=click.Path(path_type=Path, dir_okay=False), help="CA file for mqtts://.")
@_agent_option("--cert", type=click.Path(path_type=Path, dir_okay=False), help="Client certificate.")
@_agent_option("--key", type=click.Path(path_type=Path, dir_okay=False), help="Client certificate's key.")
@_agent_option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="Agent TOML config.")
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    help="HOST:PORT to serve on (env SUPERVISOR_DASHBOARD_LISTEN); anything but loopback needs a password.",
)
@_agent_option(
    "--db",
    "db_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="SQLite history file. Default: $SUPERVISOR_HOME/dashboard.sqlite.",
)
@click.pass_context
def dashboard_grp(
    ctx: click.Context,
    broker: str | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    config_file: Path | None,
    listen: str,
    db_path: Path | None,
) -> None:
    """Serve one live web page for the whole fleet (state, heartbeats, controls, consoles, PnL).

    \b
    Examples:
      supervisor dashboard --broker mqtt://broker.lan     # http://127.0.0.1:8080/
      supervisor dashboard passwd --write                 # set the login password
      supervisor dashboard --listen 0.0.0.0:8080          # needs the password
    The password hash lives in $SUPERVISOR_HOME/dashboard.toml or SUPERVISOR_DASHBOARD_PASSWORD_HASH.
    """
    if ctx.invoked_subcommand is not None:
        return
    from supervisor.fleet.dashboard.auth import load_settings
    from supervisor.fleet.dashboard.server import Dashboard
    from supervisor.fleet.dashboard.store import Store
    from supervisor.mqtt.config import load_agent_config

    paths = Paths.from_env(ctx.find_root().obj.get("home"))
    agent_toml = _agent_toml(paths, config_file)
    config = load_agent_config(agent_toml, os.environ, {"url": broker, "ca": ca, "cert": cert, "key": key})
    settings = load_settings(paths.dashboard_config, os.environ)
    _log_info_to_console(ctx)
    store = Store(db_path or paths.dashboard_db)
    try:
        dashboard = Dashboard(config, settings, listen, store)
    except SupervisorError:
        store.close()
        raise
    _stop_on_signals(dashboard.stop)
    dashboard.run()


@dashboard_grp.command("passwd")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option("--write", is_flag=True, help="Store the hash in $SUPERVISOR_HOME/dashboard.toml (mode 600).")
@click.pass_context
def dashboard_passwd_cmd(ctx: click.Context, from_stdin: bool, write: bool) -> None:
    """Hash a dashboard password: print it, or store it with --write.

    \b
    Examples:
      supervisor dashboard passwd --write
      printf '%s\\n' "$PASS" | supervisor dashboard passwd --stdin   # prints the hash
    """
    from supervisor.fleet.dashboard.auth import hash_password, write_password_hash

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Dashboard password", hide_input=True, confirmation_prompt=True, err=True)
    if len(password) < 8:
        msg = "the dashboard password must have at least 8 characters. Choose a longer one."
        raise SupervisorError(msg)
    encoded = hash_password(password)
    if not write:
        click.echo(encoded)
        return
    target = Paths.from_env(ctx.find_root().obj.get("home")).dashboard_config
    write_password_hash(target, encoded)
    click.echo(f"wrote the password hash to {target}; restart the dashboard to use it.", err=True)


@cli.group("events")
def events_grp() -> None:
    """Receive webhooks (TradingView alerts...) and deliver them to bots as external events."""


@events_grp.command("serve")
@_agent_option("--broker", help="Broker URL (env SUPERVISOR_BROKER; default from agent.toml).")
@_agent_option("--ca", type=click.Path(path_type=Path, dir_okay=False), help="CA file for mqtts://.")
@_agent_option("--cert", type=click.Path(path_type=Path, dir_okay=False), help="Client certificate.")
@_agent_option("--key", type=click.Path(path_type=Path, dir_okay=False), help="Client certificate's key.")
@_agent_option("--namespace", help="Hummingbot topic namespace. Default: hbot.")
@_agent_option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), help="Agent TOML config.")
@_agent_option(
    "--routes",
    "routes_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Routes TOML. Default: $SUPERVISOR_HOME/events.toml.",
)
@_agent_option("--listen", help="HOST:PORT to serve on. Default: events.toml's receiver.listen or 127.0.0.1:8090.")
@click.pass_context
def events_serve_cmd(
    ctx: click.Context,
    broker: str | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    namespace: str | None,
    config_file: Path | None,
    routes_file: Path | None,
    listen: str | None,
) -> None:
    """Run the webhook receiver in the foreground: POST /hooks/ROUTE -> journal -> broker.

    \b
    Example ($SUPERVISOR_HOME/events.toml):
      [routes.btc-long]
      token = "a-long-random-secret"
      event = "signals.btc.long"
      targets = ["host-1/mm-1"]
    Then: curl -d '{"side":"buy"}' 'http://127.0.0.1:8090/hooks/btc-long?token=…'
    """
    from supervisor.events.config import load_events_config
    from supervisor.events.journal import Journal
    from supervisor.events.receiver import Receiver
    from supervisor.mqtt.config import load_agent_config

    paths = Paths.from_env(ctx.find_root().obj.get("home"))
    routes_path = routes_file or paths.events_config
    events = load_events_config(routes_path)
    agent_toml = _agent_toml(paths, config_file)
    overrides = {"url": broker, "ca": ca, "cert": cert, "key": key, "namespace": namespace}
    config = load_agent_config(agent_toml, os.environ, overrides)
    _log_info_to_console(ctx)
    if routes_path.stat().st_mode & 0o077:
        logger.warning("%s holds the routes' tokens but others may read it: chmod 600 it", routes_path)
    journal = Journal(paths.events_journal)
    try:
        receiver = Receiver(events, config, journal, audit_path=paths.audit_log, listen=listen)
    except SupervisorError:
        journal.close()
        raise
    _stop_on_signals(receiver.stop)
    receiver.run()


@events_grp.command("ls")
@click.option("-n", "--limit", type=click.IntRange(1, 10000), default=20, show_default=True, help="Events to show.")
@click.option("--route", help="Only this route's events.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with each event's body).")
@click.pass_context
def events_ls_cmd(ctx: click.Context, limit: int, route: str | None, as_json: bool) -> None:
    """List recent external events, newest first: route, targets, status (queued/published/failed)."""
    import datetime

    from supervisor.events.journal import Journal

    path = Paths.from_env(ctx.find_root().obj.get("home")).events_journal
    entries = []
    if path.exists():
        journal = Journal(path, read_only=True)
        try:
            entries = journal.recent(limit, route)
        finally:
            journal.close()
    if as_json:
        _json([entry.to_dict() for entry in entries])
        return
    if not entries:
        click.echo(f"no events yet (journal {path}).", err=True)
        return
    rows = [
        [
            str(entry.id),
            datetime.datetime.fromtimestamp(entry.received).strftime("%Y-%m-%d %H:%M:%S"),
            entry.route,
            entry.event,
            ",".join(entry.targets),
            entry.status,
            _clip(entry.error or entry.body.decode("utf-8", "replace"), 40),
        ]
        for entry in entries
    ]
    _table(["ID", "RECEIVED", "ROUTE", "EVENT", "TARGETS", "STATUS", "NOTE"], rows, colour_col=5)
