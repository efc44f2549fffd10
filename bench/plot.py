"""Draw docs/benchmarks.png from bench results: one subplot per scaling figure, ours against peers.

Runs under bench/_peers/plot-venv (matplotlib is no dependency of the project):
``plot-venv/bin/python bench/plot.py results.json out.png``.
"""

from __future__ import annotations

import json
import sys
import typing as t
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

STYLE = {
    "ours": {"color": "tab:blue", "marker": "o", "label": "bot-supervisor"},
    "ours --no-foreign": {"color": "tab:cyan", "marker": "o", "linestyle": ":", "label": "bot-supervisor --no-foreign"},
    "ours (agent)": {"color": "tab:purple", "marker": "D", "label": "bot-supervisor, agent running"},
    "ours --wait": {"color": "tab:cyan", "marker": "o", "linestyle": ":", "label": "bot-supervisor --wait"},
    "supervisorctl": {"color": "tab:orange", "marker": "s", "label": "supervisord 4.x"},
    "supervisord": {"color": "tab:orange", "marker": "s", "label": "supervisord 4.x"},
    "pm2": {"color": "tab:green", "marker": "^", "label": "pm2"},
    "tmux": {"color": "tab:gray", "marker": "x", "label": "raw tmux"},
}


def _sizes(block: dict[str, t.Any]) -> list[int]:
    return sorted(int(k) for k in block if str(k).isdigit())


def _series(
    block: dict[str, t.Any], pick: t.Callable[[dict[str, t.Any]], float | None]
) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for n in _sizes(block):
        value = pick(block[str(n)])
        if value is not None:
            xs.append(n)
            ys.append(value)
    return xs, ys


def _median(stats: dict[str, t.Any] | None, scale: float = 1.0) -> float | None:
    return stats["median"] * scale if stats and stats.get("n") else None


def _reactions(react: dict[str, t.Any]) -> list[tuple[str, dict[str, t.Any], float]]:
    """Return (label, stats, target seconds) of each reaction figure that has samples."""
    backoff = float(react.get("first_backoff_s", 1.0))
    rows = [
        ("kill -9 → crashed", react.get("kill", {}).get("crashed"), 1.0),
        ("kill -9 → alive again", react.get("kill", {}).get("restarted"), 1.0 + backoff),
        ("stop → record", react.get("stop", {}).get("record"), 1.0),
        ("start → record", react.get("start", {}).get("record"), 1.0),
    ]
    return [(label, value, limit) for label, value, limit in rows if value and value.get("n")]


def main() -> int:
    """Read the results file and write the PNG."""
    results = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    figs = results.get("figures", {})
    panels: list[tuple[str, str, dict[str, t.Callable[[dict[str, t.Any]], float | None]], dict[str, t.Any]]] = []
    if isinstance(figs.get("ls"), dict) and _sizes(figs["ls"]):
        pick = {
            k: (lambda b, k=k: _median(b.get(k), 1000))
            for k in ("ours", "ours --no-foreign", "ours (agent)", "supervisorctl", "pm2", "tmux")
        }
        panels.append(("List N running bots", "wall time (ms)", pick, figs["ls"]))
    if isinstance(figs.get("start"), dict) and _sizes(figs["start"]):
        pick = {
            k: (lambda b, k=k: _median(b.get(k, {}).get("all_alive")))
            for k in ("ours", "ours --wait", "supervisord", "pm2")
        }
        panels.append(("Start N stopped bots (until all alive)", "wall time (s)", pick, figs["start"]))
    if isinstance(figs.get("agent"), dict) and _sizes(figs["agent"]):
        rss = {k: (lambda b, k=k: b.get(k, {}).get("rss_max_mib")) for k in ("ours", "supervisord", "pm2")}
        cpu = {k: (lambda b, k=k: b.get(k, {}).get("cpu_percent")) for k in ("ours", "supervisord", "pm2")}
        panels.append(("Supervising process RSS", "RSS max (MiB)", rss, figs["agent"]))
        panels.append(("Supervising process CPU", "CPU (% of one core)", cpu, figs["agent"]))
    new = figs.get("new") or {}
    react = _reactions(figs.get("react") or {})
    if not panels and not new.get("later_samples") and not react:
        print("nothing to plot", file=sys.stderr)
        return 1
    count = len(panels) + (1 if new.get("later_samples") else 0) + (1 if react else 0)
    cols = 2 if count > 1 else 1
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (title, ylabel, picks, block) in zip(flat, panels, strict=False):
        for key, pick in picks.items():
            xs, ys = _series(block, pick)
            if xs:
                ax.plot(xs, ys, **STYLE[key])
        missing = block.get(str(_sizes(block)[-1]), {}).get("ours", {})
        if isinstance(missing, dict) and "not_available" in missing:
            ax.text(
                0.02,
                0.95,
                "bot-supervisor agent: not available",
                transform=ax.transAxes,
                va="top",
                fontsize=8,
                color="tab:blue",
            )
        ax.set_title(title)
        ax.set_xlabel("instances")
        ax.set_ylabel(ylabel)
        ax.set_xticks(_sizes(block))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    used = len(panels)
    if new.get("later_samples"):
        ax = flat[used]
        later = new["later_samples"]
        ax.plot(range(2, 2 + len(later)), [v * 1000 for v in later], **STYLE["ours"])
        for key, label, style in (
            ("git_clone_no_local", "git clone --no-local", "--"),
            ("git_clone_local", "git clone (local, hard links)", ":"),
            ("git_clone_shared", "git clone --shared (work tree only)", "-."),
        ):
            value = _median(new.get(key), 1000)
            if value is not None:
                ax.axhline(
                    value,
                    color="tab:red" if key != "git_clone_shared" else "tab:purple",
                    linestyle=style,
                    label=f"{label} (median)",
                )
        ax.set_title(f"`supervisor new`, {new.get('repo', {}).get('size_mib', '?')} MiB repository")
        ax.set_xlabel("instance number")
        ax.set_xticks(range(2, 2 + len(later), 2 if len(later) > 10 else 1))
        ax.set_ylabel("wall time (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        used += 1
    if react:
        ax = flat[used]
        labels = [label for label, _, _ in react]
        medians = [value["median"] for _, value, _ in react]
        low = [value["median"] - value["min"] for _, value, _ in react]
        high = [value["max"] - value["median"] for _, value, _ in react]
        ys = range(len(react))
        ax.barh(
            ys, medians, xerr=[low, high], color="tab:blue", alpha=0.8, capsize=3, label="bot-supervisor p50 (min-max)"
        )
        ax.scatter([limit for _, _, limit in react], ys, marker="|", s=400, color="tab:red", label="target", zorder=3)
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(left=0)
        ax.set_xlabel("seconds until the retained state record says so")
        ax.set_title("Agent reaction to events")
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=8)
        used += 1
    for ax in flat[used:]:
        ax.set_visible(False)
    fig.suptitle("bot-supervisor against supervisord, pm2 and raw tmux (medians)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
