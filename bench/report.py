# ruff: noqa: RUF001, RUF002 - the report prints real en dashes and multiplication signs
"""Render bench results (``bench/results/results.json``) as ``docs/benchmarks.md``.

Pure formatting: reads the dict ``run.py`` wrote, judges each target, returns Markdown.
"""

from __future__ import annotations

import typing as t

Row = list[str]


def _s(figures: dict[str, t.Any] | None, scale: float = 1000.0, unit: str = "ms", digits: int = 0) -> str:
    """Format ``median (min–max)`` of a stats dict in seconds, scaled to ``unit``."""
    if not figures or not figures.get("n"):
        return "–"
    fmt = f"{{:.{digits}f}}"
    med, lo, hi = (fmt.format(figures[k] * scale) for k in ("median", "min", "max"))
    return f"{med} {unit} ({lo}–{hi})"


def _table(headers: list[str], rows: list[Row]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**MET**" if ok else "**NOT MET**")


def _median(figures: dict[str, t.Any] | None) -> float | None:
    return figures.get("median") if figures and figures.get("n") else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _sizes(block: dict[str, t.Any]) -> list[int]:
    return sorted(int(k) for k in block if str(k).isdigit())


def _at(block: dict[str, t.Any], n: int) -> dict[str, t.Any]:
    return block.get(n) or block.get(str(n)) or {}


# -- judging ---------------------------------------------------------------------------------


def judge(results: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """Return one verdict row per target: figure, ours, peer, target, ratio, ok, note."""
    figs = results.get("figures", {})
    rows: list[dict[str, t.Any]] = []

    ls = figs.get("ls") or {}
    sizes = _sizes(ls)
    if sizes:
        big, small = sizes[-1], sizes[0]
        ours = _median(_at(ls, big).get("ours"))
        for peer in ("supervisorctl", "pm2"):
            peer_value = _median(_at(ls, big).get(peer))
            ratio = _ratio(ours, peer_value)
            rows.append(
                {
                    "figure": f"`ls --json`, {big} running",
                    "ours": _s(_at(ls, big).get("ours")),
                    "peer": f"{peer}: {_s(_at(ls, big).get(peer))}",
                    "target": f"≤ 0.5× {peer}",
                    "ratio": _x(ratio),
                    "ok": None if ratio is None else ratio <= 0.5,
                }
            )
        growth = _ratio(ours, _median(_at(ls, small).get("ours")))
        rows.append(
            {
                "figure": f"`ls --json` growth {small} → {big}",
                "ours": f"{_s(_at(ls, small).get('ours'))} → {_s(_at(ls, big).get('ours'))}",
                "peer": "–",
                "target": "< 2×",
                "ratio": _x(growth),
                "ok": None if growth is None else growth < 2.0,
            }
        )

    start = figs.get("start") or {}
    sizes = _sizes(start)
    if sizes:
        n = min(sizes, key=lambda s: abs(s - 100))
        block = _at(start, n)
        ours = _median(block.get("ours", {}).get("all_alive"))
        peers = {k: _median(block.get(k, {}).get("all_alive")) for k in ("supervisord", "pm2")}
        known = {k: v for k, v in peers.items() if v is not None}
        fastest = min(known, key=lambda k: known[k]) if known else None
        ratio = _ratio(ours, known.get(fastest)) if fastest else None
        rows.append(
            {
                "figure": f"`start --all`, {n} bots",
                "ours": _s(block.get("ours", {}).get("all_alive"), 1.0, "s", 2),
                "peer": "; ".join(f"{k}: {_s(block.get(k, {}).get('all_alive'), 1.0, 's', 2)}" for k in peers),
                "target": f"≤ 1× the faster ({fastest})",
                "ratio": _x(ratio),
                "ok": None if ratio is None else ratio <= 1.0,
            }
        )

    agent = figs.get("agent") or {}
    sizes = _sizes(agent)
    if sizes:
        n = sizes[-1]
        block = _at(agent, n)
        ours = block.get("ours", {})
        peer = "; ".join(
            f"{k}: {block[k]['rss_max_mib']:.1f} MiB, {block[k]['cpu_percent']:.2f}%"
            for k in ("pm2", "supervisord")
            if k in block and "rss_max_mib" in block[k]
        )
        if "not_available" in ours:
            rows.extend(
                {
                    "figure": f"agent {what.split()[0]}, {n} bots",
                    "ours": "not available",
                    "peer": peer,
                    "target": what,
                    "ratio": "–",
                    "ok": None,
                    "note": ours["not_available"],
                }
                for what in ("RSS ≤ 60 MB", "CPU ≤ 1% of one core")
            )
        elif "rss_max_mib" in ours:
            rss_mb = ours["rss_max_mib"] * 2**20 / 1e6
            rows.append(
                {
                    "figure": f"agent RSS, {n} bots",
                    "ours": f"{ours['rss_max_mib']:.1f} MiB ({rss_mb:.1f} MB) max",
                    "peer": peer,
                    "target": "≤ 60 MB",
                    "ratio": f"{rss_mb / 60:.2f}× of limit",
                    "ok": rss_mb <= 60,
                }
            )
            rows.append(
                {
                    "figure": f"agent CPU, {n} bots",
                    "ours": f"{ours['cpu_percent']:.2f}% over {ours['window_s']:.0f} s",
                    "peer": peer,
                    "target": "≤ 1% of one core",
                    "ratio": f"{ours['cpu_percent'] / 1.0:.2f}× of limit",
                    "ok": ours["cpu_percent"] <= 1.0,
                }
            )

    mqtt = figs.get("mqtt") or {}
    if mqtt:
        ours, echo = mqtt.get("ours", {}), mqtt.get("echo", {})
        echo_text = f"echo p50 {echo.get('median', 0):.2f} ms" if echo.get("n") else "–"
        if "not_available" in ours or "error" in mqtt:
            reason = ours.get("not_available") or mqtt.get("error")
            rows.extend(
                {
                    "figure": f"MQTT status round trip {what.split()[0]}",
                    "ours": "not available",
                    "peer": echo_text,
                    "target": what,
                    "ratio": "–",
                    "ok": None,
                    "note": reason,
                }
                for what in ("p50 ≤ 2× echo", "p99 ≤ 5 ms")
            )
        elif ours.get("n"):
            ratio = ours["median"] / echo["median"] if echo.get("median") else None
            rows.append(
                {
                    "figure": "MQTT status round trip p50",
                    "ours": f"{ours['median']:.2f} ms",
                    "peer": echo_text,
                    "target": "≤ 2× echo",
                    "ratio": _x(ratio),
                    "ok": None if ratio is None else ratio <= 2.0,
                }
            )
            rows.append(
                {
                    "figure": "MQTT status round trip p99",
                    "ours": f"{ours['p99']:.2f} ms",
                    "peer": f"echo p99 {echo.get('p99', 0):.2f} ms",
                    "target": "≤ 5 ms",
                    "ratio": f"{ours['p99'] / 5:.2f}× of limit",
                    "ok": ours["p99"] <= 5.0,
                }
            )

    restart = (figs.get("restart") or {}).get("ours", {})
    if restart:
        if "not_available" in restart:
            rows.append(
                {
                    "figure": "remote restart → heartbeating",
                    "ours": "not available",
                    "peer": "–",
                    "target": "p50 ≤ 1 s",
                    "ratio": "–",
                    "ok": None,
                    "note": restart["not_available"],
                }
            )
        else:
            beat = _median(restart.get("heartbeat"))
            rows.append(
                {
                    "figure": "remote restart → heartbeating (example bot)",
                    "ours": _s(restart.get("heartbeat"), 1.0, "s", 2),
                    "peer": "–",
                    "target": "p50 ≤ 1 s",
                    "ratio": _x(beat),
                    "ok": None if beat is None else beat <= 1.0,
                }
            )

    new = figs.get("new") or {}
    if new.get("later"):
        ratio = _ratio(_median(new["later"]), _median(new.get("git_clone_no_local")))
        rows.append(
            {
                "figure": "`new`, 2nd..Nth instance",
                "ours": _s(new["later"]),
                "peer": f"git clone --no-local: {_s(new.get('git_clone_no_local'))}",
                "target": "≤ 0.2× plain clone",
                "ratio": _x(ratio),
                "ok": None if ratio is None else ratio <= 0.2,
            }
        )
        disk = new["disk"]
        disk_ratio = disk["instance_dir_kib"] / disk["work_tree_kib"] if disk["work_tree_kib"] else None
        rows.append(
            {
                "figure": "`new`, disk per instance",
                "ours": f"{disk['instance_dir_kib'] / 1024:.1f} MiB",
                "peer": (
                    f"work tree {disk['work_tree_kib'] / 1024:.1f} MiB; "
                    f"plain clone {disk['plain_clone_kib'] / 1024:.1f} MiB"
                ),
                "target": "≈ work tree (≤ 1.1×)",
                "ratio": _x(disk_ratio),
                "ok": None if disk_ratio is None else disk_ratio <= 1.1,
            }
        )
    dash = figs.get("dashboard") or {}
    if "steady_bytes_per_s" in dash:
        per_s = dash["steady_bytes_per_s"]
        rows.append(
            {
                "figure": f"dashboard event stream per open tab, {dash['n']} bots, steady state",
                "ours": f"{per_s / 1000:.2f} KB/s ({dash['steady_bytes']} B in {dash['window_s']:.0f} s)",
                "peer": "–",
                "target": "≤ 2 KB/s",
                "ratio": _x(per_s / 2000),
                "ok": per_s <= 2000,
            }
        )
    return rows


def _dashboard(fig: dict[str, t.Any]) -> str:
    if "steady_bytes_per_s" not in fig:
        return f"## Dashboard event stream\n\nNot measured: {fig.get('not_available') or fig.get('error')}\n"
    return (
        "## Dashboard event stream\n\n"
        f"`supervisor dashboard` beside a real agent (heartbeats every {fig['agent_heartbeat_interval_s']:g} s, "
        f"state every {fig['agent_state_interval_s']:g} s) supervising {fig['n']} running bench bots. One client "
        "reads `/events` as a browser tab does: the whole view once, then only the records that changed. "
        "Bytes are counted on the socket, after a 5 s warm-up.\n\n"
        + _table(
            ["N", "first snapshot", f"then, over {fig['window_s']:.0f} s", "per second"],
            [
                [
                    str(fig["n"]),
                    f"{fig['snapshot_bytes'] / 1000:.1f} KB",
                    f"{fig['steady_bytes'] / 1000:.1f} KB",
                    f"{fig['steady_bytes_per_s'] / 1000:.2f} KB/s",
                ]
            ],
        )
        + "\n"
    )


# -- sections -----------------------------------------------------------------------------------


def _startup(fig: dict[str, t.Any]) -> str:
    rows = [[k, _s(v, digits=1)] for k, v in fig.get("times", {}).items()]
    imports = [[f"`supervisor {k}`", ", ".join(v) or "–"] for k, v in fig.get("imports", {}).items()]
    return (
        "## Start-up of the `supervisor` command\n\n"
        "Part of every figure below. Median (min–max) wall time of one process.\n\n"
        + _table(["command", "wall time"], rows)
        + "\n\nHeavy third-party modules each command imports (of git, paho, yaml, psutil, libtmux, click):\n\n"
        + _table(["command", "imports"], imports)
        + "\n"
    )


def _ls(fig: dict[str, t.Any]) -> str:
    cols = ["ours", "ours --no-foreign", "supervisorctl", "pm2", "tmux"]
    rows = [
        [str(n), str(_at(fig, n).get("running_listed", "?"))] + [_s(_at(fig, n).get(c), digits=1) for c in cols]
        for n in _sizes(fig)
    ]
    return (
        "## `supervisor ls --json` with N running instances\n\n"
        "Peers: `supervisorctl status` (N programs), `pm2 jlist` (N apps), `tmux list-sessions` (our N sessions). "
        "Each command is run once to warm up, then the tools are timed round-robin. "
        "`ours --no-foreign` skips the look for foreign bot sessions (diagnostic, not a target). The three fleets "
        "run at the same time, so the host holds about 3N bots (plus our N bash wrappers) during these figures.\n\n"
        + _table(
            [
                "N",
                "running listed",
                "supervisor ls --json",
                "… --no-foreign",
                "supervisorctl status",
                "pm2 jlist",
                "tmux list-sessions",
            ],
            rows,
        )
        + "\n"
    )


def _start(fig: dict[str, t.Any]) -> str:
    rows = []
    for n in _sizes(fig):
        block = _at(fig, n)
        rows.append(
            [str(n)]
            + [_s(block.get(k, {}).get("all_alive"), 1.0, "s", 2) for k in ("ours", "supervisord", "pm2")]
            + [_s(block.get(k, {}).get("command"), 1.0, "s", 2) for k in ("ours", "supervisord", "pm2")]
        )
    return (
        "## Start N stopped bots\n\n"
        "`supervisor start --all` (waits for each bot's ready line), `supervisorctl start all` (programs with "
        "`startsecs=0`, so supervisord does not add its fixed 1 s check), `pm2 start ecosystem.json` (warm daemon, "
        "apps deleted before). *All alive* is the time until the command returned **and** every bot process "
        "exists; *command* is the command's own wall time. Before each of our runs the tmux server is stopped, so "
        "the time includes starting it.\n\n"
        + _table(
            [
                "N",
                "ours: all alive",
                "supervisord: all alive",
                "pm2: all alive",
                "ours: command",
                "supervisord: command",
                "pm2: command",
            ],
            rows,
        )
        + "\n"
    )


def _agent(fig: dict[str, t.Any]) -> str:
    rows = []
    for n in _sizes(fig):
        block = _at(fig, n)
        cells = [str(n)]
        for k in ("ours", "pm2", "supervisord"):
            value = block.get(k, {})
            if "rss_max_mib" in value:
                extra = ""
                if "heartbeats" in value:
                    extra = f", {value['heartbeats']}/{value['heartbeats_expected']} heartbeats"
                cells.append(
                    f"{value['rss_max_mib']:.1f} MiB, {value['cpu_percent']:.2f}% ({value['window_s']:.0f} s{extra})"
                )
            elif "not_available" in value:
                cells.append("not available")
            else:
                cells.append(value.get("error", "–"))
        rows.append(cells)
    notes = {block.get("ours", {}).get("not_available") for n in _sizes(fig) if (block := _at(fig, n))}
    notes.discard(None)
    text = (
        "## Resident memory and CPU of the supervising process\n\n"
        "`supervisor agent` (heartbeats every 10 s, state every 30 s) beside the pm2 daemon and supervisord, each "
        "supervising the same N bots, sampled over the same window after a 5 s warm-up. RSS is the maximum of "
        "1 s samples; CPU is (user + system, own and reaped children) / window, in % of one core.\n\n"
        + _table(["N", "supervisor agent", "pm2 daemon", "supervisord"], rows)
        + "\n"
    )
    for note in notes:
        text += f"\nOur agent was not measured: {note}\n"
    return text


def _mqtt(fig: dict[str, t.Any]) -> str:
    rows = []
    for label, key in (("supervisor agent (`status` of one instance)", "ours"), ("bare paho echo pair", "echo")):
        value = fig.get(key, {})
        if value.get("n"):
            rows.append(
                [
                    label,
                    f"{value['median']:.2f}",
                    f"{value['min']:.2f}–{value['max']:.2f}",
                    f"{value['p99']:.2f}",
                    str(value.get("failures", 0)),
                ]
            )
        else:
            rows.append([label, "not available", "–", "–", value.get("not_available", fig.get("error", "–"))])
    return (
        "## MQTT command round trip\n\n"
        f"{fig.get('requests', '?')} sequential requests, QoS 1 both ways, private mosquitto on loopback, "
        "TCP_NODELAY on every client socket (ours and the echo pair). Times in ms.\n\n"
        + _table(["responder", "p50", "min–max", "p99", "failures / note"], rows)
        + "\n"
    )


def _restart(fig: dict[str, t.Any]) -> str:
    ours = fig.get("ours", {})
    if "not_available" in ours:
        return f"## Remote restart\n\nNot available: {ours['not_available']}\n"
    rows = [
        ["`restart` request → reply", _s(ours.get("reply"), 1.0, "s", 2)],
        ["`restart` request → first heartbeat after the reply", _s(ours.get("heartbeat"), 1.0, "s", 2)],
    ]
    errors = "".join(f"\n- {e}" for e in ours.get("errors", []))
    return (
        "## Remote restart\n\n"
        "The example bot (`example-bot` recipe). The agent runs with `--heartbeat-interval 1` here so that waiting "
        "for the next periodic beat adds at most 1 s; the reply comes after the new process printed its ready line.\n\n"
        + _table(["span", "median (min–max)"], rows)
        + ("\n\nErrors:" + errors if errors else "")
        + "\n"
    )


def _events(fig: dict[str, t.Any]) -> str:
    ours = fig.get("ours", {})
    if "not_available" in ours:
        return f"## External events (webhooks)\n\nNot available: {ours['not_available']}\n"
    latency = ours.get("latency") or {}

    def ms(key: str) -> str:
        return f"{latency[key] * 1000:.1f} ms" if latency.get("n") else "–"

    def per_s(key: str) -> str:
        return f"{ours[key]:.0f}/s" if ours.get(key) else "–"

    rows = [
        ["webhook POST → line in the bot's console, p50", ms("median")],
        ["webhook POST → line in the bot's console, p99", ms("p99")],
        ["webhook POST → line in the bot's console, min–max", f"{ms('min')} – {ms('max')}"],
        [f"accepted events per second ({ours.get('accepted')} of {ours.get('burst')}, 4 keep-alive clients)",
         per_s("accepted_per_s")],
        ["… journaled and published (every PUBACK in) per second, same burst", per_s("published_per_s")],
    ]  # fmt: skip
    errors = "".join(f"\n- {e}" for e in ours.get("errors", []))
    return (
        "## External events (webhooks)\n\n"
        f"`supervisor events serve` with one route to the example bot ({latency.get('n', 0)} events, one at a time, "
        "text/plain like a TradingView alert): HTTP accept and SQLite commit (`synchronous=FULL`), QoS 1 publish, "
        "the agent's console line typed through tmux, until the bot's `ALERT` line is in its console log (polled "
        "every 1 ms). The burst goes to a route whose target no agent types for, so it measures the receiver: "
        "each accepted event is one fsync'd commit before its 202.\n\n"
        + _table(["figure", "value"], rows)
        + ("\n\nErrors:" + errors if errors else "")
        + "\n"
    )


def _new(fig: dict[str, t.Any]) -> str:
    repo = fig.get("repo", {})
    disk = fig.get("disk", {})
    rows = [
        ["`supervisor new` 1st instance (creates the mirror)", f"{fig.get('first', 0) * 1000:.0f} ms"],
        ["`supervisor new` 2nd..Nth instance", _s(fig.get("later"))],
        ["`git clone --no-local` (objects copied, as from a server)", _s(fig.get("git_clone_no_local"))],
        ["`git clone <path>` (local: objects hard-linked)", _s(fig.get("git_clone_local"))],
        ["`git clone --shared <mirror>` (work tree only: the floor of `new`)", _s(fig.get("git_clone_shared"))],
    ]
    disk_rows = [[k.replace("_kib", "").replace("_", " "), f"{v / 1024:.1f} MiB"] for k, v in disk.items()]
    return (
        "## `supervisor new` of further instances of one repository\n\n"
        f"A generated repository: {repo.get('commits')} commits, {repo.get('size_mib')} MiB packed "
        "(`git fast-import`, deterministic), 1000 files in the work tree. No install steps in the bench recipe. "
        "Each timing starts after a `sync`, and the clones are interleaved with our instances: this figure is "
        "bound by file-system writes, whose speed drifts during a run on a VM disk, so compare ratios.\n\n"
        + _table(["operation", "median (min–max)"], rows)
        + "\n\nDisk use (`du -sk`):\n\n"
        + _table(["what", "size"], disk_rows)
        + "\n"
    )


WHY = {
    "`ls": (
        "every `supervisor` run pays Python start-up and imports first (start-up table: `supervisor --version` "
        "alone is about half of `supervisorctl status`, a thin client asking a daemon over a socket). `ls` then "
        "runs one `tmux list-panes`, reads only our sessions' process trees from /proc (`metrics._proc_infos`), "
        "samples each bot with psutil, reads each checkout's HEAD, and looks for foreign bot sessions (another "
        "tmux server and `screen -ls`). Meeting 0.5x would need a listing that imports neither click nor "
        "psutil, e.g. a thin client answered from the agent's snapshot; that is not built."
    ),
    "`start": (
        "`Manager.start` starts every session first (one `tmux new-session` each) and then waits for all ready "
        "lines in one loop that reads the console logs. The command returns when every bot printed its ready "
        "line, while `pm2 start` returns once it has spawned the programs and supervisord here waits 0 s "
        "(`startsecs=0`), so our figure includes 100 Python bots booting on 2 cores. A bare loop of 100 "
        "`tmux new-session` calls alone takes about half a second here; batching them into one tmux call is "
        "the next step."
    ),
    "agent CPU": (
        "every heartbeat interval (10 s) the agent computes one status snapshot of all instances (one "
        "`tmux list-panes`, the /proc reads of our process trees, a psutil sample per bot) that serves crash "
        "checks, heartbeats and state records alike; with 200 bots that pass is most of the CPU figure."
    ),
    "MQTT": (
        "a `status` request goes from paho's network thread to the agent's worker pool, reads the registry "
        "(cached by file identity), the session listing (cached for up to 1 s), samples the bot's own process "
        "tree, appends to the audit log and publishes the reply; the echo pair only decodes JSON on the network "
        "thread. The thread hand-off and the sample are most of the difference."
    ),
}


LABELS = {"`ls": "ls", "`start": "start --all", "agent CPU": "agent CPU", "MQTT": "MQTT", "`new`, 2nd": "new"}


def _why_new(fig: dict[str, t.Any]) -> str:
    ours, floor = _median(fig.get("later")), _median(fig.get("git_clone_shared"))
    clone = _median(fig.get("git_clone_no_local"))
    if ours is None or floor is None or not clone:
        return "see the `new` table."
    return (
        f"`supervisor new` spends {1000 * (ours - floor):.0f} ms beyond git writing the work tree "
        f"({1000 * floor:.0f} ms for `git clone --shared <mirror>`, itself {floor / clone:.2f}x a full clone): "
        "Python start-up and imports (click, the manager with psutil/PyYAML, then GitPython for the clone), a "
        "`git fetch` of the mirror, registry writes and a final `status`. With the work tree alone near 0.2x, "
        "the target leaves almost no room for that overhead."
    )


def render(results: dict[str, t.Any], png_name: str) -> str:
    """Return the whole ``docs/benchmarks.md``."""
    meta = results.get("meta", {})
    figs = results.get("figures", {})
    machine = meta.get("machine", {})
    verdicts = judge(results)
    parts = [
        "# Benchmarks\n",
        "Generated by `make bench` (`bench/run.py`) — do not edit by hand. "
        f"Run started {meta.get('started', '?')}, took {meta.get('duration_s', '?')} s"
        + (" — **quick smoke run**, not the full sizes." if meta.get("args", {}).get("quick") else ".")
        + "\n",
        (
            f"Re-run later with `--only`: {', '.join(meta['partial']['figures'])}. The other figures come "
            f"from the run started {meta['partial'].get('previous_started')}.\n"
            if meta.get("partial")
            else ""
        ),
        "## Machine and versions\n",
        _table(
            ["", ""],
            [
                ["CPU", f"{machine.get('cpu')} ({machine.get('nproc')} cores)"],
                ["memory", f"{machine.get('memory_gib')} GiB"],
                ["kernel", str(machine.get("kernel"))],
            ]
            + [[k, f"`{v}`"] for k, v in meta.get("versions", {}).items()],
        )
        + "\n",
        "## Targets\n",
        "Medians; ratios are ours ÷ peer (or ÷ limit).\n",
        _table(
            ["figure", "ours", "peer(s), same run", "target", "ratio", "verdict"],
            [[v["figure"], v["ours"], v["peer"], v["target"], v["ratio"], _verdict(v["ok"])] for v in verdicts],
        )
        + "\n",
    ]
    notes = [f"- {v['figure']}: not measured — {v['note']}" for v in verdicts if v.get("note")]
    why = {**WHY, "`new`, 2nd": _why_new(figs.get("new") or {})}
    missed = {key for v in verdicts for key in why if v["ok"] is False and v["figure"].startswith(key)}
    if notes or missed:
        parts.append("### Why a target is not met or not measured\n")
        parts.append(
            "\n".join([*sorted(set(notes)), *(f"- {LABELS.get(key, key)}: {why[key]}" for key in sorted(missed))])
            + "\n"
        )
    parts.append(f"![cost against number of instances]({png_name})\n")
    for key, fn in (
        ("startup", _startup),
        ("ls", _ls),
        ("start", _start),
        ("agent", _agent),
        ("mqtt", _mqtt),
        ("restart", _restart),
        ("new", _new),
        ("dashboard", _dashboard),
        ("events", _events),
    ):
        fig = figs.get(key)
        if not fig:
            continue
        if "error" in fig and len(fig) == 1:
            parts.append(f"## {key}\n\nThis figure failed in this run: `{fig['error']}`\n")
            continue
        parts.append(fn(fig))
    parts.append(
        "## How to reproduce\n\n"
        "```sh\n"
        "make bench                                  # all figures, sizes 10,50,100,200 (about 15 min on 2 cores)\n"
        "make bench BENCH_ARGS=--quick               # smoke run (< 3 min)\n"
        "make bench BENCH_ARGS='--only ls,start --sizes 10,100'\n"
        "```\n\n"
        "`make bench` installs what it compares against under `bench/_peers/` (git-ignored): supervisor 4.x from "
        "PyPI in its own venv (it clashes with our import name), pm2 from npm, matplotlib in a plot venv. "
        "Everything runs isolated in a temp folder: its own `SUPERVISOR_HOME`, tmux sockets (`TMUX_TMPDIR`), "
        "`SCREENDIR`, `PM2_HOME`, supervisord socket and a mosquitto on a free loopback port; every process is "
        "stopped by pid at the end. Every tool runs the same bot (`bench/bot.py`) with the same Python. Raw "
        "numbers: `bench/results/results.json`.\n"
    )
    return "\n".join(parts)
