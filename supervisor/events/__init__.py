"""External events: webhooks (TradingView alerts and the like) into bots through the broker.

``config`` (routes in ``$SUPERVISOR_HOME/events.toml``), ``journal`` (the SQLite
queue nothing is lost from) and ``receiver`` (the HTTP server and the publisher,
through :mod:`supervisor.mqtt.connection`). Imports no manager: like the fleet,
the receiver knows bots only through the broker.
"""

from __future__ import annotations

from supervisor.errors import SupervisorError


class EventsError(SupervisorError):
    """The webhook receiver cannot start or a journal cannot be read: bad config, listen address, file."""

    code = "events_error"
