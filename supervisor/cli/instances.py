"""The instance commands: recipes, new, install, update, rm, start, stop, restart, ls, and the rest.

Also status, adopt, attach, logs, tail, send and secret. Each parses, calls the ``Manager`` and renders.
"""

from __future__ import annotations

import sys
import typing as t
from pathlib import Path

import click

from supervisor.cli import listing, render
from supervisor.cli.context import get_manager, get_paths, progress_lines
from supervisor.errors import SupervisorError
from supervisor.states import BACKENDS as KNOWN_BACKENDS

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from supervisor.core.manager import ActionResult


@click.command("recipes")
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
    found = get_manager(ctx).recipes()
    if as_json:
        render.print_json([r.to_dict() for r in found])
        return
    rows = [
        [r.name + ("" if r.builtin else " *"), "plugin" if r.plugin else "agent", render.short_source(r.source)]
        for r in found
    ]
    used = sum(max((len(row[k]) for row in rows), default=0) for k in range(3)) + 3 * 2
    for row, recipe in zip(rows, found, strict=True):
        row.append(render.clip(recipe.description, max(20, 100 - used - 2)))
    render.table(["NAME", "MQTT", "SOURCE", "DESCRIPTION"], rows)
    if not all(r.builtin for r in found):
        click.echo("* your own recipe (from $SUPERVISOR_HOME/recipes or -r)")


@click.command("new")
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
      supervisor new mm-1 -r hummingbot-venv --ref v2.16.0 --set mqtt_host=10.0.0.5
      supervisor new mm-2 -r hummingbot-venv --secret hummingbot-password=@/run/keys/mm-2.pw
    """
    from supervisor.core.secrets import parse_secret_option

    secret_values = dict(parse_secret_option(option) for option in secret_options)
    progress, line = progress_lines()
    status = get_manager(ctx).new(
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
        render.print_json(status.to_dict())
    else:
        click.echo(
            f"created '{name}' ({status.recipe}, {status.backend}) at {status.checkout} [{(status.commit or '')[:10]}]"
        )
        click.echo(f"start it with: supervisor start {name}")


@click.command("install")
@click.argument("name")
@click.pass_context
def install_cmd(ctx: click.Context, name: str) -> None:
    """Run an instance's install steps again (for example after a failed install)."""
    _, line = progress_lines()
    status = get_manager(ctx).install(name, on_line=line)
    click.echo(f"installed '{name}' at {status.checkout}")


@click.command("update")
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
    progress, line = progress_lines()
    manager = get_manager(ctx)
    before = manager.status([name])[0]
    status = manager.update(name, ref=ref, progress=progress, on_line=line, stop_timeout=timeout)
    if status.commit == before.commit and before.state != "install-failed":
        click.echo(f"'{name}' is already at {status.ref} [{(status.commit or '')[:10]}]; nothing changed")
        return
    click.echo(f"updated '{name}' to {status.ref} [{(status.commit or '')[:10]}], state {status.state}")


@click.command("rm")
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also delete the checkout and logs.")
@click.option("--force", is_flag=True, help="Stop the instance first if it is running.")
@click.option("--yes", is_flag=True, help="Do not ask before purging.")
@click.pass_context
def rm_cmd(ctx: click.Context, name: str, purge: bool, force: bool, yes: bool) -> None:
    """Remove an instance (keeps its checkout unless --purge)."""
    manager = get_manager(ctx)
    if purge and not yes:
        record = manager.record(name)
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
        render.print_json([r.to_dict() for r in results])
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
    return get_manager(ctx).resolve(names, all_instances=all_)


@click.command("start")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Start every installed instance.")
@click.option(
    "--wait/--no-wait",
    default=False,
    show_default=True,
    help="Wait for each bot's readiness pattern (exit 1 if one is not ready in time), "
    "or return once the launches are alive (ls says 'starting' until ready).",
)
@click.option(
    "--strategy",
    "conf",
    metavar="CONF",
    help="Launch with this strategy config (a file name in the bot's folder, e.g. Hummingbot's conf/scripts/CONF); "
    "recorded, so crash restarts, 'restart' and 'update' run it again.",
)
@click.option(
    "--script", metavar="SCRIPT", help="Launch with this strategy script (a file name), recorded as --strategy."
)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.pass_context
def start_cmd(
    ctx: click.Context,
    names: tuple[str, ...],
    all_: bool,
    wait: bool,
    conf: str | None,
    script: str | None,
    as_json: bool,
) -> None:
    """Start instances in their sessions (a running one is left alone).

    Without --strategy/--script the bot starts with no strategy, and the one
    recorded before is forgotten.

    \b
    Example:
      supervisor start mm-1 --strategy conf_v2_probe.yml --wait
    """
    manager = get_manager(ctx)
    selected = _names(ctx, names, all_)
    if all_:
        from supervisor.core.registry import INSTALLED

        # Instances that are not installed are skipped, not errors: decided from the records alone.
        records = manager.records()
        selected = [name for name in selected if records[name].lifecycle == INSTALLED]
    strategy = _strategy_option(conf, script)
    if strategy:
        manager.check_takes_strategy(selected)
    _render_actions(manager.start(selected, wait=wait, strategy=strategy), as_json)


