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

ISSUE = "13"
CURRENT = ("18", "19", "20", "21", "22", "23")
"""The issues whose targets this round adds: their rows come first, under their own heading."""
"""The issue whose targets head the table; the earlier issues' targets follow as regression checks."""


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f} ms"


def _sec(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def _row(
    figure: str, ours: str, peer: str, target: str, ratio: str, ok: bool | None, **extra: t.Any
) -> dict[str, t.Any]:
    return {"figure": figure, "ours": ours, "peer": peer, "target": target, "ratio": ratio, "ok": ok, **extra}


def _missing(figure: str, peer: str, target: str, reason: str, group: str = ISSUE) -> dict[str, t.Any]:
    return _row(figure, "not available", peer, target, "–", None, note=reason, group=group)


def _judge_ls(figs: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    ls = figs.get("ls") or {}
    sizes = _sizes(ls)
    if not sizes:
        return []
    big, small = sizes[-1], sizes[0]
    block = _at(ls, big)
    peers = {p: _median(block.get(p)) for p in ("supervisorctl", "pm2")}
    rows = []
    for key, how in (("ours", "no agent"), ("ours (agent)", "agent running")):
        figure = f"`ls --json`, {big} running, {how}"
        for peer, peer_value in peers.items():
            target = f"≤ 0.5× {peer}"
            peer_text = f"{peer}: {_s(block.get(peer))}"
            value = block.get(key) or {}
            if "not_available" in value:
                rows.append(_missing(figure, peer_text, target, value["not_available"]))
                continue
            ratio = _ratio(_median(value), peer_value)
            why = _why_ls(figs, big, key, peers)
            rows.append(_row(figure, _s(value), peer_text, target, _x(ratio), _le(ratio, 0.5), group=ISSUE, why=why))
    if "same_records" in block:
        diffs = block.get("record_differences") or []
        rows.append(
            _row(
                f"`ls --json`, {big} running: agent's records = direct path's",
                "same" if block["same_records"] else f"{len(diffs)} difference(s)",
                "–",
                "same records (cpu, rss, uptime aside)",
                "–",
                bool(block["same_records"]),
                group=ISSUE,
                why="differences: " + "; ".join(diffs),
            )
        )
    ours, first = _median(block.get("ours")), _median(_at(ls, small).get("ours"))
    growth = _ratio(ours, first)
    rows.append(
        _row(
            f"`ls --json` growth {small} → {big}, no agent",
            f"{_s(_at(ls, small).get('ours'))} → {_s(block.get('ours'))}",
            "–",
            "< 2×",
            _x(growth),
            None if growth is None else growth < 2.0,
            group="earlier",
            why=f"{_ms(first)} at {small} instances, {_ms(ours)} at {big}: each running instance adds "
            f"{_ms(((ours or 0) - (first or 0)) / max(1, big - small))} to the listing.",
        )
    )
    return rows


def _le(ratio: float | None, limit: float) -> bool | None:
    return None if ratio is None else ratio <= limit


def _why_ls(figs: dict[str, t.Any], n: int, key: str, peers: dict[str, float | None]) -> str:
    block = _at(figs.get("ls") or {}, n)
    ours = _median(block.get(key))
    known = [v for v in peers.values() if v]
    parts = [f"`ls --json` takes {_ms(ours)} here; half the faster peer is {_ms(0.5 * min(known)) if known else '–'}."]
    startup = figs.get("startup") or {}
    times = startup.get("times", {})
    python = _median(times.get("python -c pass"))
    version = _median(times.get("supervisor --version"))
    one = _median(times.get("supervisor ls --json (1 stopped instance)"))
    tmux = _median(block.get("tmux"))
    if python is not None:
        parts.append(f"Python start-up alone is {_ms(python)}, `supervisor --version` {_ms(version)}.")
    if tmux is not None:
        parts.append(f"`tmux list-sessions` of our {n} sessions takes {_ms(tmux)}.")
    if key == "ours":
        imports = startup.get("imports", {}).get("ls --json")
        if one is not None and ours is not None:
            parts.append(
                f"With one stopped instance `ls --json` takes {_ms(one)}, so the {n} running instances add "
                f"{_ms(ours - one)}."
            )
        if imports is not None:
            parts.append(
                "It imports "
                + (", ".join(imports) if imports else "none of git, paho, yaml, psutil, libtmux, click")
                + " (start-up table)."
            )
        no_foreign = _median(block.get("ours --no-foreign"))
        if no_foreign is not None and ours is not None:
            parts.append(
                f"The look for foreign sessions costs {_ms(ours - no_foreign)} (`--no-foreign`: {_ms(no_foreign)})."
            )
    elif python is not None and ours is not None:
        parts.append(f"Through the agent's socket, {_ms(ours - python)} is left beyond Python start-up.")
    return " ".join(parts)


def _judge_start(figs: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    start = figs.get("start") or {}
    sizes = _sizes(start)
    if not sizes:
        return []
    n = min(sizes, key=lambda s: abs(s - 100))
    block = _at(start, n)
    alive = block.get("ours", {}).get("all_alive")
    supd = block.get("supervisord", {}).get("all_alive")
    ratio = _ratio(_median(alive), _median(supd))
    peer = "; ".join(f"{k}: {_s(block.get(k, {}).get('all_alive'), 1.0, 's', 2)}" for k in ("supervisord", "pm2"))
    return [
        _row(
            f"`start --all`, {n} bots, until all alive",
            _s(alive, 1.0, "s", 2),
            peer,
            "≤ 1× supervisord",
            _x(ratio),
            _le(ratio, 1.0),
            group=ISSUE,
            why=_why_start(block, n),
        )
    ]


def _why_start(block: dict[str, t.Any], n: int) -> str:
    ours, supd = block.get("ours", {}), block.get("supervisord", {})
    alive, command = _median(ours.get("all_alive")), _median(ours.get("command"))
    supd_alive, supd_command = _median(supd.get("all_alive")), _median(supd.get("command"))
    parts = [
        (
            f"`supervisor start --all` returns after {_sec(command)} and all {n} bots are alive after "
            f"{_sec(alive)} (that includes starting our tmux server); supervisord: {_sec(supd_command)} and "
            f"{_sec(supd_alive)}."
        )
    ]
    if alive and supd_alive:
        parts.append(f"Per bot: {1000 * alive / n:.1f} ms against {1000 * supd_alive / n:.1f} ms.")
    if block.get("default_waits_for_ready"):
        parts.append(
            "This `supervisor start` has no `--wait` option and waits for every bot's ready line by default, "
            "so the figure includes the bots booting."
        )
    elif _median(block.get("ours --wait", {}).get("all_alive")) is not None:
        parts.append(f"With `--wait` (every ready line seen): {_sec(_median(block['ours --wait']['all_alive']))}.")
    return " ".join(parts)


def _judge_agent(figs: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    agent = figs.get("agent") or {}
    sizes = _sizes(agent)
    if not sizes:
        return []
    n = sizes[-1]
    block = _at(agent, n)
    ours = block.get("ours", {})
    peer = "; ".join(
        f"{k}: {block[k]['rss_max_mib']:.1f} MiB, {block[k]['cpu_percent']:.2f}%"
        for k in ("pm2", "supervisord")
        if k in block and "rss_max_mib" in block[k]
    )
    if "rss_max_mib" not in ours:
        reason = ours.get("not_available") or ours.get("error") or "no figure"
        return [_missing(f"agent {w.split()[0]}, {n} idle bots", peer, w, reason) for w in ("RSS ≤ 60 MB", "CPU ≤ 1%")]
    rss_mb = ours["rss_max_mib"] * 2**20 / 1e6
    beats = f", {ours['heartbeats']}/{ours['heartbeats_expected']} heartbeats" if "heartbeats" in ours else ""
    why = (
        f"over {ours['window_s']:.0f} s with {n} idle bots: {ours['cpu_percent']:.2f}% of one core, "
        f"{ours['rss_max_mib']:.1f} MiB at most{beats}; {peer}."
    )
    return [
        _row(
            f"agent RSS, {n} idle bots",
            f"{ours['rss_max_mib']:.1f} MiB ({rss_mb:.1f} MB) max",
            peer,
            "≤ 60 MB",
            f"{rss_mb / 60:.2f}× of limit",
            rss_mb <= 60,
            group=ISSUE,
            why=why,
        ),
        _row(
            f"agent CPU, {n} idle bots",
            f"{ours['cpu_percent']:.2f}% over {ours['window_s']:.0f} s",
            peer,
            "≤ 1% of one core",
            f"{ours['cpu_percent'] / 1.0:.2f}× of limit",
            ours["cpu_percent"] <= 1.0,
            group=ISSUE,
            why=why,
        ),
    ]


def _judge_mqtt(figs: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    mqtt = figs.get("mqtt") or {}
    if not mqtt:
        return []
    ours, echo = mqtt.get("ours", {}), mqtt.get("echo", {})
    echo_text = f"echo p50 {echo.get('median', 0):.2f} ms" if echo.get("n") else "–"
    if not ours.get("n"):
        reason = ours.get("not_available") or mqtt.get("error") or "no figure"
        return [
            _missing("MQTT status round trip p50", echo_text, "≤ 1.5× echo", reason),
            _missing("MQTT status round trip p99", echo_text, "≤ 5 ms", reason, group="earlier"),
        ]
    ratio = ours["median"] / echo["median"] if echo.get("median") else None
    why = (
        f"p50 {ours['median']:.2f} ms against the echo pair's {echo.get('median', 0):.2f} ms: the agent spends "
        f"{ours['median'] - echo.get('median', 0):.2f} ms per request beyond decoding and publishing on paho's "
        f"network thread, where 1.5× allows {0.5 * echo.get('median', 0):.2f} ms."
    )
    relay = mqtt.get("relay") or {}
    relayed: list[dict[str, t.Any]] = []
    if relay.get("n") and echo.get("median"):
        relay_ratio = relay["median"] / echo["median"]
        relayed.append(
            _row("relayed `status` (typed into example-bot) p50", f"{relay['median']:.1f} ms", echo_text,
                 "≤ 150 ms and ≤ 4× echo", _x(relay_ratio), relay["median"] <= 150 and relay_ratio <= 4,
                 group="18", why=f"p99 {relay['p99']:.1f} ms over {relay['n']} requests; the answer ends when "
                 "the bot's prompt shows again (reply_wait 0.5 s is only the bound).")
        )  # fmt: skip
    elif mqtt:
        relayed.append(
            _missing("relayed `status` p50", echo_text, "≤ 150 ms and ≤ 4× echo", relay.get("error") or "not run", "18")
        )
    return [
        *relayed,
        _row("MQTT status round trip p50", f"{ours['median']:.2f} ms", echo_text, "≤ 1.5× echo", _x(ratio),
             _le(ratio, 1.5), group=ISSUE, why=why),
        _row("MQTT status round trip p99", f"{ours['p99']:.2f} ms", f"echo p99 {echo.get('p99', 0):.2f} ms",
             "≤ 5 ms", f"{ours['p99'] / 5:.2f}× of limit", ours["p99"] <= 5.0, group="earlier",
             why=f"p99 {ours['p99']:.2f} ms, max {ours['max']:.2f} ms over {ours['n']} requests."),
    ]  # fmt: skip


def _judge_new(figs: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    new = figs.get("new") or {}
    if not new.get("later"):
        return []
    ratio = _ratio(_median(new["later"]), _median(new.get("git_clone_no_local")))
    disk = new["disk"]
    disk_ratio = disk["instance_dir_kib"] / disk["work_tree_kib"] if disk["work_tree_kib"] else None
    return [
        _row(
            "`new`, 2nd..Nth instance",
            _s(new["later"]),
            f"git clone --no-local: {_s(new.get('git_clone_no_local'))}",
            "≤ 0.25× plain clone",
            _x(ratio),
            _le(ratio, 0.25),
            group=ISSUE,
            why=_why_new(new),
        ),
        _row(
            "`new`, disk per instance",
            f"{disk['instance_dir_kib'] / 1024:.1f} MiB",
            f"work tree {disk['work_tree_kib'] / 1024:.1f} MiB; plain clone {disk['plain_clone_kib'] / 1024:.1f} MiB",
            "≈ work tree (≤ 1.1×)",
            _x(disk_ratio),
            _le(disk_ratio, 1.1),
            group="earlier",
            why=f"an instance's folder holds {disk['instance_dir_kib'] / 1024:.1f} MiB for a "
            f"{disk['work_tree_kib'] / 1024:.1f} MiB work tree.",
        ),
    ]


def _why_new(fig: dict[str, t.Any]) -> str:
    ours, floor = _median(fig.get("later")), _median(fig.get("git_clone_shared"))
    clone = _median(fig.get("git_clone_no_local"))
    if ours is None or floor is None or not clone:
        return "see the `new` table."
    budget = 0.25 * clone
    text = (
        f"`supervisor new` takes {_ms(ours)}: {_ms(ours - floor)} beyond git writing the work tree "
        f"({_ms(floor)} for `git clone --shared <mirror>`, {floor / clone:.2f}× a full clone of {_ms(clone)}). "
    )
    if floor >= budget:
        return text + f"The work tree alone is over the target's {_ms(budget)}, so no saving elsewhere can meet it."
    return text + f"Meeting 0.25× ({_ms(budget)}) leaves {_ms(budget - floor)} for everything but the work tree."


REACTIONS = (
    ("kill", "crashed", "`kill -9` of a bot → its state record says crashed", 1.0),
    ("kill", "restarted", "`kill -9` of a bot → record says alive again (new pid)", None),
    ("stop", "record", "`supervisor stop NAME` → record changes", 1.0),
    ("start", "record", "`supervisor start NAME` → record changes", 1.0),
)


def _judge_react(figs: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    react = figs.get("react") or {}
    if not react:
        return []
    backoff = float(react.get("first_backoff_s", 1.0))
    rows = []
    for part, key, figure, limit in REACTIONS:
        limit = limit if limit is not None else 1.0 + backoff
        target = f"p50 ≤ {limit:g} s" + ("" if key != "restarted" else f" (1 s + first backoff {backoff:g} s)")
        if "not_available" in react or "error" in react:
            rows.append(_missing(figure, "–", target, str(react.get("not_available") or react.get("error"))))
            continue
        value = react.get(part, {}).get(key)
        median = _median(value)
        rows.append(
            _row(
                figure,
                _s(value, 1.0, "s", 2),
                "–",
                target,
                "–" if median is None else f"{median / limit:.2f}× of limit",
                None if median is None else median <= limit,
                group=ISSUE,
                why=_why_react(react, part, key),
                note=None if median is not None else "; ".join(react.get(part, {}).get("errors", [])[:3]),
            )
        )
    return rows


def _why_react(react: dict[str, t.Any], part: str, key: str) -> str:
    value = react.get(part, {}).get(key) or {}
    if not value.get("n"):
        return "no event was seen; see the errors in the reaction section."
    tick = float(react.get("heartbeat_interval_s", 10.0))
    spread = value["max"] - value["min"]
    text = (
        f"median {value['median']:.2f} s, {value['min']:.2f}–{value['max']:.2f} s over {value['n']} events "
        f"{react.get('gap_s', '?')} s apart. "
    )
    if spread >= 0.6 * tick:
        text += (
            f"The spread is about the agent's {tick:g} s heartbeat/check interval: it notices on its tick, not on "
            f"the event (a look every {tick:g} s costs {tick / 2:g} s on average)."
        )
    else:
        text += "The spread is narrow, so the agent reacts to the event itself; the median is the reaction's own cost."
    if part in ("stop", "start"):
        command = _median(react[part].get("command"))
        after = _median(react[part].get("after_return"))
        text += f" The command itself takes {_sec(command)}; the record comes {_sec(after)} after it returned."
    return text


def _judge_restart(figs: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    restart = (figs.get("restart") or {}).get("ours", {})
    if not restart:
        return []
    figure = "remote restart → heartbeating (example bot)"
    if "not_available" in restart:
        return [_missing(figure, "–", "p50 ≤ 1 s", restart["not_available"], group="earlier")]
    beat = _median(restart.get("heartbeat"))
    reply = _median(restart.get("reply"))
    return [
        _row(figure, _s(restart.get("heartbeat"), 1.0, "s", 2), "–", "p50 ≤ 1 s", _x(beat), _le(beat, 1.0),
             group="earlier", why=f"the reply comes after {_sec(reply)}, the first heartbeat after {_sec(beat)}.")
    ]  # fmt: skip


def _judge_dashboard(figs: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    dash = figs.get("dashboard") or {}
    rows = []
    for fig in dash.get("sizes") or ([dash] if "steady_bytes_per_s" in dash else []):
        per_s = fig["steady_bytes_per_s"]
        printing = (
            f", each printing {fig['printing_lines_per_s'] // fig['n']} line/s"
            if fig.get("printing_lines_per_s")
            else ""
        )
        rows.append(
            _row(
                f"dashboard event stream per open tab (no console open), {fig['n']} bots{printing}, steady state",
                f"{per_s / 1000:.2f} KB/s ({fig['steady_bytes']} B in {fig['window_s']:.0f} s)",
                "–",
                "≤ 2 KB/s",
                _x(per_s / 2000),
                per_s <= 2000,
                group="earlier",
                why=f"{fig['steady_bytes']} B in {fig['window_s']:.0f} s after a first snapshot of "
                f"{fig['snapshot_bytes']} B.",
            )
        )
    return rows


def judge(results: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """Return one verdict row per target: figure, ours, peer, target, ratio, ok, group, why, note."""
    figs = results.get("figures", {})
    rows: list[dict[str, t.Any]] = []
    for part in (_judge_ls, _judge_start, _judge_agent, _judge_mqtt, _judge_new, _judge_react, _judge_restart,
                 _judge_dashboard):  # fmt: skip
        rows.extend(part(figs))
    return rows


def _dashboard(fig: dict[str, t.Any]) -> str:
    if "steady_bytes_per_s" not in fig:
        return f"## Dashboard event stream\n\nNot measured: {fig.get('not_available') or fig.get('error')}\n"
    sizes = fig.get("sizes") or [fig]
    printing = any(f.get("printing_lines_per_s") for f in sizes)
    return (
        "## Dashboard event stream\n\n"
        f"`supervisor dashboard` beside a real agent (heartbeats every {fig['agent_heartbeat_interval_s']:g} s, "
        f"state every {fig['agent_state_interval_s']:g} s) supervising N running bench bots"
        + (
            ", each of which prints: a Hummingbot-like bridge publishes one `log` line a second per bot"
            if printing
            else ""
        )
        + ". One client "
        "reads `/events` as a browser tab with no console open does: the whole view once, then only the records "
        "that changed. Bytes are counted on the socket, after a 5 s warm-up.\n\n"
        + _table(
            ["N", "lines printed/s", "first snapshot", f"then, over {fig['window_s']:.0f} s", "per second"],
            [
                [
                    str(f["n"]),
                    str(f.get("printing_lines_per_s", 0)),
                    f"{f['snapshot_bytes'] / 1000:.1f} KB",
                    f"{f['steady_bytes'] / 1000:.1f} KB",
                    f"{f['steady_bytes_per_s'] / 1000:.2f} KB/s",
                ]
                for f in sizes
            ],
        )
        + "\n"
    )


# -- sections -----------------------------------------------------------------------------------


def _fleet(fig: dict[str, t.Any]) -> str:
    """Issue 23: `fleet ls --json` against simulated fleets, with its own verdict (ratios ÷ target and ÷ old window)."""
    target, old = fig["target_s"], fig["old_window_s"]
    rows = []
    for row in fig["rows"]:
        seconds = row["seconds"]
        med = seconds.get("median")
        runs = len(row["exit_codes"])
        verdict = ""
        if row["bots"] == 200 and med is not None:
            verdict = f"{_x(med / target)} target ≤ {target:g} s: {_verdict(med <= target)}"
        rows.append(
            [
                f"{row['hosts']} × {row['bots_per_host']} = {row['bots']:,}",
                row["broker_limits"],
                _s(seconds, 1000, "ms"),
                _s(row.get("cpu_seconds"), 1000, "ms"),
                _x(med / old) if med is not None else "–",
                f"{row['load_average']:.1f}" if "load_average" in row else "–",
                f"{min(row['listed']):,}–{max(row['listed']):,} of {row['bots']:,}",
                f"{row['complete_runs']} of {runs}",
                ", ".join(str(c) for c in sorted(set(row["exit_codes"]))),
                verdict,
            ]
        )
    return (
        "## Fleet at scale (issue 23)\n\n"
        "The real `supervisor fleet ls --json` (a new process each time: Python start-up included) against a "
        f"simulated fleet: hosts are {fig['publishers']} MQTT connections publishing, retained, what agents "
        "publish (an availability record with its instance count and generation, one state record per bot) on a "
        "private mosquitto. *stock*: mosquitto's default per-client limits (20 in flight, 1,000 queued); "
        "*raised*: `max_inflight_messages 0`, `max_queued_messages 0`. Before issue 23 `fleet ls` waited a "
        f"fixed {old:g} s whatever the size (and listed only part of a large fleet, with exit 0). CPU time "
        "(user + system of the command) does not depend on what else the machine runs; wall time does: the "
        "highest 1-minute load average seen as each size was measured is shown.\n\n"
        + _table(
            [
                "bots (hosts × per host)",
                "broker limits",
                "wall time",
                "CPU time",
                f"÷ old {old:g} s",
                "load avg",
                "listed",
                "complete runs",
                "exit",
                "verdict",
            ],
            rows,
        )
        + "\n"
        + _fleet_dashboard(fig)
    )


def _kb(value: float | None) -> str:
    return "–" if value is None else f"{value / 1e3:,.1f} KB" if value < 1e6 else f"{value / 1e6:,.1f} MB"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}/s"


def _fleet_dashboard(fig: dict[str, t.Any]) -> str:
    """Issue 23 item 6: the real dashboard attached to a live simulated fleet, one table per size."""
    rows = [row for row in fig["rows"] if "dashboard" in row]
    if not rows:
        return ""
    targets = fig.get("targets", {})
    core, first, budget = targets["dashboard_core"], targets["first_view_s"], targets["stream_bytes_per_s"]
    rates = fig.get("rates_s", {})
    intro = (
        "\n### The dashboard on a live fleet (issue 23)\n\n"
        "The simulated hosts stay live: "
        f"{fig.get('traffic_processes')} publisher processes (one MQTT connection each, loopback only, stopped by "
        "pid, and by themselves at a deadline) refresh each bot's retained state record every "
        f"{rates.get('state', 30):g} s (a new `ts`), send its heartbeat on `hbot/{{id}}/hb` and a Hummingbot-style "
        f"log line on `hbot/{{id}}/log` every {rates.get('heartbeat', 10):g} s, and each host's own beat on "
        f"`supervisor/{{host}}/beat` every {rates.get('beat', 2):g} s, each spread evenly in time (about 38 B/s per "
        "bot, the measured rates). The `fleet ls` rows above were measured with this traffic running. The real "
        "`supervisor dashboard` (loopback, no login) is then started on the last broker setting of each size; "
        f"after it lists every bot and the traffic has run {fig.get('warm_s', 40):g} s (every record refreshed "
        "once), one `/events` stream is opened like a browser tab, and over a steady window of "
        f"{rows[0]['dashboard'].get('window_s', '?')} s its bytes, the dashboard's CPU time (user + system ÷ "
        "wall: a share of one core) and the broker's `$SYS` message counters are taken; then `GET /api/snapshot` "
        "(with `Accept-Encoding: gzip`) is timed and the states it shows are counted. *First view* is the time to "
        "the whole first frame of a newly opened `/events` and the time of `GET /api/snapshot`. Drops are the "
        "dashboard's \"queue is full\" log lines, and a tab's stream ended by the dashboard. The targets of "
        "issue 23 are set for 20,000 bots; smaller sizes are judged by the same bounds. The simulation (mosquitto "
        "and the publishers) runs on the same cores as the dashboard: its CPU share is shown, and so are the load "
        "averages (1, 5, 15 min) before and after each window.\n"
    )
    parts = [intro]
    for row in rows:
        d = row["dashboard"]
        size = f"{row['hosts']:,} hosts × {row['bots_per_host']} = {row['bots']:,} bots"
        title = f"**{size}** ({row['broker_limits']} limits)"
        if "error" in d:
            parts.append(f"{title}: the dashboard figure failed: `{d['error']}`\n")
            continue
        published = d.get("published_per_s", {})
        expected = d.get("expected_per_s", {})
        sent = sum(published.values())
        planned = sum(expected.values())
        broker = d.get("broker_per_s", {})
        load = d.get("load_average", [])
        after = d.get("load_average_after", [])
        encoding = d.get("snapshot_encoding", "identity")
        ended = d.get("stream_ended")
        snapshot_s = d.get("snapshot_s")
        frame_s = d.get("events_first_frame_s")
        frame_kb = _kb(d.get("events_first_frame_bytes"))
        brss = d.get("broker_rss_bytes") or []
        off = sum(n for state, n in d.get("instance_states", {}).items() if state != "running")
        listed = d.get("snapshot_listed", d.get("snapshot_instances", 0))
        rows_shown = d.get("snapshot_instances", 0)
        window = "" if rows_shown >= listed else f"; {rows_shown:,} rows (problems first) and a summary of all"
        table = [
            [
                "instances listed by the dashboard",
                f"{listed:,} of {row['bots']:,}"
                + (f" (all listed {d['listed_s']:.1f} s after its start)" if d.get("listed_s") else " (never all)"),
                f"{row['bots']:,}",
                _verdict(listed == row["bots"]),
            ],
            [
                "instances shown stale or not running (their records and beats are all on time)",
                f"{d.get('stale', 0):,} stale, {off:,} not running",
                "0",
                _verdict(d.get("stale") == 0 and off == 0),
            ],
            [
                "states shown",
                "instances: "
                + ", ".join(f"{k} {v:,}" for k, v in d.get("instance_states", {}).items())
                + "; hosts: "
                + ", ".join(f"{k} {v:,}" for k, v in d.get("host_states", {}).items()),
                "–",
                "",
            ],
            [
                "dashboard CPU (share of one core)",
                f"{d['cpu_core']:.2f}",
                f"< {core:g}",
                _verdict(d["cpu_core"] < core),
            ],
            ["dashboard RSS", _mib((d.get("rss_bytes") or 0) // 1024 or None), "–", ""],
            [
                "first view: `GET /api/snapshot`",
                (
                    f"{snapshot_s:.2f} s, {_kb(d.get('snapshot_wire_bytes'))} on the wire ({encoding}), "
                    f"{_kb(d.get('snapshot_bytes'))} of JSON{window}"
                ),
                f"≤ {first:g} s",
                _verdict(snapshot_s <= first),
            ],
            [
                "first view: a new `/events` to its first frame",
                "–" if frame_s is None else f"{frame_s:.2f} s, `{d.get('events_first_event')}` frame of {frame_kb}",
                f"≤ {first:g} s",
                _verdict(frame_s is not None and frame_s <= first),
            ],
            [
                "stream of one open tab (no console open)",
                f"{d['stream_bytes_per_s'] / 1e3:,.2f} KB/s" + (" (the dashboard ended the stream)" if ended else ""),
                f"≤ {budget / 1e3:g} KB/s",
                _verdict(not ended and d["stream_bytes_per_s"] <= budget),
            ],
            [
                "messages dropped by the dashboard",
                f'{d.get("drops_logged", 0):,} "queue is full" log lines'
                + "".join(f", {k}: {v}" for k, v in d.get("drops_reported", {}).items()),
                "0",
                _verdict(d.get("drops_logged", 0) == 0 and not any(d.get("drops_reported", {}).values())),
            ],
            [
                "simulated traffic sent (planned)",
                f"{_rate(sent)} ({_rate(planned)}): "
                + ", ".join(f"{k} {_rate(published.get(k))}" for k in ("state", "heartbeat", "log", "beat")),
                "–",
                "",
            ],
            [
                "broker: MQTT messages (of any type) received / sent",
                f"{_rate(broker.get('received'))} / {_rate(broker.get('sent'))}"
                + (
                    f"; mosquitto RSS {brss[0] / 2**20:.0f} → {brss[1] / 2**20:.0f} MiB over the window"
                    if len(brss) == 2
                    else ""
                )
                + (
                    ": the broker sends less than it receives, the dashboard falls behind"
                    if broker.get("sent") and broker.get("received") and broker["sent"] < 0.9 * broker["received"]
                    else ""
                ),
                "–",
                "",
            ],
            [
                "CPU of the simulation meanwhile (share of one core)",
                f"mosquitto {d['broker_cpu_core']:.2f}, publishers {d['publishers_cpu_core']:.2f}"
                if "broker_cpu_core" in d
                else "–",
                "–",
                "",
            ],
            [
                "load average before → after the window",
                " / ".join(f"{x:.1f}" for x in load) + " → " + " / ".join(f"{x:.1f}" for x in after),
                "–",
                "",
            ],
        ]
        parts.append(title + "\n\n" + _table(["figure", "measured", "target", "verdict"], table) + "\n")
    return "\n".join(parts)


def _startup(fig: dict[str, t.Any]) -> str:
    rows = [[k, _s(v, digits=1)] for k, v in fig.get("times", {}).items()]
    imports = [[f"`supervisor {k}`", ", ".join(v) or "–"] for k, v in fig.get("imports", {}).items()]
    return (
        "## Start-up of the `supervisor` command\n\n"
        "Part of every figure below. Median (min–max) wall time of one process.\n\n"
        + _table(["command", "wall time"], rows)
        + "\n\nHeavy third-party modules each command imports (of git, paho, yaml, psutil, libtmux, click; read from "
        "`-X importtime` of the installed `supervisor` command, so a fast path that skips click counts as such):\n\n"
        + _table(["command", "imports"], imports)
        + "\n"
    )


def _ls(fig: dict[str, t.Any]) -> str:
    cols = ["ours", "ours --no-foreign", "ours (agent)", "ours --no-foreign (agent)", "supervisorctl", "pm2", "tmux"]

    def cell(block: dict[str, t.Any], col: str) -> str:
        value = block.get(col) or {}
        return "not available" if "not_available" in value else _s(value, digits=1)

    rows = [
        [str(n), str(_at(fig, n).get("running_listed", "?"))] + [cell(_at(fig, n), c) for c in cols]
        for n in _sizes(fig)
    ]
    notes = {_at(fig, n).get("ours (agent)", {}).get("not_available") for n in _sizes(fig)} - {None}
    same = [
        f"{n}: " + ("same records" if _at(fig, n)["same_records"] else "; ".join(_at(fig, n)["record_differences"]))
        for n in _sizes(fig)
        if "same_records" in _at(fig, n)
    ]
    text = (
        "## `supervisor ls --json` with N running instances\n\n"
        "Peers: `supervisorctl status` (N programs), `pm2 jlist` (N apps), `tmux list-sessions` (our N sessions). "
        "Each command is run once to warm up, then the tools are timed round-robin (20 rounds at the smallest and "
        "largest N, 10 between). Our `ls` is measured twice: with no agent (the direct path), and while an agent "
        "with default intervals runs over the same home and answers on `$SUPERVISOR_HOME/agent.sock` (the "
        "agent's columns). `--no-foreign` skips the look for foreign bot sessions (diagnostic, not a target). "
        "The three fleets run at the same time, so the host holds about 3N bots (plus our N bash wrappers) "
        "during these figures.\n\n"
        + _table(
            [
                "N",
                "running listed",
                "supervisor ls --json",
                "… --no-foreign",
                "… agent running",
                "… --no-foreign, agent running",
                "supervisorctl status",
                "pm2 jlist",
                "tmux list-sessions",
            ],
            rows,
        )
        + "\n"
    )
    if same:
        text += (
            "\nThe agent's records against the direct path's (cpu, rss and uptime aside): " + ". ".join(same) + ".\n"
        )
    for note in sorted(notes):
        text += f"\n`ls` with an agent running was not measured: {note}\n"
    return text


def _start(fig: dict[str, t.Any]) -> str:
    tools = ["ours", "ours --wait", "supervisord", "pm2"]
    sizes = _sizes(fig)
    shown = [k for k in tools if any(_at(fig, n).get(k) for n in sizes)]
    rows = []
    for n in sizes:
        block = _at(fig, n)
        rows.append(
            [str(n)]
            + [_s(block.get(k, {}).get("all_alive"), 1.0, "s", 2) for k in shown]
            + [_s(block.get(k, {}).get("command"), 1.0, "s", 2) for k in shown]
        )
    waits = any(_at(fig, n).get("default_waits_for_ready") for n in sizes)
    default = (
        "`supervisor start --all` as it comes (this version has no `--wait` and waits for each bot's ready line)"
        if waits
        else "`supervisor start --all` as it comes (returns once the launches are reported; `ours --wait` also "
        "waits for every ready line)"
    )
    reps = {n: _at(fig, n).get("ours", {}).get("all_alive", {}).get("n") for n in sizes}
    label = {"ours": "ours", "ours --wait": "ours --wait", "supervisord": "supervisord", "pm2": "pm2"}
    return (
        "## Start N stopped bots\n\n"
        f"{default}, `supervisorctl start all` (programs with `startsecs=0`, so supervisord does not add its fixed "
        "1 s check), `pm2 start ecosystem.json` (warm daemon, apps deleted before). *All alive* is the time until "
        "the command returned **and** every bot process exists; *command* is the command's own wall time. Before "
        "each of our runs the tmux server is stopped, so the time includes starting it. Runs per size: "
        + ", ".join(f"{n}: {r}" for n, r in reps.items())
        + ".\n\n"
        + _table(
            ["N"] + [f"{label[k]}: all alive" for k in shown] + [f"{label[k]}: command" for k in shown],
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
    for label, key in (
        ("supervisor agent (`status` of one instance)", "ours"),
        ("supervisor agent, Hummingbot `status` relayed into example-bot's console", "relay"),
        ("bare paho echo pair", "echo"),
    ):
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


def _react(fig: dict[str, t.Any]) -> str:
    if "not_available" in fig:
        return f"## Reaction to events\n\nNot available: {fig['not_available']}\n"
    rows = []
    for part, key, figure, _ in REACTIONS:
        value = fig.get(part, {})
        rows.append([figure, _s(value.get(key), 1.0, "s", 2)])
        if part in ("stop", "start"):
            rows.append([f"… the command `supervisor {part} NAME` itself", _s(value.get("command"), 1.0, "s", 2)])
            rows.append(
                [f"… the record after `supervisor {part}` returned", _s(value.get("after_return"), 1.0, "s", 2)]
            )
    errors = [f"\n- {part}: {e}" for part in ("kill", "stop", "start") for e in fig.get(part, {}).get("errors", [])]
    return (
        "## Reaction to events\n\n"
        "A real `supervisor agent` with its default intervals (heartbeats every "
        f"{fig.get('heartbeat_interval_s', 10):g} s, state every {fig.get('state_interval_s', 30):g} s, first "
        f"backoff step {fig.get('first_backoff_s', 1):g} s) "
        f"supervises {fig.get('bots')} bench bots; a paho client on the same mosquitto records every retained "
        "`supervisor/{host}/{instance}/state` record as it arrives. Each event hits another bot, "
        f"{fig.get('gap_s')} s after the one before, so every crash is that bot's first and the events fall on every "
        "phase of a polling agent's tick. *Crashed*: the first record after the `kill -9` of the bot's process that "
        "leaves the alive states, which must say `crashed`. *Alive again*: the first record in an alive state "
        "(`starting`, `running`, `waiting-login`) with a new pid. *stop*/*start*: from the start of the command to "
        "the first record that leaves (stop) or enters (start) the alive states.\n\n"
        + _table(["span", "median (min–max)"], rows)
        + ("\n\nErrors:" + "".join(errors) if errors else "")
        + (f"\n\nThe agent exited during the figure: {fig['agent_exited']}" if fig.get("agent_exited") else "")
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
        "The example bot (`example-bot` recipe), "
        f"{(ours.get('heartbeat') or {}).get('n', 0)} restarts over MQTT on our namespace. The agent runs with "
        "`--heartbeat-interval 1` here so that waiting for the next periodic beat adds at most 1 s.\n\n"
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

    returned = ours.get("return") or {}

    def back(key: str) -> str:
        return f"{returned[key] * 1000:.0f} ms" if returned.get("n") else "–"

    def per_s(key: str) -> str:
        return f"{ours[key]:.0f}/s" if ours.get(key) else "–"

    rows = [
        ["webhook POST → line in the bot's console, p50", ms("median")],
        ["webhook POST → line in the bot's console, p99", ms("p99")],
        ["webhook POST → line in the bot's console, min–max", f"{ms('min')} – {ms('max')}"],
        [f"accepted events per second ({ours.get('accepted')} of {ours.get('burst')}, 4 keep-alive clients)",
         per_s("accepted_per_s")],
        ["… journaled and published (every PUBACK in) per second, same burst", per_s("published_per_s")],
        [f"agent back online → the last of {ours.get('waiting_events')} waiting events in the console, median",
         back("median")],
        ["… min–max", f"{back('min')} – {back('max')}"],
    ]  # fmt: skip
    errors = "".join(f"\n- {e}" for e in ours.get("errors", []))
    return (
        "## External events (webhooks)\n\n"
        f"`supervisor events serve` with one route to the example bot ({latency.get('n', 0)} events, one at a time, "
        "text/plain like a TradingView alert): HTTP accept and SQLite commit (`synchronous=FULL`), QoS 1 publish, "
        "the agent's console line typed through tmux, until the bot's `ALERT` line is in its console log (polled "
        "every 1 ms). The burst goes to a plugin-style target (published on the broker's PUBACK; no agent types), "
        "so it measures the receiver: each accepted event is one fsync'd commit before its 202. *Agent's return*: "
        f"the agent is stopped, {ours.get('waiting_events')} events are posted (they wait), the agent is started "
        f"again; from its retained `online` record to the last of them in the console ({returned.get('n', 0)} "
        "rounds).\n\n" + _table(["figure", "value"], rows) + ("\n\nErrors:" + errors if errors else "") + "\n"
    )


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:.0f} MiB" if kib is not None else "–"


def _hummingbot(fig: dict[str, t.Any]) -> str:
    ours = fig.get("ours", {})
    if "not_available" in ours:
        return f"## Real Hummingbot (issue 20)\n\nNot available: {ours['not_available']}\n"
    count, first, later = ours["count"], ours["first_new"], _median(ours.get("later_new"))
    if ours.get("first_built", True):
        compiling, against = first, f"first `new` (it compiled): {first:.0f} s"
    else:
        compiling = (ours.get("recorded_build_seconds") or 0.0) + first
        against = (
            f"a `new` that compiles: {compiling:.0f} s (the cached build took {ours.get('recorded_build_seconds')} s "
            f"on {ours.get('recorded_build_at')}, plus this run's first `new`)"
        )
    ratio = _ratio(later, compiling)
    disk = ours.get("disk", {})
    verdicts = [
        [
            "`new`, 2nd..Nth instance of one commit",
            _s(ours.get("later_new"), 1.0, "s", 1),
            against,
            "≤ 15 s and ≤ 0.1× the first",
            _x(ratio),
            _verdict(later is not None and later <= 15 and ratio is not None and ratio <= 0.1),
        ],
        [
            f"`update` of {count} running bots to one commit (a `.py` changed)",
            f"{ours['update_builds']} build(s)",
            "–",
            "no build (the build's inputs are unchanged)",
            "–",
            _verdict(ours["update_builds"] == 0),
        ],
    ]
    first_what = "compiled into an empty build cache" if ours.get("first_built", True) else "the cached build restored"
    rows = [
        [f"`supervisor new`, first of the run ({first_what}; shared venv reused)", f"{first:.1f} s"],
        [f"`supervisor new`, 2nd..{count}th of the same commit", _s(ours.get("later_new"), 1.0, "s", 1)],
        [f"`start --all --wait`, {count} bots, until every bridge is connected", f"{ours['start_all_wait']:.1f} s"],
        ["resident memory per bot once ready", _s(ours.get("rss_mib"), 1.0, "MiB", 0)],
        [
            "`kill -9` of a bot → the agent has it running (ready) again",
            f"{ours['restart_after_kill']:.1f} s" if ours.get("restart_after_kill") else "not measured",
        ],
        [f"resident memory of the {count} bots", f"{ours['rss_total_mib']:.0f} MiB"],
        [f"`update` of {count} running bots to one commit, one after another", f"{ours['update_all']:.1f} s"],
        ["… each (stop, checkout, install, start until ready)", _s(ours.get("update_each"), 1.0, "s", 1)],
        ["disk: the first instance (checkout, logs; `build/` if it compiled)", _mib(disk.get("first_instance_kib"))],
        ["disk: a later instance (the shared `.so` hard links counted)", _mib(disk.get("later_instance_kib"))],
        ["disk: the build cache entry (the `.so` files, stored once)", _mib(disk.get("build_entry_kib"))],
    ]  # fmt: skip
    return (
        "## Real Hummingbot (issue 20)\n\n"
        "`make bench-hummingbot` (`bench/realbot.py`): Hummingbot 2.16.0 from PyPI's sdist as a git tree, the "
        "`hummingbot-venv` recipe, Python 3.12. The shared venv comes from `$BOT_SUPERVISOR_CACHE/venvs` (pip is "
        "not measured). The Cython build is the one in `$BOT_SUPERVISOR_CACHE/builds` if there is one "
        "(`BENCH_HB_COLD=1` starts from an empty build cache). That an update to new `.pyx` sources of N bots "
        "builds once is checked by `tests/test_buildcache.py`.\n\n"
        + _table(["figure", "ours", "compared with", "target", "ratio", "verdict"], verdicts)
        + "\n\n"
        + _table(["figure", "median (min–max)"], rows)
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


def _verdict_table(rows: list[dict[str, t.Any]]) -> str:
    return _table(
        ["figure", "ours", "peer(s), same run", "target", "ratio", "verdict"],
        [[v["figure"], v["ours"], v["peer"], v["target"], v["ratio"], _verdict(v["ok"])] for v in rows],
    )


def _why(verdicts: list[dict[str, t.Any]]) -> str:
    """Return the section on each missed or unmeasured target, written from this run's figures."""
    missed: dict[tuple[str, str], list[str]] = {}  # (figure, why) -> the targets it misses
    unmeasured: dict[str, str] = {}
    for v in verdicts:
        if v["ok"] is None and v.get("note"):
            unmeasured.setdefault(v["figure"], v["note"])
        elif v["ok"] is False:
            missed.setdefault((v["figure"], v.get("why") or "see below."), []).append(v["target"])
    lines = [f"- {figure}: not measured — {note}" for figure, note in unmeasured.items()]
    lines += [f"- {figure} ({'; '.join(targets)}): {why}" for (figure, why), targets in missed.items()]
    if not lines:
        return ""
    return (
        "### Why a target is not met or not measured\n\n"
        "Each line is written from this run's figures.\n\n" + "\n".join(lines) + "\n"
    )


def _durations(meta: dict[str, t.Any]) -> str:
    durations = meta.get("durations_s") or {}
    if not durations:
        return ""
    label = {"scaling": "scaling: ls, start, agent"}
    rows = [[label.get(name, name), f"{seconds // 60} min {seconds % 60:02d} s"] for name, seconds in durations.items()]
    total = meta.get("duration_s")
    if isinstance(total, int) and not meta.get("partial"):
        rows.append(["**whole run** (with set-up and clean-up)", f"{total // 60} min {total % 60:02d} s"])
    return "## How long each part took\n\n" + _table(["part", "wall time"], rows) + "\n"


def _full_run_minutes(meta: dict[str, t.Any]) -> str:
    total = meta.get("duration_s")
    if isinstance(total, int) and not meta.get("partial") and not meta.get("args", {}).get("quick"):
        return f"{round(total / 60)} min for this run"
    return "about 20 min on 2 cores"


def section(name: str, fig: dict[str, t.Any]) -> str:
    """Return the section of one opt-in figure ("" for a figure without one)."""
    if name == "hummingbot":
        if "error" in fig and len(fig) == 1:
            return f"## Real Hummingbot (issue 20)\n\nThis figure failed in this run: `{fig['error']}`\n"
        return _hummingbot(fig)
    return ""


def render(results: dict[str, t.Any], png_name: str) -> str:
    """Return the whole ``docs/benchmarks.md``."""
    meta = results.get("meta", {})
    figs = results.get("figures", {})
    machine = meta.get("machine", {})
    verdicts = judge(results)
    newest = [v for v in verdicts if v.get("group") in CURRENT]
    current = [v for v in verdicts if v.get("group") == ISSUE]
    earlier = [v for v in verdicts if v.get("group") not in (ISSUE, *CURRENT)]
    met = sum(1 for v in current if v["ok"])
    parts = [
        "# Benchmarks\n",
        "Generated by `make bench` (`bench/run.py`) — do not edit by hand. "
        f"Run started {meta.get('started', '?')}; this run took {meta.get('duration_s', '?')} s"
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
        f"## Targets of issues {CURRENT[0]}–{CURRENT[-1]}\n",
        f"{sum(1 for v in newest if v['ok'])} of {len(newest)} met. Medians; ratios are ours ÷ peer (or ÷ limit).\n",
        _verdict_table(newest) + "\n",
        f"## Targets of issue {ISSUE}\n",
        f"{met} of {len(current)} met. Medians (min–max); ratios are ours ÷ peer (or ÷ limit).\n",
        _verdict_table(current) + "\n",
    ]
    if earlier:
        parts += ["### Earlier targets, kept as regression checks\n", _verdict_table(earlier) + "\n"]
    why = _why(verdicts)
    if why:
        parts.append(why)
    parts.append(f"![cost against number of instances]({png_name})\n")
    for key, fn in (
        ("startup", _startup),
        ("ls", _ls),
        ("start", _start),
        ("agent", _agent),
        ("mqtt", _mqtt),
        ("react", _react),
        ("restart", _restart),
        ("new", _new),
        ("dashboard", _dashboard),
        ("events", _events),
        ("hummingbot", _hummingbot),
        ("fleet", _fleet),
    ):
        fig = figs.get(key)
        if not fig:
            continue
        if "error" in fig and len(fig) == 1:
            parts.append(f"## {key}\n\nThis figure failed in this run: `{fig['error']}`\n")
            continue
        parts.append(fn(fig))
    durations = _durations(meta)
    if durations:
        parts.append(durations)
    parts.append(
        "## How to reproduce\n\n"
        "```sh\n"
        f"make bench                                  # all figures, sizes 10,50,100,200 ({_full_run_minutes(meta)})\n"
        "make bench BENCH_ARGS=--quick               # smoke run (a few minutes)\n"
        "make bench BENCH_ARGS='--only ls,start --sizes 10,100'\n"
        "make bench-hummingbot                       # the real-Hummingbot figure (about 10 minutes)\n"
        "```\n\n"
        "`make bench` installs what it compares against under `bench/_peers/` (git-ignored): supervisor 4.x from "
        "PyPI in its own venv (it clashes with our import name), pm2 from npm, matplotlib in a plot venv. "
        "Everything runs isolated in a temp folder: its own `SUPERVISOR_HOME`, tmux sockets (`TMUX_TMPDIR`), "
        "`SCREENDIR`, `PM2_HOME`, supervisord socket and a mosquitto on a free loopback port; every process is "
        "stopped by pid at the end. Every tool runs the same bot (`bench/bot.py`) with the same Python. Raw "
        "numbers: `bench/results/results.json`.\n"
    )
    return "\n".join(parts)
