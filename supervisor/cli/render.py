"""Text output of the CLI: tables, state colours, sizes and durations, JSON.

Imports no click (and nothing heavy): the fast ``ls`` path renders with it too. Output goes to
the current ``sys.stdout``/``sys.stderr``, with colour only on a terminal (as ``click.echo``).
"""

from __future__ import annotations

import json
import re
import sys
import typing as t

if t.TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

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
_ANSI_FG = {"red": 31, "green": 32, "yellow": 33, "magenta": 35, "cyan": 36}
_ANSI_RE = re.compile(r"\033\[[;?0-9]*[a-zA-Z]")

ALIVE_STATES = ("running", "starting", "waiting-login")
"""States with a live process (its pid, CPU and memory are shown)."""


def _is_tty(stream: t.TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def echo(text: str = "", *, err: bool = False, nl: bool = True) -> None:
    """Write one line to stdout (or stderr), without escape sequences unless it is a terminal."""
    stream = sys.stderr if err else sys.stdout
    if not _is_tty(stream):
        text = _ANSI_RE.sub("", text)
    stream.write(text + "\n" if nl else text)
    stream.flush()


def style(text: str, colour: str | None) -> str:
    """Return ``text`` in ``colour`` (``echo`` drops the colour when not on a terminal)."""
    return f"\033[{_ANSI_FG[colour]}m{text}\033[0m" if colour in _ANSI_FG else text


def print_json(data: t.Any) -> None:
    """Print ``data`` as indented JSON (anything else as its ``str``)."""
    echo(json.dumps(data, indent=2, default=str))


def human_bytes(value: int | None) -> str:
    """Return ``1.5M`` style sizes; ``-`` for none."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit in ("B", "K") else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}G"


def human_duration(seconds: float | None) -> str:
    """Return ``2m05s`` style durations; ``-`` for none."""
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


def clip(text: str, width: int) -> str:
    """Return ``text`` cut to ``width`` characters with an ellipsis."""
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def short_source(source: str) -> str:
    """Return a git URL without its scheme and ``.git``."""
    for prefix in ("https://", "http://", "ssh://", "git@"):
        source = source.removeprefix(prefix)
    return source.removesuffix(".git")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], colour_col: int | None = None) -> None:
    """Print left-aligned columns; the cells of ``colour_col`` are coloured by state."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip()]
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=False)):
            text = cell.ljust(width)
            if i == colour_col and STATE_COLOURS.get(cell):
                text = style(text, STATE_COLOURS[cell])
            cells.append(text)
        lines.append("  ".join(cells).rstrip())
    echo("\n".join(lines))


def strategy_text(strategy: Mapping[str, str] | None) -> str:
    """Return a recorded strategy as ``conf=probe.yml`` (``script=… conf=…`` with both), or ``-``."""
    if not strategy:
        return "-"
    return " ".join(f"{key}={value}" for key, value in sorted(strategy.items(), reverse=True) if value) or "-"


def print_statuses(records: Sequence[Mapping[str, t.Any]]) -> None:
    """Print ``ls``'s instance table from ``InstanceStatus.to_dict()`` records."""
    if not records:
        echo("No instances. Create one with: supervisor new NAME -r RECIPE")
        return
    rows = [
        [
            r["name"],
            r["recipe"],
            r["backend"],
            str(r["state"]),
            str(r["desired"]),
            str(r["pid"] or "-"),
            f"{r['cpu_percent']:.1f}" if r["cpu_percent"] is not None else "-",
            human_bytes(r["rss"]),
            human_duration(r["uptime"]),
            str(r["restarts"]),
            (r["commit"] or "-")[:8],
        ]
        for r in records
    ]
    headers = ["NAME", "RECIPE", "BACKEND", "STATE", "WANT", "PID", "CPU%", "RSS", "UPTIME", "RESTARTS", "COMMIT"]
    if any("disk" in r for r in records):  # ls --disk
        headers.append("DISK")
        for row, r in zip(rows, records, strict=True):
            row.append(human_bytes(r["disk"]["own"]) if r.get("disk") else "-")
    if any(r.get("strategy") for r in records):  # only then: the usual table fits 100 columns
        headers.append("STRATEGY")
        for row, r in zip(rows, records, strict=True):
            row.append(strategy_text(r.get("strategy")))
    table(
        headers,
        rows,
        colour_col=3,
    )


def print_foreign(records: Sequence[Mapping[str, t.Any]]) -> None:
    """Print ``ls``'s table of bot sessions without a record (``ForeignSession.to_dict()`` records)."""
    if not records:
        return
    echo("\nBot sessions not managed by supervisor (take one over with 'supervisor adopt SESSION --name NAME'):")
    table(
        ["SESSION", "STATE", "BACKEND", "SERVER", "PID", "RECIPE", "COMMAND"],
        [
            [
                f["session"],
                str(f["state"]),
                f["backend"],
                f["server"],
                str(f["pid"] or "-"),
                f["recipe"] or "?",
                f["command"][:40],
            ]
            for f in records
        ],
    )
    if any(f["state"] == "orphan" for f in records):
        echo("orphan: a session of ours whose record is gone (adopt it with -r RECIPE if none is shown)")
