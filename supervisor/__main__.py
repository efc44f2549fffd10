"""``python -m supervisor`` runs the command line."""

from __future__ import annotations

from supervisor.cli import main

if __name__ == "__main__":
    main()
