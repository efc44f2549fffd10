"""Our own verbs on ``{own}/{host}/{instance}/{verb}`` and ``{own}/{host}/{verb}``: process-level control.

``start``/``stop``/``restart`` act on the bot's process (the launch, the graceful
shutdown), ``status``/``list`` answer from the snapshot when it is fresh, ``send``,
``tail`` and ``logs`` reach the console. Signed when the host has a secret.
"""

from __future__ import annotations

import logging
import typing as t

from supervisor.errors import AuthError, InstanceNotFound, SupervisorError
from supervisor.mqtt import protocol

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from supervisor.agent.beacon import Beacon
    from supervisor.agent.view import HostView
    from supervisor.agent.wire import Replier
    from supervisor.core.manager import InstanceStatus, Manager
    from supervisor.core.watchdog import Watchdog
    from supervisor.mqtt.auth import Verifier

__all__ = ["OwnVerbs"]

logger = logging.getLogger(__name__)


class OwnVerbs:
    """Carries out our own verbs and answers them.

    Parameters
    ----------
    view
        The snapshot of this host's bots.
    beacon
        What is said about them (announcements, state records).
    host_id
        This host's id (``list`` names it).
    own
        Our topic prefix for this host, ``{own_prefix}/{host_id}``.
    verifier
        Checks signed requests when the host has a secret; ``None`` without.
    """

    def __init__(
        self,
        view: HostView,
        beacon: Beacon,
        manager: Manager,
        replier: Replier,
        watchdog: Watchdog,
        *,
        host_id: str,
        own: str,
        verifier: Verifier | None,
        audit: Callable[..., None],
    ) -> None:
        self.view = view
        self.beacon = beacon
        self.manager = manager
        self.replier = replier
        self.watchdog = watchdog
        self.host_id = host_id
        self.own = own
        self.verifier = verifier
        self.audit = audit
        self._replies: dict[str, tuple[InstanceStatus, dict[str, t.Any], bytes]] = {}

    def instance_of(self, topic: str) -> str:
        """Return the instance an own topic is for (``""`` for a host verb)."""
        return topic[len(self.own) + 1 :].rpartition("/")[0]

    def handle(self, topic: str, payload: bytes, dup: bool = False, retained: bool = False) -> None:
        """Carry out one request on our namespace and answer it."""
        instance, verb = self.instance_of(topic), topic.rpartition("/")[2]
        if retained:
            self.replier.refuse_retained(topic, payload)
            return
        key: str | None = None
        if self.verifier is None:
            fresh = self.replier.fresh(topic, payload, dup)
            if fresh is None:
                return
            request, key = fresh
        else:
            # Signed requests skip the duplicate cache: a byte-identical copy is a replay
            # (its nonce is spent) and gets 401, never the first one's cached reply.
            parsed = self.replier.parse(topic, payload)
            if parsed is None:
                return
            request = parsed
        who = request.header.get("node_id") or request.header.get("agent") or "?"
        if self.verifier is not None:
            try:
                self.verifier.verify(topic, request.reply_to, request.header, request.data)
            except AuthError as e:
                self.replier.refusals.refuse(
                    "unauthorized", topic, str(e), client=who, result=protocol.STATUS_UNAUTHORIZED
                )
                self.replier.reply(
                    request.reply_to,
                    {"status": protocol.STATUS_UNAUTHORIZED, "msg": f"unauthorized: {e}", "code": e.code},
                    spare=True,
                )
                return
        encoded = None
        then: t.Callable[[], None] | None = None
        try:
            args = protocol.validate_own(verb, request.data)
            if verb == "status":
                status = self.view.fresh(instance) or self.view.look(instance)  # InstanceNotFound for a stranger
                reply, encoded = self._status_reply(status)
            else:
                reply, then = self._run(instance, verb, args)
        except SupervisorError as e:
            reply = {"status": protocol.STATUS_ERROR, "msg": str(e), "code": e.code}
        self.replier.reply(request.reply_to, reply, key, encoded=encoded)
        if then is not None:
            try:
                then()  # the launch's beat and state record follow the reply that says it happened
            except SupervisorError as e:
                logger.warning("after %s of %s: %s", verb, instance, e)
        # After the reply: the client does not wait for the audit log's file lock and write.
        self.audit(
            topic=topic, client=who, reply_to=request.reply_to, result=reply["status"], msg=str(reply.get("msg"))
        )

    def _run(
        self, instance: str, verb: str, args: Mapping[str, t.Any]
    ) -> tuple[dict[str, t.Any], t.Callable[[], None] | None]:
        """Carry out one of our verbs; return the reply and what to do once it is sent."""
        ok = protocol.STATUS_OK
        if verb == "list":
            statuses = self.view.fresh_all() or self.view.look_all()
            return {
                "status": ok,
                "msg": "",
                "result": {"host": self.host_id, "instances": [statuses[name].to_dict() for name in sorted(statuses)]},
            }, None
        if not self.view.known(instance):
            raise InstanceNotFound(instance)
        if verb == "tail":
            return {"status": ok, "msg": "", "result": {"screen": self.manager.tail(instance, args["lines"])}}, None
        if verb == "logs":
            # The log outlives the session: a crashed or fatal bot's last output (its traceback) is here.
            return {"status": ok, "msg": "", "result": {"log": self.manager.log_lines(instance, args["lines"])}}, None
        if verb == "send":
            self.manager.send(instance, args["text"])
            return {"status": ok, "msg": f"sent one line to '{instance}'."}, None
        if verb == "start":
            [result] = self.manager.start([instance])
        elif verb == "stop":
            timeout = args.get("timeout")
            [result] = self.manager.stop([instance], **({"timeout": timeout} if timeout else {}))
        else:
            [result] = self.manager.restart([instance])
        self.watchdog.forget(instance)
        status = self.view.take(result.status, instance)  # derived by the action itself: no second look

        def then() -> None:
            if verb == "stop":
                self.beacon.gone(instance, status)
            else:
                self.beacon.announce(instance, status, relaunched=result.changed)
            self.beacon.publish_states()  # the new state goes out now, not at the next tick

        return {"status": ok, "msg": result.message, "result": result.to_dict()}, then

    def _status_reply(self, status: InstanceStatus) -> tuple[dict[str, t.Any], bytes]:
        """Return an own ``status`` reply and its encoding, made once per status derived (the snapshot reuses it)."""
        cached = self._replies.get(status.name)
        if cached is None or cached[0] is not status:
            reply = {"status": protocol.STATUS_OK, "msg": status.state, "result": status.to_dict()}
            cached = self._replies[status.name] = (status, reply, protocol.dumps(protocol.make_primitive(reply)))
        return cached[1], cached[2]
