"""What every command takes from the click context: the paths, the one ``Manager``, logging set-up.

Imports the core lazily (``--help`` and the remote commands never load it).
"""

from __future__ import annotations

import logging
import sys
import time
import typing as t

import click

from supervisor.cli import render
from supervisor.paths import Paths

if t.TYPE_CHECKING:
    from supervisor.core.manager import Manager


def get_paths(ctx: click.Context) -> Paths:
    """Return the paths of the ``--home``/``--tmux-socket`` the command was given (or the environment's)."""
    obj = ctx.find_root().obj
    paths = Paths.from_env(obj.get("home"), obj.get("tmux_socket"))
    if not paths.home.exists():  # every console, command and alert lives here: owner-only
        paths.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return paths


def get_manager(ctx: click.Context) -> Manager:
    """Return the command's ``Manager``, made once per invocation."""
    from supervisor.core.manager import Manager

    obj = ctx.find_root().obj
    if "manager" not in obj:
        obj["manager"] = Manager(get_paths(ctx), extra_recipes=obj.get("recipe_files", ()))
    return t.cast("Manager", obj["manager"])


def is_debug(ctx: click.Context) -> bool:
    """Whether ``--debug`` was given."""
    obj = ctx.find_root().obj
    return bool(obj and obj.get("debug"))


def log_info_to_console(ctx: click.Context) -> None:
    """Log INFO and above with timestamps, unless ``--debug`` already set the level."""
    if not is_debug(ctx):
        logging.getLogger().setLevel(logging.INFO)
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))


def stop_on_signals(stop: t.Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM and SIGINT (the foreground services then close cleanly)."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop())
    signal.signal(signal.SIGINT, lambda *_: stop())


def progress_lines() -> tuple[t.Callable[[str, int | None, int | None], None], t.Callable[[str], None]]:
    """Return (git progress, step line) callbacks: a live line on a terminal, plain lines otherwise."""
    tty = sys.stderr.isatty()
    last: dict[str, t.Any] = {"stage": "", "at": 0.0}

    def progress(stage: str, current: int | None, total: int | None) -> None:
        if tty:
            pct = f" {100 * (current or 0) // total:3d}% ({current}/{total})" if total else ""
            render.echo(f"\r  {stage}{pct}\x1b[K", nl=False, err=True)
        elif stage != last["stage"] or time.monotonic() - last["at"] > 5:
            render.echo(f"  {stage}" + (f" {current}/{total}" if total else ""), err=True)
        last.update(stage=stage, at=time.monotonic())

    def line(text: str) -> None:
        if tty and last["stage"]:
            render.echo("\r\x1b[K", nl=False, err=True)
            last["stage"] = ""
        render.echo(f"==> {text}", err=True)

    return progress, line