def _strategy_option(conf: str | None, script: str | None) -> dict[str, str] | None:
    """Return ``--strategy``/``--script`` as a strategy, or ``None`` when neither is given."""
    if conf is None and script is None:
        return None
    return {key: value for key, value in (("script", script), ("conf", conf)) if value is not None}


@click.command("stop")
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
    _render_actions(get_manager(ctx).stop(_names(ctx, names, all_), timeout=timeout), as_json)


@click.command("restart")
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Restart every instance.")
@click.option(
    "--timeout", type=float, help="Seconds for the graceful stop (default: the recipe's run.stop.grace, else 30)."
)
@click.option(
    "--strategy",
    "conf",
    metavar="CONF",
    help="Come back with this strategy config instead of the recorded one (recorded from now on).",
)
@click.option("--script", metavar="SCRIPT", help="Come back with this strategy script instead of the recorded one.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.pass_context
def restart_cmd(
    ctx: click.Context,
    names: tuple[str, ...],
    all_: bool,
    timeout: float | None,
    conf: str | None,
    script: str | None,
    as_json: bool,
) -> None:
    """Stop and start instances again, with the strategy each was last launched with (or the one given)."""
    manager = get_manager(ctx)
    selected = _names(ctx, names, all_)
    strategy = _strategy_option(conf, script)
    if strategy:
        manager.check_takes_strategy(selected)
    _render_actions(manager.restart(selected, timeout=timeout, strategy=strategy), as_json)


@click.command("ls")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every field, including checkout and repo).")
@click.option("--no-foreign", is_flag=True, help="Do not look for bot sessions that are not ours.")
@click.option("--disk", is_flag=True, help="Also show the disk each instance holds (slow: walks every file).")
@click.pass_context
def ls_cmd(ctx: click.Context, names: tuple[str, ...], as_json: bool, no_foreign: bool, disk: bool) -> None:
    """List instances with state, pid, CPU, memory, uptime, restarts and commit.

    CPU% is the average since the process started (like ps). When an agent
    runs, its current view is shown (the same records, without looking again).
    With --disk, DISK is what the instance holds alone (checkout, logs); files
    shared with other checkouts (the build cache's hard links) are in --json's
    disk.shared, and shared venvs and mirrors in 'supervisor gc'.
    """
    found = listing.collect(get_paths(ctx), names, foreign=not no_foreign)
    if disk:
        usage = get_manager(ctx).disk_usage([r["name"] for r in found.instances])
        for record in found.instances:
            record["disk"] = usage[record["name"]].to_dict()
    listing.show(found, as_json=as_json)


@click.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--disk", is_flag=True, help="Also show the disk the instance holds (slow: walks every file).")
@click.pass_context
def status_cmd(ctx: click.Context, name: str, as_json: bool, disk: bool) -> None:
    """Show one instance; exits 3 when it is not running."""
    manager = get_manager(ctx)
    status = manager.status([name])[0]
    data = status.to_dict()
    if disk:
        data["disk"] = manager.disk_usage([name])[name].to_dict()
    if as_json:
        render.print_json(data)
    else:
        for key, value in data.items():
            if key == "disk":
                own, shared = render.human_bytes(value["own"]), render.human_bytes(value["shared"])
                click.echo(f"{key:12} {own} (+{shared} shared with other checkouts)")
                continue
            text = render.strategy_text(value) if key == "strategy" else value if value is not None else "-"
            click.echo(f"{key:12} {text}")
    if not status.is_running:
        ctx.exit(3)


@click.command("adopt")
@click.argument("session")
@click.option("--name", required=True, help="Instance name to record it under.")
@click.option("-r", "--recipe", help="Recipe (default: the one whose detect pattern matched).")
@click.pass_context
def adopt_cmd(ctx: click.Context, session: str, name: str, recipe: str | None) -> None:
    """Take over a bot session started by hand (for example 'screen -S hbot1')."""
    status = get_manager(ctx).adopt(session, name, recipe)
    click.echo(f"adopted session '{session}' as '{name}' ({status.recipe}, {status.state})")


@click.command("attach")
@click.argument("name")
@click.pass_context
def attach_cmd(ctx: click.Context, name: str) -> None:
    """Attach this terminal to the bot's console (detach again with the multiplexer's keys)."""
    manager = get_manager(ctx)
    manager.attach_command(name)  # an unknown or stopped instance is reported before the terminal check
    if not sys.stdin.isatty():
        msg = (
            f"instance '{name}': attach needs a terminal. "
            f"Use 'supervisor tail {name}' or 'supervisor send {name} TEXT'."
        )
        raise SupervisorError(msg)
    manager.attach(name)


