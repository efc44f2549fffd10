"""Entry point of ``make bench``: measure bot-supervisor beside supervisord, pm2 and raw tmux.

\b
    python bench/run.py                      # every figure, sizes 10,50,100,200
    python bench/run.py --quick              # smoke run, small sizes, few repeats
    python bench/run.py --only ls,start --sizes 10,100

Writes bench/results/results.json, docs/benchmarks.md and docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import typing as t
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import figures
import fleetscale
import peers
import realbot
import report
from common import BENCH_DIR, PYTHON, REPO_DIR, RESULTS_DIR, SUPERVISOR, Env, Procs, log, version_of

FIGURES = (
    "startup", "ls", "start", "agent", "mqtt", "react", "restart", "new", "dashboard", "events", "fleet", "hummingbot",
)  # fmt: skip
NO_PEERS = {"mqtt", "react", "restart", "dashboard", "events", "fleet", "hummingbot"}  # figures with no installed peer
OPT_IN = {"hummingbot"}  # a real Hummingbot (Python 3.12, a 20-minute build): only with --only
SCALING = {"ls", "start", "agent"}


def machine() -> dict[str, t.Any]:
    """Return the facts about this machine the report prints."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "cpu": cpu,
        "os": platform.platform(),
    }


def versions(env: dict[str, str]) -> dict[str, str]:
    """Return the version of every program measured or used."""
    return {
        "python": platform.python_version(),
        "bot-supervisor": version_of([SUPERVISOR, "--version"], env),
        "tmux": version_of(["tmux", "-V"]),
        "screen": version_of(["screen", "-v"]).split("(")[0].strip(),
        "supervisor (supervisord)": version_of([str(peers.SUPD_VENV / "bin" / "supervisord"), "--version"]),
        "pm2": _pm2_version(),
        "node": version_of(["node", "--version"]),
        "mosquitto": _mosquitto_version(),
        "git": version_of(["git", "--version"]),
        "paho-mqtt": _pip_version("paho-mqtt"),
        "libtmux": _pip_version("libtmux"),
    }


def _pm2_version() -> str:
    # Read, not run: `pm2 --version` would start a pm2 daemon.
    package = peers.PM2_PREFIX / "node_modules" / "pm2" / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "not installed"


def _mosquitto_version() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False, timeout=10)
    first = (proc.stdout or proc.stderr).strip().splitlines()
    return first[0].replace("mosquitto version ", "") if first else "?"


