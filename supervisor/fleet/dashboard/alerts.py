"""Alerts: a bot turning bad, a host going offline, heartbeats stopping; sent to an outgoing webhook.

The JSON body carries the text as ``text`` (Slack, Mattermost, Telegram's ``sendMessage``)
and as ``content`` (Discord). Stdlib only; imports nothing of ours but the package's error.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
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


class Alerter:
    """Turns view changes into alerts: each goes to the page (``on_alert``) and to the webhook, if any."""

    def __init__(self, webhook_url: str | None, on_alert: Callable[[dict[str, t.Any]], None]) -> None:
        self.webhook_url = webhook_url
        self._on_alert = on_alert
        self._previous: dict[str, t.Any] | None = None
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

    def observe(self, snapshot: Mapping[str, t.Any]) -> list[dict[str, t.Any]]:
        """Compare with the previous view and raise an alert for each thing that went wrong since."""
        previous, self._previous = self._previous, dict(snapshot)
        if previous is None:
            return []  # the first view is the baseline: no storm of alerts at start
        alerts = []
        hosts_before = {h["host"]: h for h in previous["hosts"]}
        for host in snapshot["hosts"]:
            before = hosts_before.get(host["host"])
            if before is not None and before["online"] and not host["online"]:
                alerts.append(
                    {"kind": "host-offline", "target": host["host"], "text": f"host {host['host']} went offline"}
                )
        items_before = {i["target"]: i for i in previous["instances"]}
        for item in snapshot["instances"]:
            before = items_before.get(item["target"])
            if before is None or before["health"] == "bad" or item["health"] != "bad":
                continue
            kind = "heartbeat" if item.get("alert") == "no heartbeat" else "bad"
            why = "heartbeats stopped" if kind == "heartbeat" else (item.get("alert") or item["state"])
            alerts.append({"kind": kind, "target": item["target"], "text": f"{item['target']}: {why}"})
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
