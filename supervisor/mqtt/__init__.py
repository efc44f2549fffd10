"""The MQTT wire: Hummingbot's protocol, the connection, broker settings, signing, the embedded broker.

Never imports the core: the fleet client and the dashboard use it on hosts without bots.
"""

from __future__ import annotations
