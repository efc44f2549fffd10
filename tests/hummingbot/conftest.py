"""A real Hummingbot (v2.16.0, built from PyPI's sdist on Python 3.12) for ``make test-hummingbot``.

Everything slow is cached outside the clone, under ``$BOT_SUPERVISOR_CACHE``
(default ``${XDG_CACHE_HOME:-~/.cache}/bot-supervisor``): the sdist (``dl/``),
the git source tree assembled from it (``origin/``) and the shared venvs the
``hummingbot-venv`` recipe builds (``venvs/``). Missing Python 3.12 skips
locally and fails under ``CI=true``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.core import sharedenv
from supervisor.errors import InstallError
from tests.conftest import IN_CI
from tests.hummingbot.source_tree import assemble

SDIST_VERSION = "20260729"  # = Hummingbot v2.16.0


def cache_dir() -> Path:
    """Return where the real-bot tests keep what they download and build."""
    explicit = os.environ.get("BOT_SUPERVISOR_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bot-supervisor"


def progress(text: str) -> None:
    """Show a progress line even while pytest captures output."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"[hummingbot] {text}\n")
    stream.flush()


@pytest.fixture(scope="session")
def python312() -> Path:
    try:
        python, version = sharedenv.find_python(os.environ.get("HBOT_PYTHON", "python3.12"), want="3.12")
    except InstallError as e:
        if IN_CI:
            pytest.fail(f"the real-Hummingbot tests need Python 3.12 (Hummingbot ships cp312 only): {e}")
        pytest.skip(str(e))
    progress(f"Python {version} at {python}")
    return python


@pytest.fixture(scope="session")
def hbot_sdist(python312: Path) -> Path:
    """The sdist of hummingbot==20260729 from PyPI, downloaded once into the cache."""
    folder = cache_dir() / "dl"
    sdist = folder / f"hummingbot-{SDIST_VERSION}.tar.gz"
    if not sdist.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        progress(f"downloading hummingbot=={SDIST_VERSION} (sdist) from PyPI into {folder}")
        subprocess.run(
            [str(python312), "-m", "pip", "download", "--no-deps", "-d", str(folder), f"hummingbot=={SDIST_VERSION}"],
            check=True,
            timeout=600,
        )
    return sdist


@pytest.fixture(scope="session")
def hbot_origin(hbot_sdist: Path) -> Path:
    """A git repository (branch ``main``) assembled from the sdist plus the fixture's own launcher files."""
    progress("assembling the git source tree from the sdist")
    return assemble(hbot_sdist, cache_dir() / "origin" / f"hummingbot-{SDIST_VERSION}")
