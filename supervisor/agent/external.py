"""External events for bots without Hummingbot's MQTT plugin: ``{ns}/{id}/external/event/#`` -> console.

A recipe's ``events`` table maps an event name (or ``*``) to a console line such
as ``buy {amount}``; the line is typed literally, like ``send``, with the
event's values checked by :func:`~supervisor.consoletext.check_console_text`.
An unmapped or refused event is logged and reported as an agent event; nothing
reaches a shell. The agent calls :meth:`ExternalEvents.handle` from its worker pool.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
import time
import typing as t

from supervisor.consoletext import check_console_text
from supervisor.core.recipe import OPTIONAL_RE, VAR_RE, render
from supervisor.errors import SupervisorError

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from supervisor.core.manager import Manager

logger = logging.getLogger(__name__)

DEDUPE_SECONDS = 300.0
"""A byte-identical event (a QoS 1 redelivery, or a receiver re-sending after a crash) is typed once."""
MAX_SEEN = 10_000


def event_values(name: str, payload: bytes) -> dict[str, str]:
    """Return the placeholders of an event: ``name``, ``payload`` and each member of its ``data``.

    ``payload`` is the alert's text when the sender posted plain text (``data`` is
    then ``{"message": text}``), else the compact JSON of ``data``. Members that are
    objects or lists are given as compact JSON.
    """
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError):
        message = None
    data = message.get("data") if isinstance(message, dict) else None
    if not isinstance(data, dict):
        data = {}
    values: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, bool):
            values[key] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            values[key] = str(value)
        elif value is not None:
            values[key] = json.dumps(value, separators=(",", ":"))
    text = data.get("message")
    values["payload"] = (
        text if set(data) == {"message"} and isinstance(text, str) else json.dumps(data, separators=(",", ":"))
    )
    values["name"] = name
    return values


def render_event_line(template: str, values: Mapping[str, str], what: str) -> str:
    """Fill an event's console line; ``[...]`` parts whose values are missing are left out.

    Raises
    ------
    SupervisorError
        A placeholder outside ``[...]`` has no value.
    UnsafeConsoleText
        A used value, or the whole line, holds a control character.
    """
    outside = OPTIONAL_RE.sub("", template)
    missing = [name for name in VAR_RE.findall(outside) if not values.get(name)]
    if missing:
        msg = f"{what}: the event has no value for {', '.join(repr(m) for m in dict.fromkeys(missing))}."
        raise SupervisorError(msg)
    for name in dict.fromkeys(VAR_RE.findall(template)):
        if name in values:
            check_console_text(values[name], what=f"{what}: value '{name}'")
    line = render(template, values, optional_groups=True).strip()
    return check_console_text(line, what=f"{what}: the console line")


class ExternalEvents:
    """Types mapped external events into the consoles of this host's plugin-less bots.

    Parameters
    ----------
    manager
        The agent's core.
    namespace
        Hummingbot's topic namespace.
    report
        ``report(instance, message)``: the agent's event (``{own}/{instance}/events``).
    audit
        ``audit(**entry)``: one audit log line.
    """

    def __init__(
        self,
        manager: Manager,
        namespace: str,
        *,
        report: Callable[[str, str], None],
        audit: Callable[..., None],
    ) -> None:
        self.manager = manager
        self.namespace = namespace
        self.report = report
        self.audit = audit
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def topic_filter(self) -> str:
        """The subscription: every instance's external events."""
        return f"{self.namespace}/+/external/event/#"

    def _first_sight(self, topic: str, payload: bytes) -> bool:
        key = hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()
        now = time.monotonic()
        with self._lock:
            while self._seen and (len(self._seen) > MAX_SEEN or now - next(iter(self._seen.values())) > DEDUPE_SECONDS):
                self._seen.popitem(last=False)
            if key in self._seen:
                return False
            self._seen[key] = now
            return True

    def handle(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        """Act on one event published to ``{ns}/{id}/external/event/{name...}``.

        A retained event is never typed: the broker would replay it at every reconnect.
        """
        instance, _, rest = topic[len(self.namespace) + 1 :].partition("/")
        name = rest.removeprefix("external/event/").replace("/", ".")
        if not self.manager.has(instance):
            return  # another host's bot, or a Hummingbot with its own bridge
        if not self._first_sight(topic, payload):
            logger.info("instance %s: ignoring a repeated external event %s", instance, name)
            return
        recipe = self.manager.recipe(instance)
        if recipe.mqtt.plugin:
            return  # its own bridge listens on this topic (Hummingbot's listeners, not the console)
        if retained:
            message = f"external event '{name}' ignored: it is a retained message (replayed at every connect)."
            self._refuse(instance, name, message, level=logging.WARNING)
            return
        template = recipe.external_events.get(name) or recipe.external_events.get("*")
        if template is None:
            message = f"external event '{name}' ignored: recipe '{recipe.name}' maps no console line to it."
            self._refuse(instance, name, message, level=logging.INFO)
            return
        what = f"instance '{instance}': external event '{name}'"
        try:
            line = render_event_line(template, event_values(name, payload), what)
            self.manager.send(instance, line)
        except SupervisorError as e:
            self._refuse(instance, name, f"{e} Not typed.", level=logging.WARNING)
            return
        logger.info("instance %s: external event %s typed as %r", instance, name, line)
        self.audit(topic=topic, source="external-event", instance=instance, event=name, result=200, msg=line[:200])
        self.report(instance, f"external event '{name}' typed into the console: {line[:200]}")

    def _refuse(self, instance: str, name: str, message: str, *, level: int) -> None:
        logger.log(level, "instance %s: %s", instance, message)
        self.audit(source="external-event", instance=instance, event=name, result=400, msg=message[:200])
        self.report(instance, message)