def _pip_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def _fleet_sizes(ctx: figures.Ctx) -> list[tuple[int, int]]:
    return [(4, 5), (20, 10)] if ctx.quick else list(fleetscale.SIZES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only",
        help=f"comma-separated figures to run (default all but {','.join(sorted(OPT_IN))}: "
        f"{','.join(f for f in FIGURES if f not in OPT_IN)}); the others keep their last results",
    )
    parser.add_argument("--sizes", help="instance counts of the scaling figures (default 10,50,100,200)")
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 5,10, few repeats, short windows")
    parser.add_argument("--no-docs", action="store_true", help="write only bench/results, not docs/")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (for debugging)")
    parser.add_argument("--render", metavar="RESULTS_JSON", help="measure nothing; rewrite docs/ from a results file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected figures and write the results and the docs."""
    args = parse_args(argv)
    if args.render:
        return write_docs(json.loads(Path(args.render).read_text()), Path(args.render))
    selected = set(args.only.split(",")) if args.only else set(FIGURES) - OPT_IN
    unknown = selected - set(FIGURES)
    if unknown:
        print(f"unknown figure(s): {', '.join(sorted(unknown))}; choose from {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    sizes = [int(s) for s in (args.sizes or ("5,10" if args.quick else "10,50,100,200")).split(",")]
    began = time.time()
    # An installed tool has its bytecode compiled at install time (pip does it for wheels, as for the
    # peers); this editable checkout would otherwise compile our modules in every measured command.
    compileall.compile_dir(str(BENCH_DIR.parent / "supervisor"), quiet=1)
    if selected - NO_PEERS:
        peers.install_peers()
    procs = Procs()
    env = Env.create()
    log(f"temp root {env.root}")
    procs.on_cleanup("temp root", lambda: None if args.keep else shutil.rmtree(env.root, ignore_errors=True))
    procs.on_cleanup("leftover bots", lambda: peers.sweep_bots(env))
    ctx = figures.Ctx(env=env, procs=procs, quick=args.quick, sizes=sizes)
    results: dict[str, t.Any] = {
        "meta": {
            "machine": machine(),
            "versions": versions(env.env),
            "args": {"only": sorted(selected), "sizes": sizes, "quick": args.quick},
            "python_used_for_bots": PYTHON,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(began)),
        },
        "figures": {},
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / ("results-quick.json" if args.quick else "results.json")
    if args.only and out.exists():
        # A partial run updates the figures it measured and keeps the others of the last run.
        previous = json.loads(out.read_text())
        results["figures"] = previous.get("figures", {})
        results["meta"]["durations_s"] = previous["meta"].get("durations_s", {})
        before = previous["meta"].get("partial") or {"figures": [], "previous_started": previous["meta"].get("started")}
        results["meta"]["partial"] = {
            "figures": sorted(selected | set(before["figures"])),
            "previous_started": before["previous_started"],
        }
    status = 0
    try:
        steps: list[tuple[str, t.Callable[[], t.Any]]] = []
        if "startup" in selected:
            steps.append(("startup", lambda: figures.fig_startup(ctx)))
        if selected & SCALING:
            steps.append(("scaling", lambda: figures.scaling(ctx, selected & SCALING)))
        for name, fn in (
            ("mqtt", figures.fig_mqtt),
            ("react", figures.fig_react),
            ("restart", figures.fig_restart),
            ("new", figures.fig_new),
            ("dashboard", figures.fig_dashboard),
            ("events", figures.fig_events),
            ("fleet", lambda ctx: fleetscale.fig_fleet(ctx.env, ctx.procs, _fleet_sizes(ctx), quick=ctx.quick)),
            ("hummingbot", realbot.fig_hummingbot),
        ):
            if name in selected:
                steps.append((name, lambda fn=fn: fn(ctx)))
        durations = results["meta"].setdefault("durations_s", {})
        for index, (name, step) in enumerate(steps, 1):
            log(f"[{index}/{len(steps)}] figure {name} (bench running for {_clock(time.time() - began)})")
            t0 = time.perf_counter()
            try:
                value = step()
            except Exception as e:  # noqa: BLE001 - one failed figure must not lose the others
                log(f"figure {name} failed: {e!r}")
                value = {"error": repr(e)}
                status = 1
            if name == "scaling" and "error" not in value:
                results["figures"].update(value)
            else:
                results["figures"][name] = value
            durations[name] = round(time.perf_counter() - t0)
            log(f"[{index}/{len(steps)}] figure {name} took {_clock(durations[name])}")
            out.write_text(json.dumps(results, indent=1, default=str))
    finally:
        procs.cleanup()
    results["meta"]["duration_s"] = round(time.time() - began)
    out.write_text(json.dumps(results, indent=1, default=str))
    log(f"results in {out}; the bench took {_clock(results['meta']['duration_s'])}")
    if not args.no_docs and selected <= OPT_IN:
        # Only opt-in figures: their sections go into the committed page, the rest of it stays.
        status = splice_docs(results) or status
    elif not args.no_docs:
        status = write_docs(results, out) or status
    return status


def splice_docs(results: dict[str, t.Any]) -> int:
    """Replace (or add, before "How to reproduce") the opt-in figures' sections of docs/benchmarks.md."""
    md = REPO_DIR / "docs" / "benchmarks.md"
    text = md.read_text() if md.exists() else "# Benchmarks\n\n## How to reproduce\n"
    for name, fig in results["figures"].items():
        section = report.section(name, fig)
        if not section:
            continue
        title = section.splitlines()[0]
        when = (
            f"Measured alone by the run started {results['meta'].get('started')} (the page's other figures are older)."
        )
        section = section.replace("\n\n", f"\n\n{when}\n\n", 1)
        if title in text:
            start = text.index(title)
            end = text.find("\n## ", start + len(title))
            text = text[:start] + section.rstrip("\n") + "\n" + (text[end:] if end >= 0 else "")
        else:
            anchor = text.find("## How to reproduce")
            anchor = anchor if anchor >= 0 else len(text)
            text = text[:anchor] + section.rstrip("\n") + "\n\n" + text[anchor:]
    md.write_text(text)
    log(f"wrote the {', '.join(results['figures'])} section of {md}")
    return 0


def write_docs(results: dict[str, t.Any], results_path: Path) -> int:
    """Write docs/benchmarks.md and docs/benchmarks.png from ``results``."""
    md = REPO_DIR / "docs" / "benchmarks.md"
    png = REPO_DIR / "docs" / "benchmarks.png"
    md.write_text(report.render(results, png.name))
    log(f"wrote {md}")
    plot = subprocess.run(
        [
            str(peers.PLOT_VENV / "bin" / "python"),
            str(Path(__file__).with_name("plot.py")),
            str(results_path),
            str(png),
        ],
        check=False,
    )
    if plot.returncode != 0:
        return 1
    log(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
