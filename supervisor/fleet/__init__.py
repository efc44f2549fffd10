"""The fleet as seen over the broker: hosts and instances, the client that drives them, the dashboard."""

from __future__ import annotations
