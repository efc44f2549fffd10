"""``supervisor ls``: ask the running agent over its socket, else look directly; the same records either way.

No click here, and the agent path imports neither the core nor psutil, libtmux, yaml or git:
:func:`supervisor.cli.main` dispatches a plain ``ls`` to :func:`plain_ls` before click loads.
"""

from __future__ import annotations

import os
import re
import sys
import typing as t

from supervisor.cli import render

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from supervisor.paths import Paths

_NAME_RE = re.compile(r"[a-z0-9_-]+")


class Listing(t.NamedTuple):
    """What ``ls`` shows: instance records and foreign-session records, as JSON-able dicts."""

    instances: list[dict[str, t.Any]]
    foreign: list[dict[str, t.Any]]


def collect(paths: Paths, names: Sequence[str], *, foreign: bool) -> Listing:
    """Return the agent's snapshot when one answers on ``paths.agent_socket``, else look directly.

    Raises
    ------
    InstanceNotFound
        From the direct look, for a name that is not recorded.
    """
    want_foreign = foreign and not names
    return ask_agent(paths, names, foreign=want_foreign) or collect_directly(paths, names, foreign=want_foreign)


def ask_agent(paths: Paths, names: Sequence[str], *, foreign: bool) -> Listing | None:
    """Return the running agent's listing, or ``None`` when no agent answers as it should."""
    from supervisor.agent.snapshot import ask

    reply = ask(paths.agent_socket, names, foreign=foreign, tmux_socket=paths.tmux_socket)
    if reply is None:
        return None
    return Listing(reply["instances"], reply["foreign"] if foreign else [])


def collect_directly(paths: Paths, names: Sequence[str], *, foreign: bool) -> Listing:
    """Return the live records as this process sees them (no agent involved)."""
    from supervisor.core.manager import Manager

    manager = Manager(paths)
    statuses = manager.status(list(names) or None)
    others = manager.foreign_sessions() if foreign else []
    return Listing([s.to_dict() for s in statuses], [f.to_dict() for f in others])


def show(listing: Listing, *, as_json: bool) -> None:
    """Print a listing as ``ls`` does: JSON, or the instance table plus foreign sessions."""
    if as_json:
        render.print_json({"instances": listing.instances, "foreign_sessions": listing.foreign})
        return
    render.print_statuses(listing.instances)
    render.print_foreign(listing.foreign)


def parse_plain_ls(argv: Sequence[str]) -> tuple[str | None, str | None, list[str], bool, bool] | None:
    """Return ``(home, tmux_socket, names, as_json, no_foreign)`` for a plain ``ls``, else ``None``.

    Plain means: only ``--home``/``--tmux-socket`` before ``ls``, only ``--json``, ``--no-foreign``
    and instance names after it, and no ``SUPERVISOR_DEBUG``/``SUPERVISOR_LS_*`` settings (click's
    automatic variables). Anything else, help and errors included, goes through click.
    """
    if any(key == "SUPERVISOR_DEBUG" or key.startswith("SUPERVISOR_LS_") for key in os.environ):
        return None
    args = list(argv)
    home = tmux_socket = None
    while args and args[0] != "ls":
        option, eq, value = args.pop(0).partition("=")
        if option not in ("--home", "--tmux-socket"):
            return None
        if not eq:
            if not args:
                return None
            value = args.pop(0)
        if not value or value.startswith("-"):
            return None
        if option == "--home":
            home = value
        else:
            tmux_socket = value
    if not args:
        return None
    names: list[str] = []
    as_json = no_foreign = False
    for arg in args[1:]:
        if arg == "--json":
            as_json = True
        elif arg == "--no-foreign":
            no_foreign = True
        elif not arg.startswith("-") and _NAME_RE.fullmatch(arg):
            names.append(arg)
        else:
            return None
    return home, tmux_socket, names, as_json, no_foreign


def plain_ls(argv: Sequence[str]) -> int | None:
    """Run a plain ``ls`` without click and return its exit code; ``None`` when click must handle ``argv``.

    Errors of the direct look (a broken registry, an unknown name) are left to click, which
    prints them as every other command does.
    """
    parsed = parse_plain_ls(argv)
    if parsed is None:
        return None
    home, tmux_socket, names, as_json, no_foreign = parsed
    from pathlib import Path

    from supervisor.paths import Paths

    paths = Paths.from_env(Path(home) if home else None, tmux_socket)
    foreign = not no_foreign and not names
    listing = ask_agent(paths, names, foreign=foreign)
    if listing is None:
        import logging

        from supervisor.errors import SupervisorError

        # As click's group does: warnings of the direct look (a broken recipe file skipped) reach stderr.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            listing = collect_directly(paths, names, foreign=foreign)
        except (SupervisorError, OSError):
            return None
    try:
        show(listing, as_json=as_json)
    except BrokenPipeError:
        # `supervisor ls | head`: as click does, no traceback, and nothing more to flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0
