"""Assemble a git source tree of Hummingbot from its PyPI sdist (test fixture, no Hummingbot code of ours).

The sdist holds ``hummingbot/`` (with the ``.pyx`` sources), ``setup.py`` and
``bin/hummingbot_quickstart.py``, but not the small launcher modules the
quickstart imports, nor a ``.gitignore`` or a strategy script. What this module
writes in their place is its own code: just enough to run the quickstart.

Run as a script: ``python -m tests.hummingbot.source_tree SDIST DEST``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: Bumped whenever the files below change, so a cached tree is rebuilt.
TREE_VERSION = "1"

GITIGNORE = """\
# build products of `setup.py build_ext --inplace`
build/
*.so
*.cpp
!hummingbot/core/cpp/*.cpp
__pycache__/
*.egg-info/
# what the bot writes at run time
conf/*
!conf/.gitkeep
logs/
data/
# the environment link made by the hummingbot-venv recipe
/.venv
"""

PATH_UTIL = '''\
"""Put the source tree's root first on sys.path (written by bot-supervisor's test fixture)."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
'''

LAUNCHER = '''\
"""What the quickstart imports from bin/hummingbot.py (written by bot-supervisor's test fixture)."""

import asyncio
import socket

from hummingbot.core.event.event_listener import EventListener


def detect_available_port(port: int) -> int:
    """Return the first free local TCP port from ``port`` on."""
    while True:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                port += 1
                continue
            return port


class UIStartListener(EventListener):
    """When the console is up, start the V2 config given on the command line, if any."""

    def __init__(self, hb, is_script=False, script_config=None, is_quickstart=False):
        super().__init__()
        self._hb = hb
        self._script_config = script_config if is_script else None
        self._is_quickstart = is_quickstart

    def __call__(self, _):
        if self._script_config:
            asyncio.get_event_loop().call_soon(
                lambda: self._hb.start(v2_conf=self._script_config, is_quickstart=self._is_quickstart)
            )
'''

PROBE_SCRIPT = '''\
"""A V2 script that trades nothing and logs one line per tick (bot-supervisor's test fixture)."""

import os

from hummingbot.strategy.strategy_v2_base import StrategyV2Base, StrategyV2ConfigBase


class SupervisorProbeConfig(StrategyV2ConfigBase):
    script_file_name: str = os.path.basename(__file__)
    label: str = "probe"


class SupervisorProbe(StrategyV2Base):
    def __init__(self, connectors, config: SupervisorProbeConfig):
        super().__init__(connectors, config)
        self.probe_config = config
        self.ticks = 0

    def on_tick(self):
        self.ticks += 1
        if self.ticks == 1 or self.ticks % 10 == 0:
            self.logger().info(f"supervisor-probe {self.probe_config.label} tick {self.ticks}")

    async def on_stop(self):
        self.logger().info(f"supervisor-probe {self.probe_config.label} stopping")
        await super().on_stop()

    def format_status(self) -> str:
        return f"supervisor-probe {self.probe_config.label}: {self.ticks} ticks"
'''

OWN_FILES = {
    ".gitignore": GITIGNORE,
    "bin/path_util.py": PATH_UTIL,
    "bin/hummingbot.py": LAUNCHER,
    "scripts/supervisor_probe.py": PROBE_SCRIPT,
    "conf/.gitkeep": "",
}


def _git(args: list[str], cwd: Path) -> None:
    env = {
        "GIT_AUTHOR_NAME": "fixture",
        "GIT_AUTHOR_EMAIL": "fixture@example.invalid",
        "GIT_COMMITTER_NAME": "fixture",
        "GIT_COMMITTER_EMAIL": "fixture@example.invalid",
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "HOME": str(cwd),
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def _extract(archive: tarfile.TarFile, dest: Path) -> None:
    """Extract an sdist into ``dest`` with tarfile's ``data`` filter, or, on a Python without it, check it by hand.

    The ``filter`` argument came with Python 3.11.4 (and 3.12); Debian's 3.11.2 lacks it. Without it, a
    member that is absolute, climbs out with ``..``, or is a link or a device is refused.
    """
    if hasattr(tarfile, "data_filter"):
        archive.extractall(dest, filter="data")
        return
    for member in archive.getmembers():
        name = Path(member.name)
        if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
            msg = f"{archive.name!r}: refusing member {member.name!r} (absolute, outside the folder, or not a file)"
            raise ValueError(msg)
    archive.extractall(dest)  # every member was checked above


def assemble(sdist: Path, dest: Path) -> Path:
    """Make ``dest`` a git repository (branch ``main``) holding the sdist's tree plus our files.

    Generated ``.cpp`` files next to ``.pyx`` sources are left out, as in the
    real repository; ``hummingbot/core/cpp`` (hand-written C++) stays. Built in
    a temporary folder and renamed into place, so a crash leaves no half tree.
    """
    stamp = dest / ".git" / "supervisor-fixture"
    if stamp.is_file() and stamp.read_text().strip() == f"{sdist.name} {TREE_VERSION}":
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(sdist) as archive:
            _extract(archive, work)
        (top,) = [p for p in work.iterdir() if p.is_dir()]
        for pyx in top.rglob("*.pyx"):
            pyx.with_suffix(".cpp").unlink(missing_ok=True)
        shutil.rmtree(top / "hummingbot.egg-info", ignore_errors=True)
        (top / "PKG-INFO").unlink(missing_ok=True)
        for rel, text in OWN_FILES.items():
            target = top / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        for script in (top / "bin").glob("*.py"):
            script.chmod(0o755)
        _git(["init", "-q", "-b", "main"], top)
        _git(["add", "-A"], top)
        _git(["commit", "-q", "-m", f"{sdist.name} from PyPI, with the test fixture's launcher files"], top)
        (top / ".git" / "supervisor-fixture").write_text(f"{sdist.name} {TREE_VERSION}\n")
        if dest.exists():
            shutil.rmtree(dest)
        top.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


if __name__ == "__main__":
    print(assemble(Path(sys.argv[1]), Path(sys.argv[2])))
