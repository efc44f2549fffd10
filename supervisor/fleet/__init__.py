"""The fleet as seen over the broker: ``view`` (hosts and instances, judged), ``client`` (requests), ``dashboard``.

Never imports the core or the agent: it runs on machines without bots.
"""

from __future__ import annotations
