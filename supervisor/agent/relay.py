"""Hummingbot's remote commands for bots the agent speaks for: ``{ns}/{id}/{command}`` -> the bot's console.

For a bot without Hummingbot's MQTT plugin, each command is typed as its recipe's
console line and the console's answer becomes the reply, as Hummingbot's bridge
would give it. For a plugin bot whose bridge is down only ``start`` can help: it
launches the bot, and the bridge answers once it is up. Runs in the bot's lane.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import typing as t

from supervisor.agent.answer import read_answer, read_trades, recent_trades
from supervisor.agent.plugin import Held
from supervisor.core.manager import check_file_name, check_strategy
from supervisor.errors import ConsoleBusy, InstanceNotRunning, SupervisorError
from supervisor.mqtt import protocol
from supervisor.mqtt.guard import STATUS_BUSY

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from supervisor.agent.beacon import Beacon
    from supervisor.agent.plugin import PluginBridges
    from supervisor.agent.view import HostView
    from supervisor.agent.wire import Replier
    from supervisor.core.manager import InstanceStatus, Manager
    from supervisor.mqtt.connection import Connection

__all__ = ["STATUS_TIMEOUT", "HbotRelay"]

STATUS_TIMEOUT = 504
"""A relayed command whose answer did not end within the recipe's ``reply_wait`` (it was typed)."""

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a Hummingbot command did: the reply's status, msg and extra fields (history's trades)."""

    code: int
    msg: str
    extra: Mapping[str, t.Any] = dataclasses.field(default_factory=dict)


class HbotRelay:
    """Answers Hummingbot's commands for this host's bots, as their own bridge would.

    Parameters
    ----------
    view
        The snapshot of this host's bots.
    beacon
        What is said about them (announcements, events).
    manager
        The core.
    connection, replier
        Where notify messages and replies go.
    bridges
        Plugin bots' bridges (held requests, accepted strategies).
    namespace
        Hummingbot's topic namespace.
    audit
        ``audit(**entry)``: one audit log line per request.
    hold
        ``hold(request)``: keep a request for a plugin bot until its bridge is up.
    """

    def __init__(
        self,
        view: HostView,
        beacon: Beacon,
        manager: Manager,
        connection: Connection,
        replier: Replier,
        bridges: PluginBridges,
        namespace: str,
        *,
        audit: Callable[..., None],
        hold: Callable[[Held], None],
    ) -> None:
        self.view = view
        self.beacon = beacon
        self.hold = hold
        self.manager = manager
        self.connection = connection
        self.replier = replier
        self.bridges = bridges
        self.ns = namespace
        self.audit = audit

    def answers(self, topic: str) -> bool:
        """Return whether this agent answers ``topic``, judged on the snapshot (cheap: network thread)."""
        status = self.view.status_of(topic[len(self.ns) + 1 :].partition("/")[0])
        return status is not None and not (status.plugin and status.is_running)

    def watch_strategy(self, topic: str, payload: bytes) -> None:
        """For a running plugin bot's ``start``/``stop``: wait for its bridge's answer (network thread: quick)."""
        instance, _, command = topic[len(self.ns) + 1 :].partition("/")
        if command not in ("start", "stop"):
            return
        status = self.view.status_of(instance)
        if status is None or not (status.plugin and status.is_running):
            return  # a down plugin bot's start is the agent's own launch: recorded by it
        try:
            request = protocol.parse_request(payload)
            data = protocol.validate(command, request.data)
            strategy = check_strategy(data) if command == "start" else None
        except SupervisorError:
            return
        if command == "start" and not strategy:
            return  # a start of what the bot has imported: nothing to relaunch it with
        self.bridges.expect_strategy(instance, request.reply_to, strategy)

    def handle(self, topic: str, payload: bytes, dup: bool = False, retained: bool = False) -> None:
        """Carry out one request on ``{ns}/{id}/{command}`` and answer it (or stay silent where not ours)."""
        instance, _, command = topic[len(self.ns) + 1 :].partition("/")
        if not self.view.known(instance):
            # Another host's agent, or a real Hummingbot, may own this id: stay silent.
            return
        # Whether to answer at all is judged on the snapshot (kept current by the probe), before the duplicate check.
        status = self.view.status_of(instance)
        if status is None or (status.plugin and not status.is_running):
            # New, or a down plugin bot: a bot just launched must not be taken for down.
            self.manager.forget_sessions()
            status = self.view.look(instance)
        if status.plugin and status.is_running and self.bridges.is_up(instance):
            # The bot's own MQTT bridge answers while it is up (even to bad requests): never a double reply.
            return
        if retained:
            self.replier.refuse_retained(topic, payload)
            return
        fresh = self.replier.fresh(topic, payload, dup)
        if fresh is None:
            return
        request, key = fresh
        if status.plugin and status.is_running:
            # Its process is up but its bridge is not yet: hold the request and forward it then.
            self._hold(instance, command, topic, payload, request, key)
            return
        status = self.view.current(instance)  # one status for this request, passed down
        try:
            data = protocol.validate(command, request.data)
            refusal = self._refusal(instance, command, data, status)
        except protocol.ProtocolError as e:
            refusal = f"bad request: {e}"
        except SupervisorError as e:
            refusal = str(e)
        if refusal is not None:
            self._answer(request, command, topic, key, Outcome(protocol.STATUS_ERROR, refusal))
            return
        if status.plugin and command == "start":
            # Launch it with the requested strategy, then let its own bridge answer the request.
            try:
                self._run(instance, command, data, status)
            except SupervisorError as e:
                self._answer(request, command, topic, key, Outcome(protocol.STATUS_ERROR, str(e)))
                return
            self._hold(instance, command, topic, payload, request, key)
            return
        if data.get("async_backend") is True and command == "start" and status.is_ready:
            # As the bot does: a start it refuses (already running) is a 400; an accepted one is 200 with no
            # text, its console's answer going to notify. The console answers at once: no need to answer first.
            try:
                outcome = self._run(instance, command, data, status)
            except SupervisorError as e:
                outcome = Outcome(protocol.STATUS_ERROR, str(e))
            if outcome.code == protocol.STATUS_OK:
                self._answer(request, command, topic, key, Outcome(protocol.STATUS_OK, ""))
                self._notify(instance, outcome.msg)
            else:
                self._answer(request, command, topic, key, outcome)
            return
        if data.get("async_backend") is True and command in ("start", "stop"):
            # As the bot does: answer at once, then do the (possibly long) work; its console's answer goes to notify.
            self._answer(request, command, topic, key, Outcome(protocol.STATUS_OK, ""))
            try:
                outcome = self._run(instance, command, data, status)
                if outcome.msg:
                    self._notify(instance, outcome.msg)
            except SupervisorError as e:
                logger.warning("%s of %s failed: %s", command, instance, e)
                self.beacon.notify(instance, f"{command} failed: {e}")
            return
        try:
            outcome = self._run(instance, command, data, status)
        except SupervisorError as e:
            outcome = Outcome(protocol.STATUS_ERROR, str(e))
        self._answer(request, command, topic, key, outcome)

    def _hold(
        self, instance: str, command: str, topic: str, payload: bytes, request: protocol.Request, key: str
    ) -> None:
        """Keep a request until the bot's bridge is up, then publish it again for the bot to answer."""
        deadline = time.monotonic() + self.manager.ready_timeout(instance)
        self.hold(Held(instance, topic, payload, request.reply_to, command, key, deadline))

    def _answer(self, request: protocol.Request, command: str, topic: str, key: str, outcome: Outcome) -> None:
        self.audit(
            topic=topic,
            client=request.header.get("node_id") or request.header.get("agent"),
            reply_to=request.reply_to,
            result=outcome.code,
            msg=outcome.msg[:200],
        )
        reply = protocol.response(command, status=outcome.code, msg=outcome.msg, **outcome.extra)
        self.replier.reply(request.reply_to, reply, key)

    def _refusal(self, instance: str, command: str, data: Mapping[str, t.Any], status: InstanceStatus) -> str | None:
        """Return why a valid request cannot be carried out at all (checked before an async 200), or ``None``."""
        if not status.plugin and command == "start":
            # Unsafe values are refused in the reply itself, also when the start is answered asynchronously:
            # a file name each (a value with spaces would reach the console as several arguments).
            self.manager.console_line(instance, "start", {"script": data.get("script"), "conf": data.get("conf")})
            check_strategy(data)
            return None
        if not status.plugin and command == "import" and data.get("strategy"):
            self.manager.console_line(instance, "import", {"strategy": data["strategy"]})
            check_file_name("strategy", data["strategy"])  # the bot itself answers an empty one
            return None
        if status.plugin or command != "stop":
            return None
        if data.get("skip_order_cancellation"):
            recipe = self.manager.recipe(instance)
            if "stop_keep_orders" not in recipe.console.commands:
                return (
                    f"instance '{instance}': recipe '{recipe.name}' has no console.stop_keep_orders line, so its "
                    "strategy cannot be stopped with orders left open; nothing was done. Send "
                    "skip_order_cancellation: false to stop and cancel orders, or add that line to the recipe."
                )
        if not status.is_running:
            return str(InstanceNotRunning(instance, status.state))
        return None

    def _run(self, instance: str, command: str, data: Mapping[str, t.Any], status: InstanceStatus) -> Outcome:
        """Carry out one bot-level command as Hummingbot would; return the reply's status, msg and extras."""
        sync = data.get("async_backend") is False
        if status.plugin:
            # Down plugin bot: only start can help (the plugin takes over once it is up).
            if command == "start":
                [result] = self.manager.start(
                    [instance], strategy={"script": data.get("script"), "conf": data.get("conf")}
                )
                self.view.take(result.status, instance)
                msg = f"instance '{instance}' was down; launched it, its MQTT bridge takes over."
                return Outcome(protocol.STATUS_OK, msg)
            msg = f"instance '{instance}' is not running, so its MQTT bridge cannot answer. Send start first."
            return Outcome(protocol.STATUS_ERROR, msg)
        if command == "start":
            values = {"script": data.get("script"), "conf": data.get("conf")}
            self.manager.console_line(instance, "start", values)  # refuse unsafe values before launching
            if not status.is_ready:
                [result] = self.manager.start([instance])  # launches it, or waits for a bot that is still starting
                self.beacon.announce(instance, self.view.take(result.status, instance))
            if data.get("is_quickstart"):
                logger.info("is_quickstart has no console equivalent; starting normally")
            return self._console(instance, "start", values)
        if not status.is_running:
            raise InstanceNotRunning(instance, status.state)
        if command == "stop":
            # The strategy stop, as Hummingbot's: the process, its heartbeats and its console stay up.
            line = "stop_keep_orders" if data.get("skip_order_cancellation") else "stop"
            return self._console(instance, line, {})
        if command == "status" and not sync:
            # Hummingbot answers 400 at once when no strategy runs; else 200, the status going to notify.
            outcome = self._console(instance, "status", {})
            if outcome.code != protocol.STATUS_OK:
                return outcome
            self._notify(instance, outcome.msg)
            return Outcome(protocol.STATUS_OK, "")
        if command == "import":
            return self._console(instance, "import", {"strategy": data["strategy"]})
        if command == "history":
            values = {k: data.get(k) for k in ("days", "verbose", "precision")}
            outcome = self._console(instance, "history", values)
            if not sync:
                self._notify(instance, outcome.msg)
                return Outcome(protocol.STATUS_OK, "", {"trades": []})
            recipe = self.manager.recipe(instance)
            trades, rest = read_trades(outcome.msg.splitlines(), recipe.console.trades)
            trades = recent_trades(trades, float(data.get("days") or 0), now=time.time())
            return Outcome(outcome.code, "\n".join(rest), {"trades": trades})
        return self._console(instance, command.replace("/", "_"), dict(data))

    def _console(self, instance: str, command: str, values: Mapping[str, t.Any]) -> Outcome:
        """Type a command's console line and read the answer the recipe's patterns pick out of the output."""
        try:
            typed = self.manager.relay(instance, command, values, capture=True)
        except ConsoleBusy as e:
            return Outcome(STATUS_BUSY, str(e))  # nothing was typed: try again
        recipe = self.manager.recipe(instance)
        answer = read_answer(typed.text, recipe.console.answer)
        if not typed.complete:
            # Never a 200 for an answer that did not come: what it prints later goes to no other reply either.
            msg = (
                f"instance '{instance}' did not finish answering within {recipe.console.reply_wait:g} s "
                "(console.reply_wait: its prompt did not show again); the command was typed."
            )
            return Outcome(STATUS_TIMEOUT, "\n".join([msg, *answer.lines]))
        return Outcome(protocol.STATUS_ERROR if answer.error else protocol.STATUS_OK, answer.text)

    def _notify(self, instance: str, text: str) -> None:
        """Publish console output on ``{ns}/{id}/notify``, as the bot's notifier does."""
        if text:
            self.connection.publish(f"{self.ns}/{instance}/notify", protocol.notify(0, text))
