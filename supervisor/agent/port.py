"""What the agent's front doors (the Hummingbot relay, our verbs) ask of the host besides its snapshot.

A :class:`typing.Protocol` only: the parts depend on it, :class:`~supervisor.agent.host.Agent`
provides it. Imports nothing of the agent's at run time.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from supervisor.agent.plugin import Held
    from supervisor.core.manager import InstanceStatus


class Host(t.Protocol):
    """What is published about this host's bots, and requests held for plugin bots (the snapshot is the view's)."""

    def announce(self, name: str, status: InstanceStatus, *, relaunched: bool = False) -> None:
        """Say ``online`` (and beat) for a bot whose process was just (re)launched."""

    def gone(self, name: str, status: InstanceStatus) -> None:
        """Say ``offline`` for a bot whose process is gone."""

    def notify(self, name: str, message: str) -> None:
        """Publish an agent event about ``name``."""

    def publish_states(self) -> None:
        """Publish the state records that changed, now."""

    def hold(self, held: Held) -> None:
        """Keep a request for a plugin bot until its bridge is up."""
