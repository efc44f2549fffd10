"""The layering contracts in pyproject.toml catch what they promise to catch.

``make lint`` runs ``lint-imports`` on the real tree. Here each contract is shown to break: the
package is copied, one import that the layout forbids is added, and ``lint-imports`` must fail
naming that contract. A contract that could never fail would keep nothing.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

if t.TYPE_CHECKING:
    from collections.abc import Sequence

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

LAYERS = "Layers: cli > agent | events > fleet | core > mqtt"
NO_CORE = "The MQTT wire and the fleet never import the core"
CLI = "The CLI reaches sessions and processes only through the core"
SHARED = "Shared helpers import nothing of the layers above them"
CYCLES = "No import cycles between sibling modules of any package"
AGENT = "Agent parts: host > relay | own > beacon | plugin | wire | lane > view"


@dataclasses.dataclass(frozen=True)
class Breach:
    test_id: str
    module: str
    line: str
    broken: Sequence[str]


BREACHES = [
    # The core imports the wire (recipe.py: Hummingbot's names): an import back up is also a cycle of siblings.
    Breach("wire-imports-core", "mqtt/protocol.py", "import supervisor.core.registry", (LAYERS, NO_CORE, CYCLES)),
    Breach("fleet-imports-core", "fleet/client.py", "import supervisor.core.manager", (LAYERS, NO_CORE)),
    Breach("events-import-core", "events/receiver.py", "import supervisor.core.manager", (NO_CORE,)),
    # The agent imports the core and the CLI the agent: an import back down is also a cycle of siblings.
    # ...and the agent's front doors would reach its host through the core.
    Breach("core-imports-agent", "core/registry.py", "import supervisor.agent.host", (LAYERS, AGENT, CYCLES)),
    Breach("agent-imports-cli", "agent/host.py", "import supervisor.cli", (LAYERS, CYCLES)),
    Breach("cli-imports-sessions", "cli/__init__.py", "import supervisor.core.sessions.tmux", (CLI,)),
    Breach("cli-imports-proc", "cli/__init__.py", "import supervisor._proc", (CLI,)),
    # Everything imports errors.py: through it, the wire and the fleet would reach the core too.
    Breach("helper-imports-core", "errors.py", "import supervisor.core.registry", (LAYERS, NO_CORE, SHARED, CYCLES)),
    Breach("sibling-cycle", "core/registry.py", "import supervisor.core.manager", (CYCLES,)),
    # The front doors never reach back into the host, nor the parts below them into the front doors.
    Breach("relay-imports-host", "agent/relay.py", "import supervisor.agent.host", (AGENT, CYCLES)),
    Breach("plugin-imports-relay", "agent/plugin.py", "import supervisor.agent.relay", (AGENT, CYCLES)),
]


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(where / "pyproject.toml")],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "supervisor", tmp_path / "supervisor", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_copied_tree_keeps_every_contract(tree: Path) -> None:
    done = lint_imports(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" KEPT") == 6


@pytest.mark.parametrize("breach", BREACHES, ids=[b.test_id for b in BREACHES])
def test_a_forbidden_import_breaks_its_contract(tree: Path, breach: Breach) -> None:
    module = tree / "supervisor" / breach.module
    module.write_text(module.read_text() + f"\n{breach.line}  # noqa\n")
    done = lint_imports(tree)
    assert done.returncode == 1, done.stdout + done.stderr
    broken = [line for line in done.stdout.splitlines() if line.endswith(" BROKEN")]
    for name in breach.broken:
        assert any(name in line for line in broken), (name, broken)
    assert len(broken) == len(breach.broken), broken
