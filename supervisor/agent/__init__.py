"""MQTT agent: Hummingbot-compatible RPC, heartbeats and our own namespace.

Only this package imports ``paho``; :mod:`supervisor.agent.protocol` holds the
wire format as pure functions and imports neither ``paho`` nor anything that
does I/O.
"""

from __future__ import annotations
