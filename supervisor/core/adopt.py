"""Sessions without a record: someone else's bots (foreign) and our own lost ones (orphans), and adopting them."""

from __future__ import annotations

import dataclasses
import os
import re
import time
import typing as t
from pathlib import Path

from supervisor.core.parts import session_name
from supervisor.core.recipe import check_name, find_recipe, list_recipes
from supervisor.core.registry import DESIRED_RUNNING, INSTALLED, Instance
from supervisor.core.sessions import KNOWN_BACKENDS
from supervisor.errors import SessionError
from supervisor.paths import SESSION_PREFIX

if t.TYPE_CHECKING:
    from supervisor.core.parts import Parts
    from supervisor.core.sessions import SessionBackend


@dataclasses.dataclass(frozen=True)
class ForeignSession:
    """A session without a record: someone else's that runs something that looks like a bot, or an orphan.

    An orphan (``state`` ``"orphan"``) is a ``sup-`` session on our own server
    whose record is gone (a deleted or restored registry); it is listed whatever
    it runs, so it can be adopted again.
    """

    session: str
    backend: str
    server: str
    pid: int | None
    command: str
    cwd: str | None
    recipe: str | None
    state: str = "foreign"

    def to_dict(self) -> dict[str, t.Any]:
        """Return the record as a JSON-able dict."""
        return dataclasses.asdict(self)


def foreign_sessions(parts: Parts) -> list[ForeignSession]:
    """Return sessions without a record: others' that run something a recipe recognises, and our orphans."""
    records = parts.registry.all()
    ours = {(r.backend, r.session) for r in records.values()}
    # A recorded instance's own session name is never an orphan (it may be starting right now).
    named = {session_name(name) for name in records}
    recipes = [r for r in list_recipes(parts.paths.user_recipes) if r.detect]
    found: list[ForeignSession] = []
    servers: list[tuple[str, str, SessionBackend]] = [("tmux", parts.paths.tmux_socket, parts.backend("tmux"))]
    if parts.paths.tmux_socket != "default":
        from supervisor.core.sessions.tmux import TmuxBackend

        servers.append(("tmux", "default", TmuxBackend(socket_name="default")))
    screendir = os.environ.get("SCREENDIR", "default")
    servers.append(("screen", screendir, parts.backend("screen")))
    for backend_name, server, backend in servers:
        if not backend.is_available():
            continue
        listed = backend.list_sessions()
        if not listed:
            continue
        sampler = parts.sampler
        table = sampler.table(roots=[i.pid for i in listed.values() if i.pid])
        ours_here = parts.paths.tmux_socket if backend_name == "tmux" else screendir
        for session, info in listed.items():
            if server == ours_here and ((backend_name, session) in ours or session in named):
                continue
            orphan = server == ours_here and session.startswith(SESSION_PREFIX)
            sample = sampler.sample(info.pid, table)
            command = " ".join(sample.cmdline or ())
            match = next((r.name for r in recipes if r.detect and re.search(r.detect, command)), None)
            if match is None and not orphan:
                continue
            state = "orphan" if orphan else "foreign"
            found.append(ForeignSession(session, backend_name, server, sample.pid, command, sample.cwd, match, state))
    return found


def orphan_sessions(parts: Parts) -> list[str]:
    """Return our ``sup-`` sessions (tmux and screen) that no record names: one listing per backend."""
    records = parts.registry.all()
    ours = {(r.backend, r.session) for r in records.values()}
    named = {session_name(name) for name in records}
    listing = parts.sessions(KNOWN_BACKENDS)
    return sorted(
        session
        for backend, sessions in listing.items()
        for session in sessions
        if session.startswith(SESSION_PREFIX) and (backend, session) not in ours and session not in named
    )


def adopt(parts: Parts, session: str, name: str, recipe_ref: str | None = None) -> Instance:
    """Record a bot running in someone else's session as an instance, without touching it; return the record.

    An orphan (a ``sup-`` session of ours whose record is gone) is recorded
    as an ordinary instance again, since it runs our own wrapper.

    Raises
    ------
    SessionError
        No such session among :func:`foreign_sessions`, or it is on a
        tmux server other than ours (it cannot be addressed later).
    """
    check_name(name)
    candidates = [f for f in foreign_sessions(parts) if f.session == session]
    if not candidates:
        msg = f"session '{session}' not found among sessions that look like bots. Run 'supervisor ls' to see them."
        raise SessionError(msg)
    found = candidates[0]
    if found.backend == "tmux" and found.server != parts.paths.tmux_socket:
        msg = (
            f"session '{session}' is on the tmux server '{found.server}', not ours ('{parts.paths.tmux_socket}'). "
            f"Set SUPERVISOR_TMUX_SOCKET={found.server} to manage that server's bots."
        )
        raise SessionError(msg)
    if not (recipe_ref or found.recipe):
        msg = f"session '{session}': no recipe recognises what it runs. Name one with -r RECIPE."
        raise SessionError(msg)
    recipe = find_recipe(recipe_ref or found.recipe or "", parts.paths.user_recipes)
    from supervisor.core import git

    checkout = Path(found.cwd or ".")
    record = Instance(
        name=name,
        recipe=recipe.name,
        recipe_path=None if recipe.builtin else str(recipe.path),
        backend=found.backend,
        session=session,
        checkout=str(checkout),
        repo=str(checkout),
        ref=git.describe_ref(checkout) or "",
        lifecycle=INSTALLED,
        desired=DESIRED_RUNNING,
        # An orphan runs our own wrapper in our own session: it becomes an ordinary instance again.
        adopted=found.state != "orphan",
        commit=git.current_commit(checkout),
        started_at=time.time(),
    )
    parts.registry.add(record)
    return record
