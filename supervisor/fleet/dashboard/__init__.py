"""The web dashboard: one live page for the whole fleet, served with the standard library only.

``server`` (HTTP + Server-Sent Events on top of one long-lived
:class:`~supervisor.fleet.client.FleetClient` and its :class:`~supervisor.fleet.view.FleetView`),
``store`` (SQLite history), ``alerts`` (webhook) and ``auth`` (password hashes, sessions).
Imports no manager: like the fleet, it knows hosts only through the broker.
"""

from __future__ import annotations

from supervisor.errors import SupervisorError


class DashboardError(SupervisorError):
    """The dashboard cannot start: bad listen address, no password for a public address, bad config."""

    code = "dashboard_error"
