"""A deterministic big repository for the ``new`` figure, built with one ``git fast-import``.

Cached under ``bench/_peers/repos``; the same arguments always give the same commits.
"""

from __future__ import annotations

import base64
import random
import shutil
import subprocess
import typing as t
from pathlib import Path

from common import BOT, PEERS_DIR, log

FILES = 1000
DIRS = 20


def _stream(commits: int, blob_bytes: int, seed: int) -> t.Iterator[bytes]:
    rng = random.Random(seed)
    when = 1_600_000_000
    bot = BOT.read_bytes()
    for i in range(commits):
        slot = i % FILES
        path = f"data/d{slot % DIRS:02d}/f{slot:04d}.txt"
        # base64 of random bytes: text files that neither compress much nor delta against each other.
        raw = base64.encodebytes(rng.randbytes(blob_bytes))
        message = f"change {i}: {path}\n".encode()
        head = [
            b"commit refs/heads/main\n",
            f"committer Bench <bench@localhost> {when + i * 60} +0000\n".encode(),
            f"data {len(message)}\n".encode(),
            message,
        ]
        if i == 0:
            head += [f"M 100644 inline bot.py\ndata {len(bot)}\n".encode(), bot, b"\n"]
        head += [f"M 100644 inline {path}\ndata {len(raw)}\n".encode(), raw, b"\n"]
        yield b"".join(head)


def big_repo(commits: int = 5000, blob_bytes: int = 10_000, seed: int = 5) -> Path:
    """Return the path of a bare repository with ``commits`` commits (built once, then reused)."""
    repo = PEERS_DIR / "repos" / f"big-{commits}-{blob_bytes}-{seed}.git"
    if (repo / "refs" / "heads" / "main").exists() or (repo / "packed-refs").exists():
        return repo
    log(f"generating {repo.name} with git fast-import ({commits} commits)")
    partial = repo.with_name(repo.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(partial)], check=True)
    proc = subprocess.Popen(["git", "-C", str(partial), "fast-import", "--quiet"], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    for chunk in _stream(commits, blob_bytes, seed):
        proc.stdin.write(chunk)
    proc.stdin.close()
    if proc.wait(timeout=600) != 0:
        msg = "git fast-import failed"
        raise RuntimeError(msg)
    # One pack, as a served repository would have.
    subprocess.run(["git", "-C", str(partial), "repack", "-a", "-d", "-q"], check=True)
    partial.rename(repo)
    return repo


def repo_facts(repo: Path) -> dict[str, t.Any]:
    """Return commit count and packed size of ``repo``."""
    count = subprocess.run(
        ["git", "-C", str(repo), "rev-list", "--count", "main"], capture_output=True, text=True, check=True
    ).stdout.strip()
    size = sum(p.stat().st_size for p in (repo / "objects").rglob("*") if p.is_file())
    return {"commits": int(count), "size_mib": round(size / 2**20, 1), "path": str(repo)}
