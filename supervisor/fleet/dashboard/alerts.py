"""Alerts: a bot turning bad, a host going offline, heartbeats stopping, and each one's all-clear; sent to a webhook.

The JSON body carries the text as ``text`` (Slack, Mattermost, Telegram's ``sendMessage``)
and as ``content`` (Discord). Stdlib only; imports nothing of ours but the package's error.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import queue
import re
import threading
import time
import typing as t
import urllib.error
import urllib.parse
import urllib.request

from supervisor.fleet.dashboard import DashboardError

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 10.0
MAX_QUEUED = 200
CLEAR_AFTER = 10.0
"""Seconds a problem must look fine before its all-clear (a bot flickering bad and good is one problem)."""
SETTLE_AFTER = 10.0
HOST_GRACE = 5.0
"""Seconds a host must stay offline before it is announced (its will can come just before our own disconnection)."""
"""Seconds after the dashboard reaches the broker again before it judges hosts and bots."""


def check_webhook_url(url: str, source: str) -> str:
    """Return ``url`` if it is an http(s) URL with a host.

    Raises
    ------
    DashboardError
        Naming ``source``, for anything else.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"{source}: must be an http:// or https:// URL with a host, like https://hooks.slack.com/services/…."
        raise DashboardError(msg)
    return url


def shown_url(url: str | None) -> str | None:
    """Return the part of a webhook URL that may be shown (its path holds the secret)."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


def _bad_now(snapshot: Mapping[str, t.Any]) -> tuple[dict[str, tuple[str, str, str]], set[str]]:
    """Return what needs attention in ``snapshot`` (key -> host, what, why) and the offline hosts."""
    bad: dict[str, tuple[str, str, str]] = {}
    offline = set()
    for host in snapshot["hosts"]:
        if not host["online"]:
            offline.add(host["host"])
            why = (
                "stopped answering (its agent is connected but hung)"
                if host.get("state") == "unresponsive"
                else "went offline"
            )
            bad[f"host {host['host']}"] = (host["host"], f"host {host['host']}", why)
    for item in snapshot["instances"]:
        if item["health"] != "bad" or item["host"] in offline:
            continue
        why = "heartbeats stopped" if item.get("alert") == "no heartbeat" else (item.get("alert") or item["state"])
        bad[item["target"]] = (item["host"], item["target"], str(why))
    return bad, offline


def _alert(kind: str, target: str | None, text: str) -> dict[str, t.Any]:
    return {"kind": kind, "target": target, "text": text}


def _grouped(kind: str, host: str, problems: list[_Problem], say: Callable[[_Problem], str]) -> dict[str, t.Any]:
    """One message for what began or ended on one host in one view."""
    if len(problems) == 1:
        [problem] = problems
        colon = "" if problem.what.startswith("host ") else ":"
        return _alert(kind, problem.what, f"{problem.what}{colon} {say(problem)}")
    parts = "; ".join(f"{p.what.rpartition('/')[2]} {say(p)}" for p in problems)
    head = "need attention" if kind == "problem" else "all clear"
    return _alert(kind, host, f"{host}: {len(problems)} {head}: {parts}")


def _cleared(problem: _Problem, now: float) -> str:
    lasted = _duration((problem.fine_since or now) - problem.since)
    again = f", bad again {problem.repeats} time{'s' if problem.repeats != 1 else ''}" if problem.repeats else ""
    if problem.what.startswith("host "):
        return f"is back online (offline for {lasted}{again})"
    return f"all clear (was {', '.join(problem.kinds)}, for {lasted}{again})"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def post_webhook(url: str, text: str) -> dict[str, t.Any]:
    """POST one alert and return ``{"ok", "status", "error"}`` (never raises)."""
    body = json.dumps({"text": text, "content": text}).encode()
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "bot-supervisor"}
    )
    try:
        with urllib.request.urlopen(req, timeout=WEBHOOK_TIMEOUT) as response:
            return {"ok": 200 <= response.status < 300, "status": response.status, "error": None}
    except urllib.error.HTTPError as e:
        return {"ok": False, "status": e.code, "error": f"the webhook answered HTTP {e.code}"}
    except (OSError, ValueError) as e:
        return {"ok": False, "status": None, "error": f"the webhook could not be reached: {e}"}


@dataclasses.dataclass
class _Problem:
    """One open problem: a bot (``HOST/INSTANCE``) or a host that needs attention, from when it began until it ends."""

    host: str
    what: str
    """What the alert names: the bot's target, or ``host NAME``."""
    since: float
    why: str
    announced: bool
    pending: bool = False
    """Seen, not yet announced: a host is announced offline only after ``host_grace`` seconds."""
    kinds: list[str] = dataclasses.field(default_factory=list)
    """Each kind of trouble it showed, once ('crashed', 'flapping'), for the all-clear."""
    repeats: int = 0
    """Times it turned bad again (or changed its reason) while open: summarised, never sent one by one."""
    fine_since: float | None = None