@click.command("logs")
@click.argument("name")
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new output.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=50, show_default=True, help="Lines to show.")
@click.option("--console", "console_only", is_flag=True, help="Show the console output even when the bot keeps logs.")
@click.pass_context
def logs_cmd(ctx: click.Context, name: str, follow_: bool, lines: int, console_only: bool) -> None:
    """Print the bot's output: its own newest log file when its recipe names them (log_files), else its console.

    A full-screen bot (Hummingbot) redraws its console, which reads as junk
    line by line; its own log file is what a person reads. Which one is
    shown is said on stderr.
    """
    from supervisor.logfiles import clean_console, follow, last_lines

    manager = get_manager(ctx)
    own = None if console_only else manager.bot_log_path(name)
    if own is not None:
        click.echo(f"(the bot's own log {own}; its console: supervisor logs {name} --console)", err=True)
        for line in follow(own, lines) if follow_ else last_lines(own, lines):
            click.echo(line)
        return
    path = manager.log_path(name)
    if follow_:
        for line in follow(path, lines):
            click.echo(clean_console(line) if line else line)
        return
    if not path.exists():
        click.echo(f"(no output logged yet at {path})", err=True)
        return
    for line in last_lines(path, lines):
        click.echo(clean_console(line))


@click.command("tail")
@click.argument("name")
@click.option(
    "-n", "--lines", type=click.IntRange(min=1, max=10000), default=50, show_default=True, help="Lines to show."
)
@click.pass_context
def tail_cmd(ctx: click.Context, name: str, lines: int) -> None:
    """Print the bot's current screen."""
    click.echo(get_manager(ctx).tail(name, lines))


@click.command("send")
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
    manager = get_manager(ctx)
    if keys:
        manager.send_keys(name, text)
        return
    if len(text) != 1:
        msg = f"send takes one TEXT argument, got {len(text)}. Quote the line: supervisor send {name} 'a b c'."
        raise SupervisorError(msg)
    manager.send(name, text[0])


@click.group("secret")
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
    get_manager(ctx).set_secret(name, key, value)
    click.echo(f"stored secret '{key}' of '{name}'")


@secret_grp.command("ls")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def secret_ls_cmd(ctx: click.Context, name: str, as_json: bool) -> None:
    """List an instance's secrets: keys, variables and whether each is set (never values)."""
    found = get_manager(ctx).secret_info(name)
    if as_json:
        render.print_json([info.to_dict() for info in found])
        return
    if not found:
        click.echo(f"'{name}' uses no secrets.")
        return
    render.table(["KEY", "ENV", "SET"], [[i.key, i.env or "-", "yes" if i.is_set else "no"] for i in found])


@secret_grp.command("rm")
@click.argument("name")
@click.argument("key")
@click.pass_context
def secret_rm_cmd(ctx: click.Context, name: str, key: str) -> None:
    """Delete one secret of an instance."""
    if not get_manager(ctx).remove_secret(name, key):
        msg = f"instance '{name}': secret '{key}' is not set. Run 'supervisor secret ls {name}'."
        raise SupervisorError(msg)
    click.echo(f"removed secret '{key}' of '{name}'")


@click.command("gc")
@click.option("--yes", is_flag=True, help="Delete what is listed (without it, only list).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def gc_cmd(ctx: click.Context, yes: bool, as_json: bool) -> None:
    """List the shared venvs, build caches and git mirrors no instance uses; delete them with --yes.

    A checkout kept by 'rm' without --purge is no instance: the mirror it
    borrows objects from counts as unused.

    \b
    Example:
      supervisor gc            # what would go, and how much
      supervisor gc --yes      # delete it
    """
    manager = get_manager(ctx)
    items = manager.unused_shared()
    total = sum(item.bytes for item in items)
    freed = manager.remove_shared(items) if yes else 0
    if as_json:
        render.print_json({"items": [i.to_dict() for i in items], "bytes": total, "removed": yes, "freed": freed})
        return
    if not items:
        click.echo("Nothing to remove: every venv, build cache entry and mirror is used by an instance.")
        return
    rows = [[i.kind + ("" if i.complete else " (unfinished)"), render.human_bytes(i.bytes), i.path] for i in items]
    render.table(["KIND", "SIZE", "PATH"], rows)
    if yes:
        click.echo(f"removed {len(items)}, {render.human_bytes(freed)} freed")
    else:
        click.echo(f"{len(items)} unused, {render.human_bytes(total)} in all. Delete them with: supervisor gc --yes")


COMMANDS: tuple[click.Command, ...] = (
    recipes_cmd,
    new_cmd,
    install_cmd,
    update_cmd,
    rm_cmd,
    start_cmd,
    stop_cmd,
    restart_cmd,
    ls_cmd,
    status_cmd,
    adopt_cmd,
    attach_cmd,
    logs_cmd,
    tail_cmd,
    send_cmd,
    secret_grp,
    gc_cmd,
)
"""The commands this module adds to the ``supervisor`` group."""
