"""The agent: wires its parts, owns its host id on the broker, and runs the main loop.

It calls the same :class:`~supervisor.core.manager.Manager` as the CLI; bots never run
under it. Each job is a part of its own: the snapshot (:mod:`.view`), one ordered lane
per bot (:mod:`.lane`), Hummingbot's commands (:mod:`.relay`), our verbs (:mod:`.own`),
plugin bots' bridges (:mod:`.plugin`), replies (:mod:`.wire`), what is said about the
bots (:mod:`.beacon`). Here: dispatching each request into its bot's lane, claiming the
host id (one serving agent per id) and its availability record and beat, the main loop
that looks again when the :class:`~supervisor.core.watchdog.Probe` says something
changed and lets the :class:`~supervisor.core.watchdog.Watchdog` restart crashed bots,
and the console stream.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import select
import threading
import time
import typing as t
import uuid
from pathlib import Path

from supervisor import __version__
from supervisor.agent.beacon import Beacon, Voice
from supervisor.agent.external import ExternalEvents
from supervisor.agent.lane import Lanes
from supervisor.agent.own import OwnVerbs
from supervisor.agent.plugin import Held, PluginBridges
from supervisor.agent.relay import HbotRelay
from supervisor.agent.snapshot import SnapshotServer
from supervisor.agent.stream import ConsoleStream
from supervisor.agent.view import HostView
from supervisor.agent.wire import Replier
from supervisor.audit import AuditLog, clip
from supervisor.core.watchdog import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    FAST_FAILURE,
    FATAL_AFTER,
    Incident,
    Inotify,
    Probe,
    Watchdog,
)
from supervisor.errors import AgentError, SupervisorError
from supervisor.mqtt import protocol
from supervisor.mqtt.auth import Verifier, is_signed_record, sign_record
from supervisor.mqtt.connection import Connection
from supervisor.mqtt.guard import STATUS_BUSY, RefusalLog

if t.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from supervisor.core.manager import InstanceStatus, Manager
    from supervisor.mqtt.config import AgentConfig
    from supervisor.mqtt.connection import Handler

logger = logging.getLogger(__name__)

MAX_PENDING = 64
MAX_PER_BOT = 16
"""Requests for one bot that may wait in its lane (running one included); more are refused with 503."""
REPLY_RESERVE = 4 * MAX_PENDING + 512
"""Outgoing-queue slots refusal replies leave free: replies (and events) of admitted requests, state records."""
MAX_QUEUED = 4096
CLAIM_SECONDS = 1.0
"""After its first connection, how long an agent waits for a live agent with its host id before serving."""
CLAIM_TIMEOUT = 10.0
REASSERT_GAP = 0.5
STREAM_POLL = 0.25
STREAM_SWEEP = 5.0
PROBE_INTERVAL = 0.25
"""Seconds between two looks of the probe: a crash, a CLI start or stop shows within this (plus one derivation)."""


class Agent:
    """One host's agent.

    Parameters
    ----------
    manager
        The core; the agent keeps one, so CPU figures are live deltas.
    config
        Broker, namespaces, timers and secret.
    fatal_after, fast_failure, backoff_base, backoff_max
        The watchdog's policy (:class:`~supervisor.core.watchdog.Watchdog`).
    check_interval
        Seconds between full looks at the host (default: the state interval).
        Changes are noticed at once by the probe; the full look is a safety net
        and refreshes the CPU and memory figures.
    """

    def __init__(
        self,
        manager: Manager,
        config: AgentConfig,
        *,
        fatal_after: int = FATAL_AFTER,
        fast_failure: float = FAST_FAILURE,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        check_interval: float | None = None,
        hbot_relay: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manager = manager
        # Requests reuse a session listing for a moment; the manager drops it after any action.
        manager.use_caches(sessions=min(1.0, config.heartbeat_interval / 2), commits=config.state_interval)
        self.config = config
        self.host = config.host_id
        self.ns = config.namespace
        self.own = f"{config.own_prefix}/{self.host}"
        self.hbot_relay = hbot_relay
        self.check_interval = check_interval or config.state_interval
        self._clock = clock
        self.started = clock()
        self.verifier = (
            Verifier(config.secret, skew=config.clock_skew, clock=clock, not_before=self.started)
            if config.secret
            else None
        )
        self.audit = AuditLog(manager.audit_log)
        self.refusals = RefusalLog(self.audit.record)
        self.watchdog = Watchdog(
            manager,
            fatal_after=fatal_after,
            fast_failure=fast_failure,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            report=self._on_incident,
            clock=clock,
        )
        self.probe = Probe(manager)
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="agent-request")
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self.lanes = Lanes(self._pool)
        # The snapshot: each instance's last derived status, owned by the view alone.
        self.view = HostView(manager, self.probe, on_stored=self._stored, on_bots=self._listen_to_bots)
        self._listened: dict[str, tuple[Handler, int]] = {}
        self._subscription_lock = threading.Lock()
        self._console_logs: dict[str, str] = {}
        # One run of this agent: in its records and client id, so another agent with the same
        # host id is told apart (and the two do not keep kicking each other off the broker).
        self.run_id = uuid.uuid4().hex[:12]
        self._serving = False
        self._first_ready: float | None = None
        self._duplicate_of: dict[str, t.Any] | None = None
        self._reassert_lock = threading.Lock()
        self._reassert_pending = False
        self._last_reassert = 0.0
        self.external = ExternalEvents(
            manager,
            self.ns,
            report=lambda name, message: self.beacon.notify(name, message),
            audit=self.audit.record,
            publish=lambda *args, **kwargs: self.connection.publish(*args, **kwargs),
            own_prefix=config.own_prefix,
            host=self.host,
            secret=config.secret,
        )
        self.connection = Connection(
            config.broker,
            client_id=config.broker.client_id or f"supervisor-agent-{self.host}-{self.run_id}",
            will=(f"{self.own}/agent", self._availability("offline"), 1, True),
            on_connect=self._on_connect,
            max_queued=MAX_QUEUED,
        )
        self.stream = ConsoleStream(self.connection.publish, self.ns, clock=clock)
        # What the host says about its bots: heartbeats, status updates, events, state records.
        voice = Voice(self.ns, self.own, self.host, config.heartbeat_interval, config.state_interval, config.secret)
        self.beacon = Beacon(
            self.connection, self.view, self.probe, voice, records_changed=self._records_changed, clock=clock
        )
        # Plugin bots: whether each bridge is up, requests held until it is, the strategies it accepted.
        self.bridges = PluginBridges(
            self.connection,
            launched_at=self._launched_at,
            ready_timeout=manager.ready_timeout,
            record_strategy=self._accepted_strategy,
            forwarded=self._forwarded,
            expired=self._expired,
        )
        self.replier = Replier(self.connection, self.ns, config.own_prefix, self.refusals, reserve=REPLY_RESERVE)
        # The two front doors, each in its own file: Hummingbot's commands, and our own verbs.
        self.relay = HbotRelay(
            self.view,
            self.beacon,
            manager,
            self.connection,
            self.replier,
            self.bridges,
            self.ns,
            audit=self.audit.record,
            hold=self.hold,
        )
        self.verbs = OwnVerbs(
            self.view,
            self.beacon,
            manager,
            self.replier,
            self.watchdog,
            host_id=self.host,
            own=self.own,
            verifier=self.verifier,
            audit=self.audit.record,
        )
        self.snapshots = SnapshotServer(
            manager.paths.agent_socket, self.view.provide, tmux_socket=manager.paths.tmux_socket
        )

    # -- lifecycle -------------------------------------------------------------

    def run(self) -> None:
        """Serve until :meth:`stop` is called (from a signal handler or another thread)."""
        if self.verifier is None:
            logger.warning(
                "no shared secret configured: anyone who can publish on %s can start, stop and type into "
                "this host's bots through %s/#. Set SUPERVISOR_SECRET (and broker ACLs) to prevent it.",
                self.config.broker.url,
                self.own,
            )
        elif self.hbot_relay:
            logger.warning(
                "requests on %s/+/… (Hummingbot's protocol) cannot be signed: existing clients know nothing of it. "
                "Restrict those topics with broker ACLs, or run with --no-hbot-relay.",
                self.ns,
            )
        self.connection.subscribe(f"{self.own}/agent", self._on_agent_record, qos=1)
        self.connection.subscribe(f"{self.own}/agent/claim", self._on_agent_record, qos=1)
        self.connection.start()
        run_started = time.monotonic()
        streamer = threading.Thread(target=self._stream_loop, name="agent-console-stream", daemon=True)
        streamer.start()
        next_heartbeat = next_state = next_look = 0.0
        try:
            while not self._stop.is_set():
                if self._reassert_pending:
                    self._reassert()
                if not self._claimed(run_started):
                    self._stop.wait(0.05)
                    continue
                now = time.monotonic()
                state_due = now >= next_state
                try:
                    if now >= next_look or state_due:
                        # The safety net, and fresh CPU and memory figures for the state records.
                        next_look = now + self.check_interval
                        self.view.look_all()
                        self._state_readable(None)
                    elif self.view.look_changed():
                        self._state_readable(None)
                    if self.view.state_error is None:
                        if self.watchdog.check(self.view.snapshot()):
                            self.view.look_all()  # what was restarted or marked fatal: no stale record goes out
                        if now >= next_heartbeat:
                            self.beacon.heartbeats()
                            next_heartbeat = now + self.config.heartbeat_interval
                        if state_due:
                            self.watchdog.find_orphans()
                        self.beacon.publish_states(force=state_due)
                    if state_due:
                        next_state = now + self.config.state_interval
                    self.bridges.tick()
                except (SupervisorError, OSError) as e:
                    # A broken, deleted or unreadable registry or recipe: the bots run on in their sessions.
                    # Keep serving; say it once, and again when it is mended. No beat is sent on a guess.
                    self._state_readable(e)
                    next_look = now + self.check_interval
                self.refusals.flush()
                wake = min(next_look, next_heartbeat, next_state, self._beat_host()) - time.monotonic()
                restart = self.watchdog.next_attempt()
                if restart is not None:
                    wake = min(wake, restart - self._clock())
                if self._reassert_pending:
                    wake = min(wake, REASSERT_GAP)
                due = self.bridges.next_due()
                if due is not None:  # held requests of plugin bots go out (or expire) on time
                    wake = min(wake, due - time.monotonic())
                if self.view.state_error is not None:
                    self._stop.wait(max(0.01, min(wake, PROBE_INTERVAL)))
                else:
                    # Until something happens: a bot ends, the registry is written, a deadline comes.
                    self.probe.wait(max(0.01, wake))
        finally:
            self._shutdown()
        if self._duplicate_of is not None:
            other = self._duplicate_of
            msg = (
                f"host id '{self.host}': another agent already serves it on {self.config.broker.url} "
                f"(pid {other.get('pid')}, run {clip(other.get('run'), 40)}, started at {other.get('started')}). "
                "Stop that agent, or give this one another --host-id."
            )
            raise AgentError(msg)

    def stop(self) -> None:
        """Ask :meth:`run` to return."""
        self._stop.set()
        self.probe.interrupt()

    def _shutdown(self) -> None:
        if self._duplicate_of is not None:
            # Never served: the live agent's records stay as they are.
            self._pool.shutdown(wait=True, cancel_futures=False)
            self.connection.stop()
            return
        self.beacon.all_offline()
        with contextlib.suppress(SupervisorError):
            self.connection.publish_and_wait(
                f"{self.own}/agent", self._availability("offline"), qos=1, retain=True, timeout=2
            )
        self.snapshots.close()
        self._pool.shutdown(wait=True, cancel_futures=False)
        self.connection.stop()
        self.probe.close()
        logger.info("agent %s stopped; bots keep running in their sessions", self.host)

    def _availability(self, state: str, *, topic: str | None = None) -> bytes:
        record: dict[str, t.Any] = {
            "host": self.host,
            "state": state,
            "ts": round(self._clock(), 3),
            "version": __version__,
            "pid": os.getpid(),
            "run": self.run_id,
            "started": round(self.started, 3),
            "heartbeat_interval": self.config.heartbeat_interval,
            "beat_interval": self.host_beat_interval,
            "state_interval": self.config.state_interval,
            "keepalive": self.config.broker.keepalive,
            "signed": self.verifier is not None,
        }
        if self._serving:
            # The state records on the broker now: a reader knows when it holds them all.
            # (Not in the last will, made before serving: it could only say none.)
            names = self.beacon.published()
            record["instances"] = len(names)
            record["generation"] = protocol.instances_generation(names)
        if self.config.secret:
            record = sign_record(self.config.secret, topic or f"{self.own}/agent", record)
        return json.dumps(record, separators=(",", ":")).encode()

    def _records_changed(self) -> None:
        """Publish the availability record again: the set of state records it counts changed (it follows them)."""
        if not self._stop.is_set():
            self.connection.publish(f"{self.own}/agent", self._availability("online"), qos=1, retain=True)

    def _on_connect(self) -> None:
        if self._first_ready is None:
            self._first_ready = time.monotonic()
        if self._serving:
            self.connection.publish(f"{self.own}/agent", self._availability("online"), qos=1, retain=True)
        else:
            self._claim()
        # Retained state may have been lost with a broker restart: publish everything again.
        self.beacon.forget_published()

    def _claimed(self, run_started: float) -> bool:
        """Return whether this agent serves; it starts to once no other live agent claimed its host id.

        That is :data:`CLAIM_SECONDS` after the first connection, or after
        :data:`CLAIM_TIMEOUT` without a broker (supervision must not wait for one).
        """
        if self._serving:
            return True
        now = time.monotonic()
        ready = self._first_ready
        if (ready is None or now - ready < CLAIM_SECONDS) and (ready is not None or now - run_started < CLAIM_TIMEOUT):
            return False
        self._serving = True
        # `supervisor ls` on this host asks the agent's snapshot instead of looking itself.
        self.snapshots.start()
        with contextlib.suppress(SupervisorError, OSError):  # the main loop says why, once
            # Requests are judged on a snapshot from the first one on; bots are announced (and beat)
            # by the main loop's first heartbeat tick, after "online".
            self.view.look_all(announce=False)
        self._subscribe()
        if self.connection.is_connected:
            self.connection.publish(f"{self.own}/agent", self._availability("online"), qos=1, retain=True)
        logger.info(
            "agent %s (run %s) serving %s/{id}/… of its own bots and %s/… on %s",
            self.host,
            self.run_id,
            self.ns,
            self.own,
            self.config.broker.url,
        )
        return True

    def _on_agent_record(self, topic: str, payload: bytes, props: Mapping[str, t.Any]) -> None:
        """Watch our host id's availability and claim topics for other runs of an agent.

        While claiming (before serving) this agent yields to a live agent that
        serves the host id, and to a claim older than its own. Once serving it
        never yields: it publishes its record again over anything not its own.
        """
        if props.get("retain"):
            return  # may be left over from a dead run: only a live publish proves a live agent
        try:
            record = json.loads(payload) if payload else None
        except ValueError:
            record = None
        if isinstance(record, dict) and record.get("run") == self.run_id:
            return
        genuine = isinstance(record, dict) and self._is_agent_record(topic, record)
        if not self._serving:
            if isinstance(record, dict) and genuine:
                if record.get("state") == "online" or (topic.endswith("/claim") and self._outranked_by(record)):
                    logger.error("another agent (run %s) serves host id %s", clip(record.get("run")), self.host)
                    self._duplicate_of = record
                    self._stop.set()
                elif topic.endswith("/claim"):
                    self._reassert()  # our (older) claim again, so the newer agent sees it
            return
        if isinstance(record, dict) and genuine and record.get("state") == "online":
            logger.warning(
                "another agent (run %s, pid %s) also published itself as host %s; this one goes on serving",
                clip(record.get("run")),
                clip(record.get("pid")),
                self.host,
            )
        # Another run's offline record (its will, its exit), a newcomer's claim, or a stranger's
        # record: ours goes out again, so the host never looks offline while we serve.
        self._reassert()

    def _is_agent_record(self, topic: str, record: Mapping[str, t.Any]) -> bool:
        """Return whether ``record`` looks like an agent's run (and, with a secret, is signed by one)."""
        if self.config.secret and not is_signed_record(self.config.secret, topic, record):
            return False
        started, run = record.get("started"), record.get("run")
        return not isinstance(started, bool) and isinstance(started, (int, float)) and isinstance(run, str)

    def _outranked_by(self, record: Mapping[str, t.Any]) -> bool:
        """Return whether ``record``'s run started before ours (ties broken by run id)."""
        return (record["started"], record["run"]) < (round(self.started, 3), self.run_id)

    def _reassert(self) -> None:
        """Publish our record (or, while claiming, our claim) again, at most once per :data:`REASSERT_GAP`."""
        now = time.monotonic()
        with self._reassert_lock:
            if now - self._last_reassert < REASSERT_GAP:
                self._reassert_pending = True
                return
            self._last_reassert = now
            self._reassert_pending = False
        if self._stop.is_set():
            return
        if self._serving:
            self.connection.publish(f"{self.own}/agent", self._availability("online"), qos=1, retain=True)
        else:
            self._claim()

    def _claim(self) -> None:
        # Not retained and not on the record's topic: a live agent with our host id answers
        # by publishing its record again, and nobody's view of the host changes meanwhile.
        topic = f"{self.own}/agent/claim"
        self.connection.publish(topic, self._availability("starting", topic=topic), qos=1)

    def _subscribe(self) -> None:
        for verb in protocol.OWN_VERBS:
            self.connection.subscribe(f"{self.own}/+/{verb}", self._on_own, qos=1)
        for verb in protocol.HOST_VERBS:
            self.connection.subscribe(f"{self.own}/{verb}", self._on_own, qos=1)
        # Hummingbot's topics carry no host: this host's bots are listened to one by one.
        self._listen_to_bots()

    # -- request plumbing ----------------------------------------------------------

    def _dispatch(
        self, topic: str, payload: bytes, props: Mapping[str, t.Any], work: Callable[[str, bytes, bool, bool], None]
    ) -> None:
        """Queue a request in its bot's lane (handlers run on the network thread and must be quick).

        Requests for one bot run one at a time, in the order they arrived, whoever
        sent them; host-wide ones (``list``) run at once. The handler gets the MQTT
        DUP and retain flags of the message. When every slot is taken the request
        is refused before it runs (503), so an executed request always has room
        for its reply in the outgoing queue.
        """
        lane = self._lane_of(topic)
        # One stuck bot takes at most MAX_PER_BOT of the slots: the other bots' requests still run.
        crowded = lane is not None and self.lanes.depth(lane) >= MAX_PER_BOT
        if crowded or not self._pending.acquire(blocking=False):
            if work == self.relay.handle and not self.relay.answers(topic):
                return  # another host's id, or a bot whose own bridge answers: stay silent, as everywhere else
            why = f"{MAX_PER_BOT} requests for '{lane}' are waiting" if crowded else "too many requests in flight"
            self.refusals.refuse("busy", topic, why, result=STATUS_BUSY)
            self.replier.error_raw(payload, f"agent is busy: {why}. Try again.", status=STATUS_BUSY, spare=True)
            return
        dup, retained = bool(props.get("dup")), bool(props.get("retain"))

        def job() -> None:
            try:
                work(topic, payload, dup, retained)
            except Exception:
                logger.exception("request on %s failed unexpectedly", clip(topic))
                self.replier.error_raw(payload, "internal error in the agent; see its log.")
            finally:
                self._pending.release()

        try:
            if lane is None:
                self._pool.submit(job)
            else:
                self.lanes.submit(lane, job)
        except RuntimeError:  # the pool is shut down: the agent is stopping
            self._pending.release()

    def _lane_of(self, topic: str) -> str | None:
        """Return the bot a request is for (its lane), or ``None`` for a host-wide request."""
        for prefix in (self.own, self.ns):
            if topic.startswith(prefix + "/"):
                instance, sep, _ = topic[len(prefix) + 1 :].partition("/")
                return instance if sep else None
        return None

    def _on_hbot(self, topic: str, payload: bytes, props: Mapping[str, t.Any]) -> None:
        if not props.get("retain"):
            self.relay.watch_strategy(topic, payload)
        self._dispatch(topic, payload, props, self.relay.handle)

    def _accepted_strategy(self, instance: str, strategy: dict[str, str] | None) -> None:
        """Record the strategy a plugin bot's bridge accepted (in its lane, after what came before)."""

        def record() -> None:
            with contextlib.suppress(SupervisorError):
                self.manager.mark(instance, strategy=strategy)

        with contextlib.suppress(RuntimeError):  # the agent is stopping
            self.lanes.submit(instance, record)

    def _on_external(self, topic: str, payload: bytes, props: Mapping[str, t.Any]) -> None:
        self._dispatch(
            topic,
            payload,
            props,
            lambda topic, payload, _dup, retained: self.external.handle(topic, payload, retained=retained),
        )

    def _on_own(self, topic: str, payload: bytes, props: Mapping[str, t.Any]) -> None:
        if topic.endswith("/status") and not props.get("retain") and self._answer_here(topic, payload, props):
            return
        self._dispatch(topic, payload, props, self.verbs.handle)

    def _answer_here(self, topic: str, payload: bytes, props: Mapping[str, t.Any]) -> bool:
        """Answer an own ``status`` on the network thread when the snapshot can (nothing to run, no hop).

        Return ``False`` (the pool takes it) when the instance's status is not fresh.
        """
        instance = topic[len(self.own) + 1 :].rpartition("/")[0]
        if not self.lanes.is_idle(instance):
            return False  # it answers after what its bot's lane holds, in order
        if self.view.fresh(instance) is None or not self._pending.acquire(blocking=False):
            return False
        try:
            self.verbs.handle(topic, payload, bool(props.get("dup")), False)
        except Exception:
            logger.exception("request on %s failed unexpectedly", clip(topic))
            self.replier.error_raw(payload, "internal error in the agent; see its log.")
        finally:
            self._pending.release()
        return True

    def _on_heartbeat(self, topic: str, _payload: bytes, _props: Mapping[str, t.Any]) -> None:
        name = topic[len(self.ns) + 1 :].partition("/")[0]
        status = self.view.status_of(name)
        if status is not None and status.plugin:
            self.beacon.heard_beat(name)

    # -- plugin bots: start-up window ------------------------------------------------

    def _on_status_update(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        """Pass a bridge's ``online`` on: its bot's held requests go to it (network thread: quick)."""
        if self.bridges.on_status_update(topic[len(self.ns) + 1 :].partition("/")[0], payload):
            self.probe.interrupt()  # the main loop sends them after the grace

    def hold(self, held: Held) -> None:
        """Keep a request for a plugin bot until its bridge is up (the main loop answers it if it never is)."""
        if self.bridges.hold(held):
            self.probe.interrupt()

    def _launched_at(self, instance: str) -> float | None:
        """When the bot was last launched (the registry's clock: a kernel start time may drift from ours)."""
        try:
            return self.manager.record(instance).started_at
        except SupervisorError:
            return None

    def _forwarded(self, item: Held) -> None:
        self.audit.record(topic=item.topic, reply_to=item.reply_to, result="forwarded", msg="to the bot's own bridge")
        logger.info("forwarding %s to the MQTT bridge of %s", item.topic, item.instance)

    def _expired(self, item: Held) -> None:
        """Answer a held request whose bot did not bring its bridge up in time."""
        msg = f"instance '{item.instance}': its MQTT bridge did not come up in time to answer. Check 'supervisor tail'."
        self.audit.record(topic=item.topic, reply_to=item.reply_to, result=protocol.STATUS_ERROR, msg=msg)
        reply = protocol.response(item.command, status=protocol.STATUS_ERROR, msg=msg)
        self.replier.reply(item.reply_to, reply, item.key)

    def _stored(self, statuses: list[InstanceStatus], announce: bool) -> None:
        """Say online/offline for bots the view just found up or gone (unless the first look, before "online")."""
        if announce:
            self.beacon.track(statuses)

    def _listen_to_bots(self) -> None:
        """Subscribe to what concerns this host's bots only, one filter each; forget bots that went.

        Hummingbot's requests and external events for each of this host's instances (with the relay),
        and the heartbeats and status updates of its plugin bots, which beat for themselves. Hummingbot's
        topics carry no host, so a filter with ``+`` would bring every bot of the fleet to every agent:
        no filter here grows with the fleet, and the agent's own beats never come back. A plugin bot's
        bridge says "online" once it has subscribed: requests held for it go to it then.
        """
        if not self._serving:
            return
        with self._subscription_lock:
            # What the view holds now, under this lock: of two looks stored at once, the later one wins here.
            names, plugins = self.view.bots()
            self._listen_to(names, plugins)

    def _listen_to(self, names: set[str], plugins: set[str]) -> None:
        # A name that is not one topic level (a hand-edited registry) would widen the filter: never listened to.
        names = {name for name in names if name and not set(name) & set("+#/")}
        plugins &= names
        wanted: dict[str, tuple[Handler, int]] = {}
        for name in sorted(names) if self.hbot_relay else ():
            for command in protocol.HBOT_COMMANDS:
                wanted[f"{self.ns}/{name}/{command}"] = (self._on_hbot, 1)
            # External events are Hummingbot topics too: unsigned, so only with the relay.
            wanted[self.external.topic_filter(name)] = (self._on_external, 1)
        for name in sorted(plugins):
            wanted[f"{self.ns}/{name}/hb"] = (self._on_heartbeat, 0)
            if self.hbot_relay:
                wanted[f"{self.ns}/{name}/status_updates"] = (self._on_status_update, 0)
        for topic_filter in self._listened.keys() - wanted.keys():
            self.connection.unsubscribe(topic_filter)
        for topic_filter, (handler, qos) in wanted.items():
            if topic_filter not in self._listened:
                self.connection.subscribe(topic_filter, handler, qos=qos)
        self._listened = wanted

    # -- what the watchdog reports ---------------------------------------------------

    def _on_incident(self, incident: Incident) -> None:
        name, status = incident.name, incident.status
        if incident.kind == "down" and status is not None:
            # Clients hear that the bot went away (and the crash is on record) before they hear it came back.
            self.beacon.gone(name, status)
            self.beacon.publish_states()
        elif incident.kind == "restarted":
            status = self.view.take(status, name)
            self.beacon.announce(name, status)
            self.beacon.notify(name, incident.message)
        elif incident.kind == "fatal" and status is not None:
            self.beacon.gone(name, status)
            self.beacon.notify(name, incident.message)
        elif incident.kind == "orphan":
            self.beacon.notify(name, incident.message)

    # -- periodic work ----------------------------------------------------------------

    def _state_readable(self, error: Exception | None) -> None:
        """Log a change in whether this host's state can be read: the error once, then its mending."""
        text = None if error is None else clip(str(error), 400)
        if text == self.view.state_error:
            return
        if text is None:
            logger.warning("this host's state can be read again; supervising and beating as before")
        else:
            logger.error("cannot read this host's state (%s); bots keep running, supervision paused until fixed", text)
        self.view.state_error = text

    host_beat_interval = 2.0
    """Seconds between two beats of the host itself (``{own}/{host}/beat``)."""
    _host_beat_due = 0.0

    def _beat_host(self) -> float:
        """Publish the host's own beat (not retained) when due; return when (monotonic) the next one is due.

        Sent from the main loop, so it stops when the loop does: readers tell a hung agent (no beat,
        no last will yet) from a dead one. ``current``: the state records are kept up to date.
        """
        now = time.monotonic()
        if now < self._host_beat_due:
            return self._host_beat_due
        topic = f"{self.own}/beat"
        current = self.view.state_error is None
        body: dict[str, t.Any] = {
            "host": self.host,
            "run": self.run_id,
            "ts": round(self._clock(), 3),
            "current": current,
        }
        if self.config.secret:
            body = sign_record(self.config.secret, topic, body)
        sent = self.connection.publish(topic, json.dumps(body, separators=(",", ":")).encode())
        # Not connected (a QoS 0 message is dropped): try again soon, so the beat follows the reconnect.
        self._host_beat_due = now + (self.host_beat_interval if sent else PROBE_INTERVAL)
        return self._host_beat_due

    def _stream_loop(self) -> None:
        """Publish plugin-less bots' console lines on ``log`` (and ``events``/``performance`` per recipe).

        Woken by inotify when a console log grows (one ``stat`` per bot every
        :data:`STREAM_SWEEP` seconds as a safety net); without inotify, one
        ``stat`` per bot every :data:`STREAM_POLL` seconds. The recipe is read only when there is news.
        """
        inotify = Inotify.open()
        poller = select.poll()
        if inotify is not None:
            poller.register(inotify.fd, select.POLLIN)
        watched: dict[str, int] = {}  # name -> inotify watch
        named: dict[int, str] = {}
        next_sweep = 0.0
        try:
            while not self._stop.is_set():
                if inotify is None:
                    self._stop.wait(STREAM_POLL)
                else:
                    poller.poll(1000)
                if not self._serving:
                    continue  # another run of this host id may serve: publish nothing for it
                statuses = self.view.snapshot()
                self.stream.follow(n for n, s in statuses.items() if not s.plugin)
                names = [n for n, s in statuses.items() if not s.plugin and s.is_running]
                if not names or not self.connection.is_connected:
                    continue
                if inotify is None or time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + STREAM_SWEEP
                    news = {n for n in names if self.stream.has_news(n, self._console_log(n))}
                else:
                    news = set()
                if inotify is not None:
                    for wd, mask, _name in inotify.read():
                        name = named.get(wd)
                        if name is not None:
                            news.add(name)
                            if mask & Inotify.IGNORED:  # the file went away: watch the new one
                                watched.pop(name, None)
                                named.pop(wd, None)
                    self._watch_logs(inotify, names, watched, named)
                for name in news & set(names):
                    self._stream_one(name)
        finally:
            if inotify is not None:
                inotify.close()

    def _watch_logs(self, inotify: Inotify, names: list[str], watched: dict[str, int], named: dict[int, str]) -> None:
        for name in set(watched) - set(names):
            old = watched.pop(name)
            named.pop(old, None)
            inotify.remove(old)
        for name in set(names) - set(watched):
            wd = inotify.add(self._console_log(name), Inotify.MODIFY)
            if wd is not None:  # no log yet: the next sweep reads it, the next pass watches it
                watched[name] = wd
                named[wd] = name

    def _console_log(self, name: str) -> str:
        path = self._console_logs.get(name)
        if path is None:
            path = self._console_logs[name] = str(self.manager.console_log(name))
        return path

    def _stream_one(self, name: str) -> None:
        try:
            self.stream.poll(name, Path(self._console_log(name)), self.manager.recipe(name))
        except SupervisorError as e:
            logger.debug("not streaming %s's console: %s", name, e)
        except Exception:
            logger.exception("streaming %s's console failed", name)
