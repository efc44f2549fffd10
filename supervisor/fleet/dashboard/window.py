"""What a page of the dashboard is sent of a large fleet: a window of rows, problems first, and a summary of all.

Pure functions over the dashboard's snapshot rows (plain dicts); the paged, filtered ``/api/instances``
query is parsed and answered here too. Imports only the shared state names.
"""

from __future__ import annotations

import re
import typing as t

from supervisor.fleet.view import GREY

if t.TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

WINDOW = 500
"""Rows a stream and a first view carry at most; a fleet this size or smaller is sent whole, as it always was."""
MAX_LIMIT = 1000
"""Rows one ``/api/instances`` page may hold."""
DEFAULT_LIMIT = 500
GROUPS = ("problems", "offline", "progress", "running", "stopped")
"""The page's state filter: what needs a look, grey (offline, stale, …), on the way, running, stopped."""
PROGRESS = frozenset({"starting", "waiting-login", "installing", "stopping"})
_NAME = re.compile(r"[A-Za-z0-9_-]{1,256}")
_DIGITS = re.compile(r"[0-9]{1,9}")
SUMMARY_LIST = 50
"""Recipes and problem hosts a summary names, at most (records come from anyone: the rest are counted)."""
SUMMARY_TEXT = 100
"""Characters of a recipe a summary names, at most."""
_QUERY_KEYS = ("q", "host", "recipe", "state", "offset", "limit")
MAX_TEXT = 200


def state_group(row: Mapping[str, t.Any]) -> str:
    """Return the state filter group of a row, as the page's state filter names it."""
    if row.get("health") == "bad":
        return "problems"
    state = row.get("state")
    if state in GREY:
        return "offline"
    if state in PROGRESS:
        return "progress"
    return "running" if state == "running" else "stopped"


def rank(row: Mapping[str, t.Any]) -> tuple[int, str]:
    """Return a row's place: a bad row first, then grey ones (health ``off``), then the rest, each by target."""
    health = row.get("health")
    return (0 if health == "bad" else 1 if health == "off" else 2, str(row.get("target", "")))


def summarize(rows: Sequence[Mapping[str, t.Any]], shown: int) -> dict[str, t.Any]:
    """Return the totals of all rows: per state group, the page's header counts, the recipes, the hosts with problems.

    Each host's number of bots is in the view's ``hosts``; here only the hosts with bad bots, and how many,
    so the summary stays small and changes only when a total does.
    """
    groups = dict.fromkeys(GROUPS, 0)
    counts = {"running": 0, "bad": 0, "progress": 0, "stopped": 0, "off": 0}
    problems: dict[str, int] = {}
    recipes: set[str] = set()
    for row in rows:
        groups[state_group(row)] += 1
        health, state = row.get("health"), row.get("state")
        # The page's header counts, as it counts a fleet it holds whole.
        if health == "bad":
            counts["bad"] += 1
            host = str(row.get("host"))
            problems[host] = problems.get(host, 0) + 1
        elif health == "off":
            counts["off"] += 1
        elif state == "running":
            counts["running"] += 1
        elif state in PROGRESS:
            counts["progress"] += 1
        else:
            counts["stopped"] += 1
        recipe = row.get("recipe")
        if isinstance(recipe, str) and 0 < len(recipe) <= SUMMARY_TEXT:
            recipes.add(recipe)
    return {
        "total": len(rows),
        "shown": shown,
        "groups": groups,
        "counts": counts,
        # The hosts with the most red bots, and the first recipes by name: bounded, whatever strangers publish.
        "problem_hosts": dict(sorted(sorted(problems.items(), key=lambda kv: (-kv[1], kv[0]))[:SUMMARY_LIST])),
        "problem_hosts_more": max(0, len(problems) - SUMMARY_LIST),
        "recipes": sorted(recipes)[:SUMMARY_LIST],
        "recipes_more": max(0, len(recipes) - SUMMARY_LIST),
    }


def windowed(snapshot: Mapping[str, t.Any], size: int = WINDOW) -> dict[str, t.Any]:
    """Return ``snapshot`` as a stream carries it: whole up to ``size`` rows, else its first ``size`` and a summary."""
    rows = snapshot["instances"]
    if len(rows) <= size:
        return dict(snapshot)
    shown = sorted(rows, key=rank)[:size]
    return {**snapshot, "instances": shown, "summary": summarize(rows, len(shown))}


class Query(t.NamedTuple):
    """One ``/api/instances`` request: filters (empty: any), then the page."""

    q: str = ""
    host: str = ""
    recipe: str = ""
    state: str = ""
    offset: int = 0
    limit: int = DEFAULT_LIMIT


def parse_query(params: Mapping[str, list[str]]) -> Query:
    """Return the query of ``/api/instances`` from its parsed query string.

    Raises
    ------
    ValueError
        With a one-line message for the page, for an unknown, repeated or bad parameter.
    """
    unknown = sorted(set(params) - set(_QUERY_KEYS))
    if unknown:
        msg = f"unknown parameter '{unknown[0][:40]}'. Known parameters: {', '.join(_QUERY_KEYS)}."
        raise ValueError(msg)
    values: dict[str, str] = {}
    for key, given in params.items():
        if len(given) != 1:
            msg = f"parameter '{key}' given {len(given)} times; give it once."
            raise ValueError(msg)
        values[key] = given[0].strip()
    for key in ("q", "recipe"):
        if len(values.get(key, "")) > MAX_TEXT:
            msg = f"parameter '{key}' is longer than {MAX_TEXT} characters."
            raise ValueError(msg)
    host = values.get("host", "")
    if host and not _NAME.fullmatch(host):
        msg = "parameter 'host' must be a host id: letters, digits, '-' and '_'."
        raise ValueError(msg)
    state = values.get("state", "")
    if state and state not in GROUPS:
        msg = f"parameter 'state' must be one of {', '.join(GROUPS)}."
        raise ValueError(msg)
    offset = _whole(values, "offset", 0, None)
    limit = _whole(values, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    if limit < 1:
        msg = f"parameter 'limit' must be 1 to {MAX_LIMIT}."
        raise ValueError(msg)
    return Query(values.get("q", ""), host, values.get("recipe", ""), state, offset, limit)


def _whole(values: Mapping[str, str], key: str, default: int, most: int | None) -> int:
    text = values.get(key, "")
    if not text:
        return default
    if not _DIGITS.fullmatch(text):
        msg = f"parameter '{key}' must be a whole number" + (f" from 0 to {most}." if most else " (0 or more).")
        raise ValueError(msg)
    number = int(text)
    if most is not None and number > most:
        msg = f"parameter '{key}' must be at most {most}."
        raise ValueError(msg)
    return number


def select(rows: Iterable[Mapping[str, t.Any]], query: Query) -> tuple[list[Mapping[str, t.Any]], int]:
    """Return the page of rows ``query`` asks for (problems first, then by target) and how many rows match in all."""
    needle = query.q.lower()
    matching = [
        row
        for row in rows
        if (not needle or needle in str(row.get("instance", "")).lower() or needle in str(row.get("host", "")).lower())
        and (not query.host or row.get("host") == query.host)
        and (not query.recipe or row.get("recipe") == query.recipe)
        and (not query.state or state_group(row) == query.state)
    ]
    matching.sort(key=rank)
    return matching[query.offset : query.offset + query.limit], len(matching)
