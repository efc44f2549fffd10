"""The host agent: the MQTT wire plus the core, with crash supervision and the audit log.

:mod:`supervisor.agent.host` holds :class:`Agent`; the other modules read bot consoles
(answers, streams) and map external events to console lines for plugin-less bots.
"""

from __future__ import annotations