class Alerter:
    """Turns views into problems: one alert when a problem begins, one all-clear when it ends.

    A problem is a bot or a host, and stays open until it has looked fine for
    ``clear_after`` seconds, so a bot that flickers bad and good is one problem whose
    repeats are counted in its all-clear. What begins (or ends) in one view is sent
    as one message per host. The bots of an offline host are that host's problem;
    while the dashboard itself has lost the broker it says so once and judges nothing
    else; back, it waits ``settle_after`` seconds for heartbeats before judging again.
    What is bad when first seen (at start, or a late retained record) raises no alert.
    """

    def __init__(
        self,
        webhook_url: str | None,
        on_alert: Callable[[dict[str, t.Any]], None],
        *,
        clock: Callable[[], float] = time.time,
        clear_after: float = CLEAR_AFTER,
        settle_after: float = SETTLE_AFTER,
        host_grace: float = HOST_GRACE,
    ) -> None:
        self.webhook_url = webhook_url
        self._on_alert = on_alert
        self._clock = clock
        self.clear_after = clear_after
        self.settle_after = settle_after
        self.host_grace = host_grace
        self._problems: dict[str, _Problem] = {}
        self._known: set[str] = set()
        """The hosts and bots of the last judged view."""
        self._reconnected_at: float | None = None
        self.judged = 0
        """How many views have been judged (none while the broker is lost or just back)."""
        self._queue: queue.Queue[str | None] = queue.Queue(MAX_QUEUED)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the webhook sender (only when a URL is configured)."""
        if self.webhook_url:
            self._thread = threading.Thread(target=self._sender, name="dashboard-webhook", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Let queued alerts go out (a few seconds at most), then end the sender."""
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=1)
            except queue.Full:
                return
            self._thread.join(WEBHOOK_TIMEOUT + 1)

    @property
    def judging(self) -> bool:
        """Whether views are judged now: not while the broker is lost, nor ``settle_after`` s after it is back."""
        if "broker" in self._problems:
            return False
        return self._reconnected_at is None or self._clock() - self._reconnected_at >= self.settle_after

    def observe(self, snapshot: Mapping[str, t.Any]) -> list[dict[str, t.Any]]:
        """Open and close problems from one view; return the alerts sent (problems first, then all-clears)."""
        now = self._clock()
        alerts: list[dict[str, t.Any]] = []
        if not snapshot["connected"]:
            self._reconnected_at = None
            # A host seen going offline a moment before: likely the broker's going, not the host's.
            for key in [k for k, p in self._problems.items() if p.pending]:
                del self._problems[key]
            if "broker" not in self._problems:
                self._problems["broker"] = _Problem("", "the dashboard", now, "", announced=bool(self._known))
                if self._known:
                    why = f"lost the broker {snapshot.get('broker', '')}; the fleet's state is unknown until it is back"
                    alerts.append(_alert("broker-down", None, f"the dashboard {why.strip()}"))
            for alert in alerts:
                self.raise_alert(alert)
            return alerts
        broker = self._problems.pop("broker", None)
        if broker is not None:
            self._reconnected_at = now
            if broker.announced:
                alerts.append(_alert("all-clear", None, "the dashboard reached the broker again"))
        if self._reconnected_at is not None and now - self._reconnected_at < self.settle_after:
            for alert in alerts:
                self.raise_alert(alert)
            return alerts  # heartbeats are still coming in after the reconnection
        self.judged += 1
        bad, offline = _bad_now(snapshot)
        # Something bad when first seen (the first view, a retained record arriving late) was bad before we looked.
        known, self._known = self._known, {f"host {h['host']}" for h in snapshot["hosts"]}
        self._known |= {i["target"] for i in snapshot["instances"]}
        begun: dict[str, list[_Problem]] = collections.defaultdict(list)
        for key, (host, what, why) in bad.items():
            problem = self._problems.get(key)
            if problem is None:
                problem = _Problem(host, what, now, why, announced=False, pending=key in known)
                self._problems[key] = problem
            elif problem.fine_since is not None or problem.why != why:
                problem.repeats += 1
                problem.why = why
            problem.fine_since = None
            kind = re.split(r"[:(]", why, maxsplit=1)[0].strip(" ,")
            if kind not in problem.kinds:
                problem.kinds.append(kind)
            if problem.pending and now - problem.since >= (self.host_grace if key.startswith("host ") else 0.0):
                problem.pending, problem.announced = False, True
                begun[host].append(problem)
        ended: dict[str, list[_Problem]] = collections.defaultdict(list)
        for key, problem in list(self._problems.items()):
            if key in bad or key == "broker" or (problem.host in offline and not key.startswith("host ")):
                continue  # a bot of an offline host is neither fine nor bad: its host's problem says it
            if problem.pending:
                del self._problems[key]  # over before it was announced
                continue
            if problem.fine_since is None:
                problem.fine_since = now
            if now - problem.fine_since >= self.clear_after:
                del self._problems[key]
                if problem.announced:
                    ended[problem.host].append(problem)
        for host, problems in sorted(begun.items()):
            alerts.append(_grouped("problem", host, problems, lambda p: p.why))
        for host, problems in sorted(ended.items()):
            alerts.append(_grouped("all-clear", host, problems, lambda p: _cleared(p, now)))
        for alert in alerts:
            self.raise_alert(alert)
        return alerts

    def raise_alert(self, alert: dict[str, t.Any]) -> None:
        """Show ``alert`` on open pages and queue it for the webhook."""
        self._on_alert(alert)
        if self.webhook_url:
            try:
                self._queue.put_nowait(f"bot-supervisor: {alert['text']}")
            except queue.Full:
                logger.warning("webhook queue is full; dropping alert %r", alert["text"])

    def test(self) -> dict[str, t.Any]:
        """Send a test message to the webhook now and return how it went."""
        if not self.webhook_url:
            return {"ok": False, "status": None, "error": "no webhook_url in dashboard.toml"}
        return post_webhook(self.webhook_url, "bot-supervisor: test alert from the dashboard")

    def _sender(self) -> None:
        assert self.webhook_url is not None
        while True:
            text = self._queue.get()
            if text is None:
                return
            result = post_webhook(self.webhook_url, text)
            if not result["ok"]:
                logger.warning("alert not delivered: %s", result["error"])
                self._on_alert({"kind": "webhook", "target": None, "text": f"alert not delivered: {result['error']}"})
