"""The core: instances, recipes, checkouts, sessions, status and crash policy, behind :class:`Manager`."""

from __future__ import annotations
