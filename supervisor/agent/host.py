"""The agent: relays MQTT requests into sessions, publishes heartbeats and state, drives the watchdog.

It calls the same :class:`~supervisor.core.manager.Manager` as the CLI; bots never run
under it. It keeps one status snapshot of the host, derived again only when a cheap
:class:`~supervisor.core.watchdog.Probe` (four looks a second) says it went stale, and:

* answers requests (network thread -> worker pool; an own ``status`` from a fresh
  snapshot on the network thread itself): Hummingbot-compatible commands on
  ``{ns}/{id}/{command}`` for instances whose bot has no MQTT plugin (or whose
  plugin is down), and our own verbs on ``{own}/{host}/{instance}/{verb}``;
* lets the :class:`~supervisor.core.watchdog.Watchdog` restart crashed bots (backoff,
  ``fatal``, bring-back after a reboot) and publishes what it reports;
* publishes heartbeats and ``status_updates`` for plugin-less bots whose process is
  alive, retained ``state`` records as they change, and agent availability.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
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
from supervisor.agent.external import ExternalEvents
from supervisor.agent.lane import Lanes
from supervisor.agent.own import OwnVerbs
from supervisor.agent.plugin import Held, PluginBridges
from supervisor.agent.relay import HbotRelay
from supervisor.agent.snapshot import SnapshotServer
from supervisor.agent.stream import ConsoleStream
from supervisor.agent.wire import Replier
from supervisor.audit import AuditLog, clip
from supervisor.core.registry import DESIRED_RUNNING
from supervisor.core.watchdog import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    FAST_FAILURE,
    FATAL_AFTER,
    Incident,
    Inotify,
    Probe,
    Watchdog,
    pid_alive,
)
from supervisor.errors import AgentError, SupervisorError
from supervisor.mqtt import protocol
from supervisor.mqtt.auth import Verifier, is_signed_record, sign_record
from supervisor.mqtt.connection import Connection
from supervisor.mqtt.guard import STATUS_BUSY, RefusalLog
from supervisor.states import State

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from supervisor.core.manager import ForeignSession, InstanceStatus, Manager
    from supervisor.mqtt.config import AgentConfig

logger = logging.getLogger(__name__)

MAX_PENDING = 64
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
SNAPSHOT_MAX_AGE = 1.0
"""A status older than this is derived again before it answers a request (its CPU and memory figures age)."""
_TRANSITIONAL = frozenset({State.STARTING, State.WAITING_LOGIN})
"""States a look by another process can end (its readiness record), unseen by the probe."""
_VOLATILE = frozenset({"cpu_percent", "rss", "uptime", "last_heartbeat"})
_DOWN = (State.CRASHED, State.EXITED)


def _stable(status: InstanceStatus) -> tuple[t.Any, ...]:
    """Return what a state record says apart from its ever-changing figures (a record goes out when this changes)."""
    return tuple(getattr(status, f.name) for f in dataclasses.fields(status) if f.name not in _VOLATILE)


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
        self._alive: dict[str, bool] = {}
        self._last_heartbeat: dict[str, float] = {}
        self._published: dict[str, tuple[InstanceStatus, tuple[t.Any, ...]]] = {}
        self._plugin_alive: dict[str, bool] = {}
        self._liveness_lock = threading.Lock()
        # The snapshot: each instance's last derived status, and when (monotonic) it was derived.
        self._statuses: dict[str, InstanceStatus] = {}
        self._looked: dict[str, float] = {}
        self._dirty: set[str] = set()  # names whose state record may have to go out again
        self._foreign_cache: tuple[float, list[ForeignSession]] = (-SNAPSHOT_MAX_AGE, [])
        self._foreign_lock = threading.Lock()
        self._beat_listened: set[str] = set()
        self._subscription_lock = threading.Lock()
        self._console_logs: dict[str, str] = {}
        self._status_lock = threading.Lock()
        self._publish_lock = threading.Lock()
        # One run of this agent: in its records and client id, so another agent with the same
        # host id is told apart (and the two do not keep kicking each other off the broker).
        self.run_id = uuid.uuid4().hex[:12]
        self._state_error: str | None = None
        self._serving = False
        self._first_ready: float | None = None
        self._duplicate_of: dict[str, t.Any] | None = None
        self._reassert_lock = threading.Lock()
        self._reassert_pending = False
        self._last_reassert = 0.0
        self.external = ExternalEvents(
            manager,
            self.ns,
            report=self.notify,
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
        self.relay = HbotRelay(self, manager, self.connection, self.replier, self.bridges, self.ns, self.audit.record)
        self.verbs = OwnVerbs(
            self,
            manager,
            self.replier,
            self.watchdog,
            host_id=self.host,
            own=self.own,
            verifier=self.verifier,
            audit=self.audit.record,
        )
        self.snapshots = SnapshotServer(manager.paths.agent_socket, self.provide, tmux_socket=manager.paths.tmux_socket)

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
                        self.look_all()
                        self._state_readable(None)
                    elif self._look_changed():
                        self._state_readable(None)
                    if self._state_error is None:
                        if self.watchdog.check(self._snapshot()):
                            self.look_all()  # what was restarted or marked fatal: no stale record goes out
                        if now >= next_heartbeat:
                            self._heartbeats()
                            next_heartbeat = now + self.config.heartbeat_interval
                        if state_due:
                            self.watchdog.find_orphans()
                        self._publish_states(force=state_due)
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
                if self._state_error is not None:
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
        for name, alive in list(self._alive.items()):
            if alive:
                self._status_update(name, "offline")
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
            names = list(self._published)
            record["instances"] = len(names)
            record["generation"] = protocol.instances_generation(names)
        if self.config.secret:
            record = sign_record(self.config.secret, topic or f"{self.own}/agent", record)
        return json.dumps(record, separators=(",", ":")).encode()

    def _on_connect(self) -> None:
        if self._first_ready is None:
            self._first_ready = time.monotonic()
        if self._serving:
            self.connection.publish(f"{self.own}/agent", self._availability("online"), qos=1, retain=True)
        else:
            self._claim()
        # Retained state may have been lost with a broker restart: publish everything again.
        with self._status_lock:
            self._published.clear()
            self._dirty |= set(self._statuses)

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
            self.look_all(announce=False)
        self._subscribe()
        if self.connection.is_connected:
            self.connection.publish(f"{self.own}/agent", self._availability("online"), qos=1, retain=True)
        logger.info(
            "agent %s (run %s) serving %s/+/… and %s/… on %s",
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
        for command in protocol.HBOT_COMMANDS if self.hbot_relay else ():
            self.connection.subscribe(f"{self.ns}/+/{command}", self._on_hbot, qos=1)
        if self.hbot_relay:  # external events are Hummingbot topics too: unsigned, so only with the relay
            self.connection.subscribe(self.external.topic_filter, self._on_external, qos=1)
        for verb in protocol.OWN_VERBS:
            self.connection.subscribe(f"{self.own}/+/{verb}", self._on_own, qos=1)
        for verb in protocol.HOST_VERBS:
            self.connection.subscribe(f"{self.own}/{verb}", self._on_own, qos=1)
        # Plugin bots beat for themselves: record when, so `fleet ls` shows their heartbeat age.
        with self._status_lock:
            plugins = {name for name, status in self._statuses.items() if status.plugin}
        self._listen_to_beats(plugins)

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
        if not self._pending.acquire(blocking=False):
            if work == self.relay.handle and not self.relay.answers(topic):
                return  # another host's id, or a bot whose own bridge answers: stay silent, as everywhere else
            self.refusals.refuse("busy", topic, "too many requests in flight", result=STATUS_BUSY)
            self.replier.error_raw(
                payload, "agent is busy: too many requests in flight. Try again.", status=STATUS_BUSY, spare=True
            )
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

        lane = self._lane_of(topic)
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
        if self.fresh(instance) is None or not self._pending.acquire(blocking=False):
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
        with self._status_lock:
            status = self._statuses.get(name)
        if status is not None and status.plugin:
            self._last_heartbeat[name] = round(self._clock(), 3)

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

    # -- the snapshot -------------------------------------------------------------------

    def _snapshot(self) -> dict[str, InstanceStatus]:
        with self._status_lock:
            return dict(self._statuses)

    def _store(
        self,
        statuses: Sequence[InstanceStatus],
        since: float,
        *,
        complete: bool = False,
        gone: Iterable[str] = (),
        announce: bool = True,
    ) -> None:
        """Put statuses derived from ``since`` (monotonic) into the snapshot; none replaces a newer one.

        ``complete``: they are all there is (others are dropped); ``gone``: names whose records are gone;
        ``announce``: say online/offline for bots that came up or went (else the next heartbeat tick does).
        """
        with self._status_lock:
            dropped = set(gone)
            if complete:
                dropped |= set(self._statuses) - {s.name for s in statuses}
            for name in dropped:
                if self._looked.get(name, 0.0) <= since:
                    self._statuses.pop(name, None)
                    self._looked.pop(name, None)
                    self._dirty.add(name)
                    self.probe.forget(name)
            kept = []
            for status in statuses:
                if self._looked.get(status.name, 0.0) > since:
                    continue  # a request's action derived it later than this look began
                self._statuses[status.name] = status
                self._looked[status.name] = since
                self._dirty.add(status.name)
                kept.append(status)
            plugins = {name for name, status in self._statuses.items() if status.plugin} if complete or kept else None
        self.probe.watch(kept)
        if announce:
            self._track_liveness(kept)
        if plugins is not None and plugins != self._beat_listened:
            self._listen_to_beats(plugins)

    def _listen_to_beats(self, plugins: set[str]) -> None:
        """Subscribe to the heartbeats and status updates of this host's plugin bots only (one filter each).

        The agent's own beats never come back, and no filter grows with the fleet. A plugin bot's
        bridge says "online" once it has subscribed: requests held for it go to it then.
        """
        if not self._serving:
            return
        with self._subscription_lock:
            for name in self._beat_listened - plugins:
                self.connection.unsubscribe(f"{self.ns}/{name}/hb")
                self.connection.unsubscribe(f"{self.ns}/{name}/status_updates")
            for name in plugins - self._beat_listened:
                self.connection.subscribe(f"{self.ns}/{name}/hb", self._on_heartbeat, qos=0)
                if self.hbot_relay:
                    self.connection.subscribe(f"{self.ns}/{name}/status_updates", self._on_status_update, qos=0)
            self._beat_listened = set(plugins)

    def look_all(self, *, announce: bool = True) -> dict[str, InstanceStatus]:
        """Derive every instance's status (one session query per backend, one process-table pass)."""
        since = time.monotonic()
        self.probe.watch_registry()  # before the look: a write meanwhile is seen at the next probe
        statuses = self.manager.status()
        self._store(statuses, since, complete=True, announce=announce)
        return self._snapshot()

    def _look_changed(self) -> bool:
        """Derive again what the probe says may have changed; return whether that was everything."""
        change = self.probe.changes()
        if change.everything:
            self.look_all()
            return True
        if change.names:
            self.manager.forget_sessions()  # a bot just ended: its session may be gone too
            since = time.monotonic()
            gone = {name for name in change.names if not self.manager.has(name)}
            statuses = self.manager.status(sorted(change.names - gone)) if change.names - gone else []
            self._store(statuses, since, gone=gone)
        return False

    def look(self, instance: str) -> InstanceStatus:
        """Derive one instance's status now, and keep it in the snapshot."""
        return self._look_some([instance])[instance]

    def _look_some(self, names: Sequence[str]) -> dict[str, InstanceStatus]:
        """Derive these instances' statuses in one look, and keep them in the snapshot.

        Raises
        ------
        InstanceNotFound
        """
        since = time.monotonic()
        statuses = self.manager.status(names)
        self._store(statuses, since)
        return {status.name: status for status in statuses}

    def take(self, status: InstanceStatus | None, instance: str) -> InstanceStatus:
        """Keep the status an action returned (derived just now), or derive one when it returned none."""
        if status is None:
            return self.look(instance)
        self._store([status], time.monotonic())
        return status

    def fresh(self, instance: str) -> InstanceStatus | None:
        """Return the snapshot's status of ``instance`` if it can answer a request as it is, else ``None``.

        It can while the host's state is readable and the registry unchanged,
        it was derived less than :data:`SNAPSHOT_MAX_AGE` ago, and its bot (if
        it had one) is still alive.
        """
        if self._state_error is not None or self.probe.registry_changed():
            return None
        with self._status_lock:
            status = self._statuses.get(instance)
            looked = self._looked.get(instance, 0.0)
        if status is None or time.monotonic() - looked > SNAPSHOT_MAX_AGE:
            return None
        if status.pid is not None and not pid_alive(status.pid):
            return None
        if status.state in _TRANSITIONAL:
            return None  # another process (a `start --wait`) may have seen its ready line meanwhile
        return status

    def current(self, instance: str) -> InstanceStatus:
        """Return the status of ``instance`` for a request: the snapshot's when fresh, else a new look."""
        return self.fresh(instance) or self.look(instance)

    def fresh_all(self) -> dict[str, InstanceStatus] | None:
        """Return the whole snapshot if every status in it is fresh (see :meth:`_fresh`), else ``None``."""
        if self._state_error is not None or self.probe.registry_changed():
            return None
        now = time.monotonic()
        with self._status_lock:
            if any(now - self._looked.get(name, 0.0) > SNAPSHOT_MAX_AGE for name in self._statuses):
                return None
            statuses = dict(self._statuses)
        if any(s.pid is not None and not pid_alive(s.pid) for s in statuses.values()):
            return None
        return statuses

    def status_of(self, name: str) -> InstanceStatus | None:
        """Return the snapshot's status of ``name`` as it is (no look), or ``None``."""
        with self._status_lock:
            return self._statuses.get(name)

    def known(self, instance: str) -> bool:
        """Return whether ``instance`` is one of this host's (in the snapshot, or on record)."""
        with self._status_lock:
            if instance in self._statuses:
                return True
        return self.manager.has(instance)

    def provide(self, names: list[str], foreign: bool) -> dict[str, t.Any]:
        """Answer ``supervisor ls`` over the snapshot socket: the statuses of ``names`` (all when empty).

        From the snapshot while every status in it is younger than
        :data:`SNAPSHOT_MAX_AGE` (states are current: the probe sees every
        change), else from a new look; with ``foreign``, the foreign sessions
        too, looked at most once per :data:`SNAPSHOT_MAX_AGE`.

        Raises
        ------
        InstanceNotFound
        """
        statuses = self.fresh_all() or self.look_all()
        # Looked at again, in one look: names new since the snapshot (or strangers: InstanceNotFound), and
        # bots between launch and ready, whose ready line another process (a `start --wait`) may have seen.
        again = [
            name for name in names or list(statuses) if name not in statuses or statuses[name].state in _TRANSITIONAL
        ]
        if again:
            statuses.update(self._look_some(again))
        selected = [statuses[name] for name in names] if names else [statuses[n] for n in sorted(statuses)]
        return {
            "instances": [status.to_dict() for status in selected],
            "foreign": [session.to_dict() for session in self._foreign()] if foreign else [],
        }

    def _foreign(self) -> list[ForeignSession]:
        with self._foreign_lock:
            looked, sessions = self._foreign_cache
            if time.monotonic() - looked > SNAPSHOT_MAX_AGE:
                sessions = self.manager.foreign_sessions()
                self._foreign_cache = (time.monotonic(), sessions)
            return sessions

    # -- what the watchdog reports ---------------------------------------------------

    def _on_incident(self, incident: Incident) -> None:
        name, status = incident.name, incident.status
        if incident.kind == "down" and status is not None:
            # Clients hear that the bot went away (and the crash is on record) before they hear it came back.
            self.gone(name, status)
            self._publish_states(force=False)
        elif incident.kind == "restarted":
            status = self.take(status, name)
            self.announce(name, status)
            self.notify(name, incident.message)
        elif incident.kind == "fatal" and status is not None:
            self.gone(name, status)
            self.notify(name, incident.message)
        elif incident.kind == "orphan":
            self.notify(name, incident.message)

    # -- periodic work ----------------------------------------------------------------

    def _state_readable(self, error: Exception | None) -> None:
        """Log a change in whether this host's state can be read: the error once, then its mending."""
        text = None if error is None else clip(str(error), 400)
        if text == self._state_error:
            return
        if text is None:
            logger.warning("this host's state can be read again; supervising and beating as before")
        else:
            logger.error("cannot read this host's state (%s); bots keep running, supervision paused until fixed", text)
        self._state_error = text

    def notify(self, name: str, message: str) -> None:
        """Publish an agent event about ``name`` (and, for a bot we speak for, Hummingbot's ``notify``)."""
        event = {"ts": round(self._clock(), 3), "host": self.host, "instance": name, "msg": message}
        self.connection.publish(f"{self.own}/{name}/events", json.dumps(event).encode(), qos=1)
        with self._status_lock:
            status = self._statuses.get(name)
        if status is not None and not status.plugin:
            self.connection.publish(f"{self.ns}/{name}/notify", protocol.notify(0, message))

    def _heartbeats(self) -> None:
        """Publish ``hb`` for plugin-less bots whose process is alive (as the snapshot says: kept current)."""
        with self._liveness_lock:
            statuses = self._snapshot()
            self._track_liveness_locked(statuses.values(), beat=True)
            for gone in set(self._alive) - set(statuses):
                self._alive.pop(gone)
            for gone in set(self._plugin_alive) - set(statuses):
                self._plugin_alive.pop(gone)

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
        current = self._state_error is None
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

    def _track_liveness(self, statuses: Iterable[InstanceStatus]) -> None:
        with self._liveness_lock:
            self._track_liveness_locked(statuses, beat=False)

    def _track_liveness_locked(self, statuses: Iterable[InstanceStatus], *, beat: bool) -> None:
        """Say ``online`` (and beat) for bots that came up, ``offline`` for those gone; ``beat``: beat the others too.

        A plugin bot announces itself and beats for itself, but never says
        ``offline``: the agent says it when the bot's process is gone.
        """
        for status in statuses:
            name, alive = status.name, status.is_running  # the process, not readiness: beats say "alive"
            if status.plugin:
                if self._plugin_alive.get(name) and not alive:
                    self._status_update(name, "offline")
                self._plugin_alive[name] = alive
                continue
            was = self._alive.get(name, False)
            if alive and not was:
                self._status_update(name, "online")
                self._beat(name)
            elif was and not alive:
                self._status_update(name, "offline")
            elif alive and beat and not self._beat_recently(name):
                self._beat(name)
            self._alive[name] = alive

    def _beat_recently(self, name: str) -> bool:
        """Whether a beat went out within half an interval (at launch): the tick then skips one, keeping the cadence."""
        last = self._last_heartbeat.get(name)
        return last is not None and self._clock() - last < self.config.heartbeat_interval / 2

    def _beat(self, name: str) -> None:
        self.connection.publish(f"{self.ns}/{name}/hb", protocol.heartbeat())
        self._last_heartbeat[name] = round(self._clock(), 3)

    def announce(self, name: str, status: InstanceStatus, *, relaunched: bool = False) -> None:
        """Say ``online`` and beat at once for a plugin-less bot whose process was just (re)launched.

        ``relaunched``: a request just launched it and its reply went out: it beats now even if a
        beat for the old process went out moments ago, so heartbeats follow the reply.
        """
        with self._liveness_lock:
            announced = not status.plugin and status.is_running and self._alive.get(name)
            if announced and (relaunched or not self._beat_recently(name)):
                self._beat(name)  # a new process behind a name already announced: it beats at once too
            self._track_liveness_locked([status], beat=False)

    def gone(self, name: str, status: InstanceStatus) -> None:
        """Say ``offline`` for a bot the agent had announced (or seen alive) whose process is gone."""
        if not status.is_running:
            self._track_liveness([status])

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
                statuses = self._snapshot()
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

    def _status_update(self, name: str, state: t.Literal["online", "offline"]) -> None:
        self.connection.publish(f"{self.ns}/{name}/status_updates", protocol.status_update(state))

    def publish_states(self) -> None:
        """Publish the state records that changed, now (not at the next tick)."""
        self._publish_states(force=False)

    def _publish_states(self, *, force: bool) -> None:
        """Publish retained ``state`` records that changed (all of them when ``force``)."""
        if not self.connection.is_connected:
            return
        with self._publish_lock:  # the main loop, the watchdog's reports and request workers all publish
            self._publish_states_locked(force=force)

    def _publish_states_locked(self, *, force: bool) -> None:
        before = set(self._published)
        with self._status_lock:
            statuses = dict(self._statuses)
            names = set(statuses) | set(self._published) if force else self._dirty
            self._dirty = set()
        now = self._clock()
        for name in names:
            status = statuses.get(name)
            previous = self._published.get(name)
            if status is None:
                if previous is not None:
                    self.connection.publish(f"{self.own}/{name}/state", b"", qos=1, retain=True)
                    self._published.pop(name, None)
                continue
            if not force and previous is not None and previous[0] is status:
                continue
            stable = _stable(status)
            if not force and previous is not None and previous[1] == stable:
                self._published[name] = (status, stable)
                continue
            if status.state in _DOWN and status.desired == DESIRED_RUNNING and self.probe.is_busy(name):
                with self._status_lock:
                    self._dirty.add(name)  # mid-restart (someone holds its lock): the gap is no crash
                continue
            record = {**status.to_dict(), "last_heartbeat": self._last_heartbeat.get(name)}
            body = {**record, "host": self.host, "ts": round(now, 3), "refresh": self.config.state_interval}
            topic = f"{self.own}/{name}/state"
            if self.config.secret:
                body = sign_record(self.config.secret, topic, body)
            self.connection.publish(topic, json.dumps(body).encode(), qos=1, retain=True)
            self._published[name] = (status, stable)
        if set(self._published) != before and not self._stop.is_set():
            # The set of records changed: the availability record says so, after the records themselves.
            self.connection.publish(f"{self.own}/agent", self._availability("online"), qos=1, retain=True)
