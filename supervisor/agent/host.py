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
import functools
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
from supervisor.agent.answer import read_answer, read_trades
from supervisor.agent.external import ExternalEvents
from supervisor.agent.snapshot import SnapshotServer
from supervisor.agent.stream import ConsoleStream
from supervisor.audit import AuditLog, clip
from supervisor.core.manager import check_strategy
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
from supervisor.errors import AgentError, AuthError, InstanceNotFound, InstanceNotRunning, SupervisorError
from supervisor.mqtt import protocol
from supervisor.mqtt.auth import Verifier, is_signed_record, sign_record
from supervisor.mqtt.connection import Connection
from supervisor.mqtt.dedup import Redeliveries
from supervisor.mqtt.guard import STATUS_BUSY, RefusalLog, is_command_topic
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


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """What a Hummingbot command did: the reply's status, msg and extra fields (history's trades)."""

    code: int
    msg: str
    extra: Mapping[str, t.Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Held:
    """A request for a plugin bot whose MQTT bridge is not up yet; forwarded to it once it is."""

    topic: str
    payload: bytes
    reply_to: str
    command: str
    key: str
    deadline: float


@functools.cache
def _envelope_parts() -> tuple[bytes, bytes]:
    # The envelope of {} at time 0, cut around the timestamp; data is its last member ({} then "}").
    empty = protocol.encode_reply({}, now_ms=0)
    head, _, tail = empty.partition(b'"timestamp":0,')
    return head + b'"timestamp":', b"," + tail[:-3]


def _envelope(data: bytes) -> bytes:
    """Return :func:`protocol.encode_reply`'s envelope around ``data``, already encoded by :func:`protocol.dumps`."""
    head, tail = _envelope_parts()
    return head + str(time.time_ns() // 1_000_000).encode() + tail + data + b"}"


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
        self._alive: dict[str, bool] = {}
        self._last_heartbeat: dict[str, float] = {}
        self._published: dict[str, tuple[InstanceStatus, tuple[t.Any, ...]]] = {}
        self._plugin_alive: dict[str, bool] = {}
        self._liveness_lock = threading.Lock()
        self.redeliveries = Redeliveries()
        # The snapshot: each instance's last derived status, and when (monotonic) it was derived.
        self._statuses: dict[str, InstanceStatus] = {}
        self._looked: dict[str, float] = {}
        self._dirty: set[str] = set()  # names whose state record may have to go out again
        self._replies: dict[str, tuple[InstanceStatus, dict[str, t.Any], bytes]] = {}
        self._foreign_cache: tuple[float, list[ForeignSession]] = (-SNAPSHOT_MAX_AGE, [])
        self._foreign_lock = threading.Lock()
        self._beat_listened: set[str] = set()
        self._subscription_lock = threading.Lock()
        self._console_logs: dict[str, str] = {}
        # Plugin bots: when each bridge last said "online", and requests held until it does.
        self._bridge_online: dict[str, float] = {}
        self._held: dict[str, list[_Held]] = {}
        self._held_lock = threading.Lock()
        self._listening_since = time.time()
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
            report=self._notify,
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
                        self._look_all()
                        self._state_readable(None)
                    elif self._look_changed():
                        self._state_readable(None)
                    if self._state_error is None:
                        if self.watchdog.check(self._snapshot()):
                            self._look_all()  # what was restarted or marked fatal: no stale record goes out
                        if now >= next_heartbeat:
                            self._heartbeats()
                            next_heartbeat = now + self.config.heartbeat_interval
                        if state_due:
                            self.watchdog.find_orphans()
                        self._publish_states(force=state_due)
                    if state_due:
                        next_state = now + self.config.state_interval
                    self._expire_held()
                except (SupervisorError, OSError) as e:
                    # A broken, deleted or unreadable registry or recipe: the bots run on in their sessions.
                    # Keep serving; say it once, and again when it is mended. No beat is sent on a guess.
                    self._state_readable(e)
                    next_look = now + self.check_interval
                self.refusals.flush()
                wake = min(next_look, next_heartbeat, next_state) - time.monotonic()
                restart = self.watchdog.next_attempt()
                if restart is not None:
                    wake = min(wake, restart - self._clock())
                if self._held or self._reassert_pending:
                    wake = min(wake, REASSERT_GAP)  # held requests of plugin bots expire on time
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
            "state_interval": self.config.state_interval,
            "keepalive": self.config.broker.keepalive,
            "signed": self.verifier is not None,
        }
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
        if self.hbot_relay:
            # A plugin bot's bridge says "online" once it has subscribed: held requests go to it then.
            self.connection.subscribe(f"{self.ns}/+/status_updates", self._on_status_update, qos=0)
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
        """Hand a request to the pool (handlers run on the network thread and must be quick).

        The handler gets the MQTT DUP and retain flags of the message. When every
        slot is taken the request is refused before it runs (503), so an executed
        request always has room for its reply in the outgoing queue.
        """
        if not self._pending.acquire(blocking=False):
            if work == self._handle_hbot and not self._answers_hbot(topic):
                return  # another host's id, or a bot whose own bridge answers: stay silent, as everywhere else
            self.refusals.refuse("busy", topic, "too many requests in flight", result=STATUS_BUSY)
            self._reply_error_raw(
                payload, "agent is busy: too many requests in flight. Try again.", status=STATUS_BUSY, spare=True
            )
            return
        dup, retained = bool(props.get("dup")), bool(props.get("retain"))

        def job() -> None:
            try:
                work(topic, payload, dup, retained)
            except Exception:
                logger.exception("request on %s failed unexpectedly", clip(topic))
                self._reply_error_raw(payload, "internal error in the agent; see its log.")
            finally:
                self._pending.release()

        try:
            self._pool.submit(job)
        except RuntimeError:  # the pool is shut down: the agent is stopping
            self._pending.release()

    def _answers_hbot(self, topic: str) -> bool:
        """Return whether this agent answers ``topic``, judged on the last snapshot (cheap: network thread)."""
        instance = topic[len(self.ns) + 1 :].partition("/")[0]
        with self._status_lock:
            status = self._statuses.get(instance)
        return status is not None and not (status.plugin and status.is_running)

    def _on_hbot(self, topic: str, payload: bytes, props: Mapping[str, t.Any]) -> None:
        self._dispatch(topic, payload, props, self._handle_hbot)

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
        self._dispatch(topic, payload, props, self._handle_own)

    def _answer_here(self, topic: str, payload: bytes, props: Mapping[str, t.Any]) -> bool:
        """Answer an own ``status`` on the network thread when the snapshot can (nothing to run, no hop).

        Return ``False`` (the pool takes it) when the instance's status is not fresh.
        """
        instance = topic[len(self.own) + 1 :].rpartition("/")[0]
        if self._fresh(instance) is None or not self._pending.acquire(blocking=False):
            return False
        try:
            self._handle_own(topic, payload, bool(props.get("dup")), False)
        except Exception:
            logger.exception("request on %s failed unexpectedly", clip(topic))
            self._reply_error_raw(payload, "internal error in the agent; see its log.")
        finally:
            self._pending.release()
        return True

    def _on_heartbeat(self, topic: str, _payload: bytes, _props: Mapping[str, t.Any]) -> None:
        name = topic[len(self.ns) + 1 :].partition("/")[0]
        with self._status_lock:
            status = self._statuses.get(name)
        if status is not None and status.plugin:
            self._last_heartbeat[name] = round(self._clock(), 3)

    def _reply(
        self,
        reply_to: str,
        data: Mapping[str, t.Any],
        key: str | None = None,
        *,
        spare: bool = False,
        encoded: bytes | None = None,
    ) -> None:
        """Publish a reply; ``spare`` ones (refusals) only while the queue has room beyond executed requests'.

        ``encoded`` is ``data`` already encoded as :func:`protocol.encode_reply` encodes it (a status, once per look).
        """
        try:
            topic = protocol.reply_topic(reply_to)
        except protocol.ProtocolError as e:
            logger.warning("cannot answer on reply_to %s: %s", clip(reply_to, 80), e)
            return
        if self._is_command_topic(topic):
            return  # never publish where an agent or a bot would take it as a command or a record
        body = protocol.encode_reply(data) if encoded is None else _envelope(encoded)
        if key is not None:
            self.redeliveries.answered(key, body)
        if not self.connection.publish(topic, body, qos=1, headroom=REPLY_RESERVE if spare else 0):
            self.refusals.refuse("unanswered", topic, "outgoing queue is full; reply dropped")

    def _is_command_topic(self, topic: str) -> bool:
        return is_command_topic(topic, self.ns, self.config.own_prefix, protocol.HBOT_COMMANDS)

    def _reply_error_raw(
        self, payload: bytes, message: str, *, status: int = protocol.STATUS_ERROR, spare: bool = False
    ) -> None:
        try:
            request = protocol.parse_request(payload)
        except protocol.ProtocolError as e:
            if e.reply_to:
                self._reply(e.reply_to, {"status": status, "msg": message}, spare=spare)
            return
        self._reply(request.reply_to, {"status": status, "msg": message}, spare=spare)

    def _refuse_retained(self, topic: str, payload: bytes) -> None:
        """Answer 400 to a request that came with the retain flag; it is never executed."""
        self.refusals.refuse("retained", topic, "request arrived with the retain flag", result=protocol.STATUS_ERROR)
        self._reply_error_raw(
            payload,
            "bad request: it arrived retained (MQTT retain flag). Retained requests are never executed; "
            "publish requests without retain.",
            spare=True,
        )

    def _fresh_request(self, topic: str, payload: bytes, dup: bool) -> tuple[protocol.Request, str] | None:
        """Return a new, well-formed request and its dedup key; ``None`` for redeliveries and bad requests.

        A redelivery (DUP flag, or the same bytes within a few seconds) is not
        run again; it gets the reply already sent, if any.
        """
        new, key, cached = self.redeliveries.check(topic, payload, dup=dup)
        if not new:
            # Counted with the refusals: a stranger repeating one request must not grow the logs line by line.
            self.refusals.refuse(
                "redelivered", topic, "a redelivery of a request already handled: not run again", result="ignored"
            )
            if cached is not None:
                with contextlib.suppress(protocol.ProtocolError):
                    again = protocol.parse_request(payload)
                    self.connection.publish(protocol.reply_topic(again.reply_to), cached, qos=1)
            return None
        request = self._parse(topic, payload)
        return None if request is None else (request, key)

    def _parse(self, topic: str, payload: bytes) -> protocol.Request | None:
        """Parse a request; answer 400 where possible and return ``None`` when it is unusable."""
        try:
            request = protocol.parse_request(payload)
        except protocol.ProtocolError as e:
            self.refusals.refuse("malformed", topic, str(e), result=protocol.STATUS_ERROR)
            if e.reply_to:
                self._reply(e.reply_to, {"status": protocol.STATUS_ERROR, "msg": f"bad request: {e}"}, spare=True)
            return None
        if self._is_command_topic(protocol.reply_topic(request.reply_to)):
            # Nobody can be answered there: a reply would land as a command (or a record) of some agent or bot.
            self.refusals.refuse(
                "reply_to", topic, f"reply_to {request.reply_to!r} is a command topic", result=protocol.STATUS_ERROR
            )
            return None
        return request

    # -- Hummingbot-compatible commands -------------------------------------------

    def _handle_hbot(self, topic: str, payload: bytes, dup: bool = False, retained: bool = False) -> None:
        rest = topic[len(self.ns) + 1 :]
        instance, _, command = rest.partition("/")
        if not self._known(instance):
            # Another host's agent, or a real Hummingbot, may own this id: stay silent.
            return
        # Whether to answer at all is judged on the snapshot (kept current by the probe), before the duplicate check.
        with self._status_lock:
            status = self._statuses.get(instance)
        if status is None or (status.plugin and not status.is_running):
            # New, or a down plugin bot: a bot just launched must not be taken for down.
            self.manager.forget_sessions()
            status = self._look(instance)
        if status.plugin:
            self._note_strategy(instance, command, payload)
        if status.plugin and status.is_running and self._bridge_is_up(instance):
            # The bot's own MQTT bridge answers while it is up (even to bad requests): never a double reply.
            return
        if retained:
            self._refuse_retained(topic, payload)
            return
        fresh = self._fresh_request(topic, payload, dup)
        if fresh is None:
            return
        request, key = fresh
        if status.plugin and status.is_running:
            # Its process is up but its bridge is not yet: hold the request and forward it then.
            self._hold(instance, command, topic, payload, request, key)
            return
        status = self._current(instance)  # one status for this request, passed down
        try:
            data = protocol.validate(command, request.data)
            refusal = self._refusal(instance, command, data, status)
        except protocol.ProtocolError as e:
            refusal = f"bad request: {e}"
        except SupervisorError as e:
            refusal = str(e)
        if refusal is not None:
            self._answer_hbot(request, command, topic, key, _Outcome(protocol.STATUS_ERROR, refusal))
            return
        if status.plugin and command == "start":
            # Launch it with the requested strategy, then let its own bridge answer the request.
            try:
                self._run_hbot(instance, command, data, status)
            except SupervisorError as e:
                self._answer_hbot(request, command, topic, key, _Outcome(protocol.STATUS_ERROR, str(e)))
                return
            self._hold(instance, command, topic, payload, request, key)
            return
        if data.get("async_backend") is True and command in ("start", "stop"):
            # As the bot does: answer at once, then do the (possibly long) work; its console's answer goes to notify.
            self._answer_hbot(request, command, topic, key, _Outcome(protocol.STATUS_OK, ""))
            try:
                outcome = self._run_hbot(instance, command, data, status)
                if outcome.msg:
                    self._hbot_notify(instance, outcome.msg)
            except SupervisorError as e:
                logger.warning("%s of %s failed: %s", command, instance, e)
                self._notify(instance, f"{command} failed: {e}")
            return
        try:
            outcome = self._run_hbot(instance, command, data, status)
        except SupervisorError as e:
            outcome = _Outcome(protocol.STATUS_ERROR, str(e))
        self._answer_hbot(request, command, topic, key, outcome)

    def _answer_hbot(self, request: protocol.Request, command: str, topic: str, key: str, outcome: _Outcome) -> None:
        self.audit.record(
            topic=topic,
            client=request.header.get("node_id") or request.header.get("agent"),
            reply_to=request.reply_to,
            result=outcome.code,
            msg=outcome.msg[:200],
        )
        reply = protocol.response(command, status=outcome.code, msg=outcome.msg, **outcome.extra)
        self._reply(request.reply_to, reply, key)

    def _refusal(self, instance: str, command: str, data: Mapping[str, t.Any], status: InstanceStatus) -> str | None:
        """Return why a valid request cannot be carried out at all (checked before an async 200), or ``None``."""
        if not status.plugin and command == "start":
            # Unsafe values are refused in the reply itself, also when the start is answered asynchronously.
            self.manager.console_line(instance, "start", {"script": data.get("script"), "conf": data.get("conf")})
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

    def _run_hbot(self, instance: str, command: str, data: Mapping[str, t.Any], status: InstanceStatus) -> _Outcome:
        """Carry out one bot-level command as Hummingbot would; return the reply's status, msg and extras."""
        sync = data.get("async_backend") is False
        if status.plugin:
            # Down plugin bot: only start can help (the plugin takes over once it is up).
            if command == "start":
                [result] = self.manager.start(
                    [instance], strategy={"script": data.get("script"), "conf": data.get("conf")}
                )
                self._take(result.status, instance)
                msg = f"instance '{instance}' was down; launched it, its MQTT bridge takes over."
                return _Outcome(protocol.STATUS_OK, msg)
            msg = f"instance '{instance}' is not running, so its MQTT bridge cannot answer. Send start first."
            return _Outcome(protocol.STATUS_ERROR, msg)
        if command == "start":
            values = {"script": data.get("script"), "conf": data.get("conf")}
            self.manager.console_line(instance, "start", values)  # refuse unsafe values before launching
            if not status.is_ready:
                [result] = self.manager.start([instance])  # launches it, or waits for a bot that is still starting
                self._announce(instance, self._take(result.status, instance))
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
            outcome = self._console(instance, "status", {})
            self._hbot_notify(instance, outcome.msg)
            return _Outcome(protocol.STATUS_OK, "")
        if command == "import":
            return self._console(instance, "import", {"strategy": data["strategy"]})
        if command == "history":
            values = {k: data.get(k) for k in ("days", "verbose", "precision")}
            outcome = self._console(instance, "history", values)
            if not sync:
                self._hbot_notify(instance, outcome.msg)
                return _Outcome(protocol.STATUS_OK, "", {"trades": []})
            recipe = self.manager.recipe(instance)
            trades, rest = read_trades(outcome.msg.splitlines(), recipe.console.trades)
            return _Outcome(outcome.code, "\n".join(rest), {"trades": trades})
        return self._console(instance, command.replace("/", "_"), dict(data))

    def _console(self, instance: str, command: str, values: Mapping[str, t.Any]) -> _Outcome:
        """Type a command's console line and read the answer the recipe's patterns pick out of the output."""
        text = self.manager.relay(instance, command, values, capture=True)
        recipe = self.manager.recipe(instance)
        answer = read_answer(text, recipe.console.answer)
        return _Outcome(protocol.STATUS_ERROR if answer.error else protocol.STATUS_OK, answer.text)

    def _hbot_notify(self, instance: str, text: str) -> None:
        """Publish console output on ``{ns}/{id}/notify``, as the bot's notifier does."""
        if text:
            self.connection.publish(f"{self.ns}/{instance}/notify", protocol.notify(0, text))

    # -- plugin bots: start-up window ------------------------------------------------

    def _on_status_update(self, topic: str, payload: bytes, _props: Mapping[str, t.Any]) -> None:
        """Note a bridge's "online" and forward the requests held for it (network thread: quick)."""
        instance = topic[len(self.ns) + 1 :].partition("/")[0]
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("msg") != "online":
            return
        with self._held_lock:
            self._bridge_online[instance] = time.time()
            held = self._held.pop(instance, [])
        for item in held:
            self._forward(instance, item)

    def _bridge_is_up(self, instance: str) -> bool:
        """Tell whether a running plugin bot's bridge has subscribed (said "online" since its launch).

        A bot launched before the agent started listening, or longer ago than its
        recipe's ready timeout, is taken as up: its bridge announced itself before
        we listened, or never will. Launch times come from the registry (the same
        clock as ours; a process's start time from the kernel may drift from it).
        """
        try:
            started = self.manager.record(instance).started_at
        except SupervisorError:
            return True
        with self._held_lock:
            return self._bridge_is_up_locked(instance, started)

    def _bridge_is_up_locked(self, instance: str, started: float | None) -> bool:
        if started is None or started < self._listening_since:
            return True
        online = self._bridge_online.get(instance)
        if online is not None and online >= started - 1.0:
            return True
        return time.time() - started > self._ready_timeout(instance)

    def _ready_timeout(self, instance: str) -> float:
        return self.manager.ready_timeout(instance)

    def _hold(
        self, instance: str, command: str, topic: str, payload: bytes, request: protocol.Request, key: str
    ) -> None:
        """Keep a request until the bot's bridge is up, then publish it again for the bot to answer."""
        item = _Held(topic, payload, request.reply_to, command, key, time.monotonic() + self._ready_timeout(instance))
        try:
            started = self.manager.record(instance).started_at
        except SupervisorError:
            started = None
        with self._held_lock:
            # Checked and queued under one lock: an "online" arriving meanwhile cannot be missed.
            ready = self._bridge_is_up_locked(instance, started)
            if not ready:
                self._held.setdefault(instance, []).append(item)
        if ready:
            self._forward(instance, item)
        else:
            logger.info("holding %s until the MQTT bridge of %s is up", topic, instance)

    def _forward(self, instance: str, item: _Held) -> None:
        self.audit.record(topic=item.topic, reply_to=item.reply_to, result="forwarded", msg="to the bot's own bridge")
        logger.info("forwarding %s to the MQTT bridge of %s", item.topic, instance)
        self.connection.publish(item.topic, item.payload, qos=1)

    def _expire_held(self) -> None:
        """Answer held requests whose bot did not bring its bridge up in time."""
        now = time.monotonic()
        expired: list[tuple[str, _Held]] = []
        with self._held_lock:
            for instance, items in list(self._held.items()):
                keep = [item for item in items if item.deadline > now]
                expired += [(instance, item) for item in items if item.deadline <= now]
                if keep:
                    self._held[instance] = keep
                else:
                    del self._held[instance]
        for instance, item in expired:
            msg = f"instance '{instance}': its MQTT bridge did not come up in time to answer. Check 'supervisor tail'."
            self.audit.record(topic=item.topic, reply_to=item.reply_to, result=protocol.STATUS_ERROR, msg=msg)
            self._reply(item.reply_to, protocol.response(item.command, status=protocol.STATUS_ERROR, msg=msg), item.key)

    def _note_strategy(self, instance: str, command: str, payload: bytes) -> None:
        """Remember the strategy a client starts on a plugin bot (and forget it on stop), for crash restarts."""
        if command not in ("start", "stop"):
            return
        try:
            data = protocol.validate(command, protocol.parse_request(payload).data)
            strategy = check_strategy(data) if command == "start" else None
        except SupervisorError:
            return
        if command == "start" and not strategy:
            return
        with contextlib.suppress(SupervisorError):
            self.manager.mark(instance, strategy=strategy)

    # -- our own verbs -----------------------------------------------------------------

    def _handle_own(self, topic: str, payload: bytes, dup: bool = False, retained: bool = False) -> None:
        rest = topic[len(self.own) + 1 :]
        instance, _, verb = rest.rpartition("/")
        if retained:
            self._refuse_retained(topic, payload)
            return
        key: str | None = None
        if self.verifier is None:
            fresh = self._fresh_request(topic, payload, dup)
            if fresh is None:
                return
            request, key = fresh
        else:
            # Signed requests skip the duplicate cache: a byte-identical copy is a replay
            # (its nonce is spent) and gets 401, never the first one's cached reply.
            parsed = self._parse(topic, payload)
            if parsed is None:
                return
            request = parsed
        who = request.header.get("node_id") or request.header.get("agent") or "?"
        if self.verifier is not None:
            try:
                self.verifier.verify(topic, request.reply_to, request.header, request.data)
            except AuthError as e:
                self.refusals.refuse("unauthorized", topic, str(e), client=who, result=protocol.STATUS_UNAUTHORIZED)
                self._reply(
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
                status = self._fresh(instance) or self._look(instance)  # raises InstanceNotFound for a stranger
                reply, encoded = self._status_reply(status)
            else:
                reply, then = self._run_own(instance, verb, args)
        except SupervisorError as e:
            reply = {"status": protocol.STATUS_ERROR, "msg": str(e), "code": e.code}
        self._reply(request.reply_to, reply, key, encoded=encoded)
        if then is not None:
            try:
                then()  # the launch's beat and state record follow the reply that says it happened
            except SupervisorError as e:
                logger.warning("after %s of %s: %s", verb, instance, e)
        # After the reply: the client does not wait for the audit log's file lock and write.
        self.audit.record(
            topic=topic, client=who, reply_to=request.reply_to, result=reply["status"], msg=str(reply.get("msg"))
        )

    def _run_own(
        self, instance: str, verb: str, args: Mapping[str, t.Any]
    ) -> tuple[dict[str, t.Any], t.Callable[[], None] | None]:
        """Carry out one of our verbs; return the reply and what to do once it is sent."""
        ok = protocol.STATUS_OK
        if verb == "list":
            statuses = self._fresh_all() or self._look_all()
            return {
                "status": ok,
                "msg": "",
                "result": {"host": self.host, "instances": [statuses[name].to_dict() for name in sorted(statuses)]},
            }, None
        if not self._known(instance):
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
        status = self._take(result.status, instance)  # derived by the action itself: no second look

        def then() -> None:
            if verb == "stop":
                self._gone(instance, status)
            else:
                self._announce(instance, status, relaunched=result.changed)
            self._publish_states(force=False)  # the new state goes out now, not at the next tick

        return {"status": ok, "msg": result.message, "result": result.to_dict()}, then

    # -- the snapshot -------------------------------------------------------------------

    def _snapshot(self) -> dict[str, InstanceStatus]:
        with self._status_lock:
            return dict(self._statuses)

    def _store(
        self, statuses: Sequence[InstanceStatus], since: float, *, complete: bool = False, gone: Iterable[str] = ()
    ) -> None:
        """Put statuses derived from ``since`` (monotonic) into the snapshot; none replaces a newer one.

        ``complete``: they are all there is (others are dropped); ``gone``: names whose records are gone.
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
        self._track_liveness(kept)
        if plugins is not None and plugins != self._beat_listened:
            self._listen_to_beats(plugins)

    def _listen_to_beats(self, plugins: set[str]) -> None:
        """Subscribe to the heartbeats of plugin bots only (one filter each): the agent's own beats never come back."""
        if not self._serving:
            return
        with self._subscription_lock:
            for name in self._beat_listened - plugins:
                self.connection.unsubscribe(f"{self.ns}/{name}/hb")
            for name in plugins - self._beat_listened:
                self.connection.subscribe(f"{self.ns}/{name}/hb", self._on_heartbeat, qos=0)
            self._beat_listened = set(plugins)

    def _look_all(self) -> dict[str, InstanceStatus]:
        """Derive every instance's status (one session query per backend, one process-table pass)."""
        since = time.monotonic()
        self.probe.watch_registry()  # before the look: a write meanwhile is seen at the next probe
        statuses = self.manager.status()
        self._store(statuses, since, complete=True)
        return self._snapshot()

    def _look_changed(self) -> bool:
        """Derive again what the probe says may have changed; return whether that was everything."""
        change = self.probe.changes()
        if change.everything:
            self._look_all()
            return True
        if change.names:
            self.manager.forget_sessions()  # a bot just ended: its session may be gone too
            since = time.monotonic()
            gone = {name for name in change.names if not self.manager.has(name)}
            statuses = self.manager.status(sorted(change.names - gone)) if change.names - gone else []
            self._store(statuses, since, gone=gone)
        return False

    def _look(self, instance: str) -> InstanceStatus:
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

    def _take(self, status: InstanceStatus | None, instance: str) -> InstanceStatus:
        """Keep the status an action returned (derived just now), or derive one when it returned none."""
        if status is None:
            return self._look(instance)
        self._store([status], time.monotonic())
        return status

    def _fresh(self, instance: str) -> InstanceStatus | None:
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

    def _current(self, instance: str) -> InstanceStatus:
        """Return the status of ``instance`` for a request: the snapshot's when fresh, else a new look."""
        return self._fresh(instance) or self._look(instance)

    def _fresh_all(self) -> dict[str, InstanceStatus] | None:
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

    def _status_reply(self, status: InstanceStatus) -> tuple[dict[str, t.Any], bytes]:
        """Return an own ``status`` reply and its encoding, made once per status derived (the snapshot reuses it)."""
        cached = self._replies.get(status.name)
        if cached is None or cached[0] is not status:
            reply = {"status": protocol.STATUS_OK, "msg": status.state, "result": status.to_dict()}
            cached = self._replies[status.name] = (status, reply, protocol.dumps(protocol.make_primitive(reply)))
        return cached[1], cached[2]

    def _known(self, instance: str) -> bool:
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
        statuses = self._fresh_all() or self._look_all()
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
            self._gone(name, status)
            self._publish_states(force=False)
        elif incident.kind == "restarted":
            status = self._take(status, name)
            self._announce(name, status)
            self._notify(name, incident.message)
        elif incident.kind == "fatal" and status is not None:
            self._gone(name, status)
            self._notify(name, incident.message)
        elif incident.kind == "orphan":
            self._notify(name, incident.message)

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

    def _notify(self, name: str, message: str) -> None:
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

    def _announce(self, name: str, status: InstanceStatus, *, relaunched: bool = False) -> None:
        """Say ``online`` and beat at once for a plugin-less bot whose process was just (re)launched.

        ``relaunched``: a request just launched it and its reply went out: it beats now even if a
        beat for the old process went out moments ago, so heartbeats follow the reply.
        """
        with self._liveness_lock:
            announced = not status.plugin and status.is_running and self._alive.get(name)
            if announced and (relaunched or not self._beat_recently(name)):
                self._beat(name)  # a new process behind a name already announced: it beats at once too
            self._track_liveness_locked([status], beat=False)

    def _gone(self, name: str, status: InstanceStatus) -> None:
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

    def _publish_states(self, *, force: bool) -> None:
        """Publish retained ``state`` records that changed (all of them when ``force``)."""
        if not self.connection.is_connected:
            return
        with self._publish_lock:  # the main loop, the watchdog's reports and request workers all publish
            self._publish_states_locked(force=force)

    def _publish_states_locked(self, *, force: bool) -> None:
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
