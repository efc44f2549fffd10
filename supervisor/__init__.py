"""bot-supervisor: many source-installed bots, each in its own tmux or screen session."""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
