"""What the agent's parts (the Hummingbot relay, our verbs) ask of the host they serve.

A :class:`typing.Protocol` only: the parts depend on it, :class:`~supervisor.agent.host.Agent`
provides it. Imports nothing of the agent's at run time.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from supervisor.agent.plugin import Held
    from supervisor.core.manager import InstanceStatus


class Host(t.Protocol):
    """The snapshot of this host's bots, and what is published about them."""

    def status_of(self, name: str) -> InstanceStatus | None:
        """Return the snapshot's status of ``name`` as it is (no look), or ``None``."""

    def known(self, name: str) -> bool:
        """Return whether ``name`` is one of this host's instances."""

    def look(self, name: str) -> InstanceStatus:
        """Derive ``name``'s status now and keep it in the snapshot."""

    def fresh(self, name: str) -> InstanceStatus | None:
        """Return the snapshot's status of ``name`` if it can answer a request as it is."""

    def current(self, name: str) -> InstanceStatus:
        """Return the status of ``name`` for a request: the snapshot's when fresh, else a new look."""

    def take(self, status: InstanceStatus | None, name: str) -> InstanceStatus:
        """Keep the status an action returned (or derive one) in the snapshot."""

    def look_all(self) -> dict[str, InstanceStatus]:
        """Derive every instance's status now."""

    def fresh_all(self) -> dict[str, InstanceStatus] | None:
        """Return the whole snapshot if every status in it is fresh."""

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
