from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.core.registry import SCHEMA_VERSION, Instance, Registry
from supervisor.errors import InstanceExists, InstanceNotFound, SupervisorError


def record(name: str) -> Instance:
    return Instance(name=name, recipe="r", backend="tmux", session=f"sup-{name}", checkout="/x", repo="/r", ref="main")


def test_add_get_update_remove(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.json")
    reg.add(record("a"))
    assert reg.get("a").session == "sup-a"
    with pytest.raises(InstanceExists, match="instance 'a' already exists"):
        reg.add(record("a"))
    updated = reg.update("a", desired="running", restarts=2)
    assert (updated.desired, updated.restarts) == ("running", 2)
    assert reg.get("a").restarts == 2
    reg.remove("a")
    with pytest.raises(InstanceNotFound, match=r"instance 'a' not found\. Run 'supervisor ls'"):
        reg.get("a")
    data = json.loads((tmp_path / "registry.json").read_text())
    assert data == {"version": SCHEMA_VERSION, "instances": {}}


def test_failed_transaction_writes_nothing(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.json")
    reg.add(record("a"))
    before = (tmp_path / "registry.json").read_bytes()
    with pytest.raises(RuntimeError), reg.transaction() as instances:
        instances.pop("a")
        raise RuntimeError
    assert (tmp_path / "registry.json").read_bytes() == before
    assert not list(tmp_path.glob(".registry-*"))


def test_unknown_version_and_corrupt_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"version": 99, "instances": {}}))
    with pytest.raises(SupervisorError, match="schema version 99 is not supported"):
        Registry(path).all()
    path.write_text("{not json")
    with pytest.raises(SupervisorError, match="not valid JSON"):
        Registry(path).all()


def test_records_from_newer_versions_keep_known_fields(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    rec = record("a").to_dict() | {"field_from_the_future": 1}
    path.write_text(json.dumps({"version": SCHEMA_VERSION, "instances": {"a": rec}}))
    assert Registry(path).get("a").name == "a"


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    code = (
        "import sys; from pathlib import Path; from supervisor.core.registry import Registry, Instance\n"
        "reg = Registry(Path(sys.argv[1]))\n"
        "for i in range(10):\n"
        "    n = f'{sys.argv[2]}-{i}'\n"
        "    reg.add(Instance(name=n, recipe='r', backend='tmux', session=n, checkout='/', repo='/', ref='m'))\n"
        "    reg.update(n, restarts=i)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), f"p{j}"]) for j in range(8)]
    assert [p.wait(60) for p in procs] == [0] * 8
    instances = Registry(path).all()
    assert len(instances) == 80
    assert instances["p3-9"].restarts == 9
