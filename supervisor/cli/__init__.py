"""The ``supervisor`` command: parse -> Manager -> render (text or ``--json``); nothing else.

:func:`main` runs a plain ``supervisor ls`` without loading click (:mod:`.listing`); everything
else goes to the click group in :mod:`.app`, which ``supervisor.cli.cli`` names. Never imports
the sessions or ``_proc`` (the core does that).
"""

from __future__ import annotations

import os
import sys
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from supervisor.cli.app import cli as cli

__all__ = ["cli", "main"]


def main(argv: Sequence[str] | None = None) -> t.NoReturn:
    """Run the command line and exit with its code."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    args = list(sys.argv[1:] if argv is None else argv)
    if "ls" in args:
        from supervisor.cli.listing import plain_ls

        code = plain_ls(args)
        if code is not None:
            sys.exit(code)
    from supervisor.cli.app import cli

    cli.main(args=args, prog_name="supervisor")
    sys.exit(0)  # not reached: click's standalone mode exits


def __getattr__(name: str) -> t.Any:
    # ``from supervisor.cli import cli`` loads click only when the group is asked for.
    if name == "cli":
        from supervisor.cli.app import cli

        return cli
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
