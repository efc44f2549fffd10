"""One MQTT connection that stays up: jittered reconnect backoff, resubscription.

The only module that imports paho; paho exceptions become :class:`AgentError` here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import socket
import ssl
import threading
import time
import typing as t

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from supervisor.errors import AgentError

if t.TYPE_CHECKING:
    from collections.abc import Callable

    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from supervisor.mqtt.config import BrokerConfig

logger = logging.getLogger(__name__)

Handler = t.Callable[[str, bytes, dict[str, t.Any]], None]
"""``handler(topic, payload, properties)``; see :meth:`Connection.subscribe`."""

Will = tuple[str, bytes, int, bool]
"""``(topic, payload, qos, retain)``, published by the broker on an unclean drop."""

DEFAULT_MAX_QUEUED = 1000
DEFAULT_MAX_BACKOFF = 3.0
"""Cap of the wait between connection attempts: back within a few seconds of the broker's return."""


def backoff_delay(attempt: int, minimum: float, maximum: float, rng: random.Random | None = None) -> float:
    """Return the wait before reconnect attempt ``attempt`` (0-based).

    The upper bound doubles from ``2 * minimum`` up to ``maximum``; the wait is drawn
    uniformly between ``minimum`` and that bound, so agents restarted together spread
    out instead of hitting the broker in step.
    """
    upper = min(maximum, minimum * 2 ** min(attempt + 1, 32))
    return (rng or random).uniform(minimum, max(minimum, upper))


def _message_properties(message: mqtt.MQTTMessage) -> dict[str, t.Any]:
    props: dict[str, t.Any] = {"qos": message.qos, "retain": bool(message.retain), "dup": bool(message.dup)}
    properties = message.properties
    if properties is not None:
        for name in properties.names:
            key = name.replace(" ", "")
            if hasattr(properties, key):
                props[key] = getattr(properties, key)
    return props


def _check_filter(topic_filter: str) -> None:
    levels = topic_filter.split("/")
    last = len(levels) - 1
    bad = not topic_filter or "\0" in topic_filter
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            bad = True
        if "+" in level and level != "+":
            bad = True
    if bad:
        msg = (
            f"topic filter '{topic_filter}' is not valid. '+' must fill a whole "
            "level and '#' must be the whole last level."
        )
        raise AgentError(msg)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _Subscription(t.NamedTuple):
    handler: Handler
    qos: int


@functools.lru_cache(maxsize=1024)
def _levels(topic_filter: str) -> tuple[str, ...]:
    return tuple(topic_filter.split("/"))


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Return whether ``topic`` matches ``topic_filter`` as paho's ``topic_matches_sub`` says, without its matcher.

    paho builds a trie per call (tens of microseconds); this runs per message and subscription.
    """
    levels = topic.split("/")
    plain = not topic.startswith("$")  # "$SYS/..." matches no filter that starts with a wildcard
    for i, part in enumerate(_levels(topic_filter)):
        if part == "#":
            return plain or i > 0
        if i >= len(levels) or (part == "+" and not plain and i == 0) or part not in ("+", levels[i]):
            return False
    return len(_levels(topic_filter)) == len(levels)


class Delivery:
    """The acknowledgement of one message handed to :meth:`Connection.publish_tracked`."""

    def __init__(self, info: mqtt.MQTTMessageInfo) -> None:
        self._info = info

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the broker's PUBACK; return whether it came."""
        deadline = time.monotonic() + timeout
        while not self._info.is_published():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._info.wait_for_publish(remaining)
            else:  # queued while disconnected: paho sends it after the next connect
                time.sleep(min(remaining, 0.05))
        return True


class Connection:
    """A paho client on its own thread that reconnects forever and resubscribes.

    Handlers and ``on_connect`` run on the network thread: they must return quickly
    (hand real work to a pool) and must not call :meth:`publish_and_wait`, which
    waits for that same thread. A handler that raises is logged with its traceback
    and the connection carries on.

    Parameters
    ----------
    config
        Broker address, TLS files, credentials, protocol and keepalive.
    client_id
        The MQTT client id; two connections with one id keep kicking each other off.
    will
        Published by the broker when this connection dies without a clean
        :meth:`stop` (crash, ``kill -9``, network loss past the keepalive).
    on_connect
        Called after every (re)connect, once the broker has acknowledged the
        resubscription, so every handler is live when it runs.
    min_backoff, max_backoff
        Bounds of the jittered exponential wait between connection attempts.
    connect_timeout
        Seconds one TCP (and TLS) connection attempt may take.
    max_queued
        QoS 1/2 messages kept while disconnected; beyond that they are dropped.

    Raises
    ------
    AgentError
        If the TLS files cannot be loaded, the will topic or the client id is bad.
    """

    def __init__(
        self,
        config: BrokerConfig,
        *,
        client_id: str,
        will: Will | None = None,
        on_connect: Callable[[], None] | None = None,
        min_backoff: float = 0.5,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        connect_timeout: float = 5.0,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        if not client_id:
            msg = "MQTT client id is empty. Pass the agent's host id."
            raise AgentError(msg)
        self.config = config
        self.client_id = client_id
        self._on_connect_cb = on_connect
        self._min_backoff = min_backoff
        self._max_backoff = max(max_backoff, min_backoff)
        self._subscriptions: dict[str, _Subscription] = {}
        # The filters with '+' or '#': only these are matched one by one (an agent holds ten exact filters a bot).
        self._wildcards: dict[str, _Subscription] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()  # session up and resubscribed
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Network-thread state: (mid, filters) of the resubscription awaiting SUBACK,
        # whether a CONNACK was accepted, and the backoff / log-once bookkeeping.
        self._resubscribe: tuple[int, list[str]] | None = None
        self._session_up = False
        self._up_since = 0.0
        self._attempt = 0
        self._failing = False
        self._last_failure_log = 0.0
        self._last_failure: str | None = None
        self._queue_full_logged = False

        v5 = config.protocol == "5"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        self._client.connect_timeout = connect_timeout
        self._max_queued = max_queued
        self._client.max_queued_messages_set(max_queued)
        if config.username is not None:
            self._client.username_pw_set(config.username, config.password)
        if will is not None:
            topic, payload, qos, retain = will
            try:
                self._client.will_set(topic, payload, qos=qos, retain=retain)
            except ValueError as exc:
                msg = f"last will topic '{topic}': {exc}. Use a topic without + or #."
                raise AgentError(msg) from exc
        if config.tls:
            self._configure_tls(config)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_message = self._handle_message
        self._client.on_socket_open = self._handle_socket_open
        # We drive loop() on our own thread instead of loop_start(). Without a paho
        # thread, publish() from another thread would write to the socket itself and
        # race the loop; with these (empty) external-loop hooks registered, paho only
        # queues the packet and wakes our loop, which does all socket writes.
        self._client.on_socket_register_write = self._noop_socket_hook
        self._client.on_socket_unregister_write = self._noop_socket_hook

    def _configure_tls(self, config: BrokerConfig) -> None:
        try:
            self._client.tls_set(
                ca_certs=str(config.ca) if config.ca else None,
                certfile=str(config.cert) if config.cert else None,
                keyfile=str(config.key) if config.key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            if config.insecure:
                # The chain is still verified; only the host-name check is skipped
                # (mosquitto_sub --insecure).
                self._client.tls_insecure_set(True)
        except (OSError, ValueError) as exc:
            msg = (
                f"broker {config.url}: cannot load the TLS files ({exc}). Check the "
                "ca, cert and key paths and that the key matches the certificate."
            )
            raise AgentError(msg) from exc

    # --- public API -----------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """Whether the session is up and every subscription is re-established."""
        return self._ready.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until :attr:`is_connected`; return whether it happened in time."""
        return self._ready.wait(timeout)

    def start(self) -> None:
        """Start the network thread, which connects and reconnects whenever needed.

        Returns at once; use :meth:`wait_connected` to wait for the first connection.
        An unreachable broker is retried forever, its first failure logged as a
        warning and later ones at DEBUG at most once per ``max_backoff``.

        Raises
        ------
        AgentError
            If already started or the broker address is unusable.
        """
        if self._thread is not None:
            msg = f"connection to {self.config.url} is already started. Stop it first."
            raise AgentError(msg)
        v5 = self.config.protocol == "5"
        try:
            # Only records host, port and keepalive; the thread calls reconnect().
            self._client.connect_async(
                self.config.host,
                self.config.port,
                keepalive=self.config.keepalive,
                clean_start=True if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            )
        except ValueError as exc:
            msg = f"broker {self.config.url}: {exc}. Check the broker URL."
            raise AgentError(msg) from exc
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.client_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect cleanly (the broker does NOT publish the will); end the thread.

        Publishes nothing itself: send any "going offline" message before this.
        """
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        # Queues DISCONNECT and wakes the loop, which sends it and closes the socket.
        self._client.disconnect()
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("MQTT network thread did not end within %g s", timeout)
        else:
            # paho closes its wake-up socket pair only in __del__; our callbacks keep the client in a
            # reference cycle, so that would wait for a gc run, which may finalize the sockets first
            # (ResourceWarning). The loop has ended: close them now (loop() makes new ones if needed).
            with contextlib.suppress(Exception):
                self._client._reset_sockets(sockpair_only=True)
        self._thread = None
        self._ready.clear()
        logger.info("disconnected from %s", self.config.url)

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Call ``handler`` for messages matching ``topic_filter``, across reconnects.

        ``handler(topic, payload, properties)`` gets a fresh dict with ``qos`` and
        ``retain`` and, on MQTT 5, the message properties by name (``ResponseTopic``,
        ``CorrelationData``, ...). It runs on the network thread (see the class
        docstring). Registering a filter again replaces its handler. Filters
        registered before :meth:`start` are live when ``on_connect`` runs; later ones
        become live one round trip after this call.

        Raises
        ------
        AgentError
            If the filter or the QoS is not valid.
        """
        _check_filter(topic_filter)
        if qos not in (0, 1, 2):
            msg = f"topic filter '{topic_filter}': QoS must be 0, 1 or 2, not {qos}."
            raise AgentError(msg)
        with self._lock:
            subscription = _Subscription(handler, qos)
            self._subscriptions[topic_filter] = subscription
            if "+" in topic_filter or "#" in topic_filter:
                self._wildcards[topic_filter] = subscription
            # paho marks the session connected before on_connect snapshots the table
            # under this lock: either the snapshot has the filter or we send it here.
            if self._client.is_connected():
                self._client.subscribe(topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        """Forget ``topic_filter``'s handler and unsubscribe if connected."""
        with self._lock:
            known = self._subscriptions.pop(topic_filter, None) is not None
            self._wildcards.pop(topic_filter, None)
            if known and self._client.is_connected():
                self._client.unsubscribe(topic_filter)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, *, headroom: int = 0) -> bool:
        """Hand ``payload`` for ``topic`` to the network thread; never blocks.

        While disconnected, QoS 0 messages are dropped; QoS 1/2 messages are kept by
        paho (up to ``max_queued``, beyond that dropped with one warning) and sent
        after the next connect. A message with ``headroom`` is dropped unless that
        many queue slots stay free after it, which keeps room for what matters more.
        Returns whether the message was queued or sent.

        Raises
        ------
        AgentError
            If ``topic`` is empty or holds a wildcard, or ``qos`` is not 0, 1 or 2.
        """
        if headroom and qos and self._max_queued and self.queued() + headroom >= self._max_queued:
            return False
        info = self._publish(topic, payload, qos, retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            if not self._queue_full_logged:
                self._queue_full_logged = True
                logger.warning("outgoing MQTT queue is full; dropping messages")
            return False
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            logger.debug("not connected; dropped QoS 0 message to %s", topic[:200])
            return False
        return True

    def queued(self) -> int:
        """Return how many QoS 1/2 messages paho holds that the broker has not acknowledged."""
        # paho has no public accessor; this is the count its own max_queued check uses.
        return len(self._client._out_messages)

    def publish_and_wait(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 5.0,
    ) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 0: until sent).

        Waits up to ``timeout`` in all, including for a connection. Must not be
        called from a handler.

        Raises
        ------
        AgentError
            If not connected or not acknowledged in time. A QoS 1/2 message that
            reached paho stays queued and may still be delivered later.
        """
        if threading.current_thread() is self._thread:
            msg = "publish_and_wait() called from an MQTT handler. Use publish()."
            raise AgentError(msg)
        deadline = time.monotonic() + timeout
        if not self.wait_connected(timeout):
            msg = f"broker {self.config.url}: not connected after {timeout:g} s; message to '{topic}' not sent."
            raise AgentError(msg)
        info = self._publish(topic, payload, qos, retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            msg = f"message to '{topic}': the outgoing queue is full. Retry later."
            raise AgentError(msg)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            what = "it stays queued for the next connection" if qos else "dropped"
            msg = f"broker {self.config.url}: connection lost sending '{topic}'; {what}."
            raise AgentError(msg)
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            published = info.is_published()
        except (RuntimeError, ValueError) as exc:
            msg = f"message to '{topic}': {exc}."
            raise AgentError(msg) from exc
        if not published:
            msg = f"message to '{topic}': not acknowledged within {timeout:g} s."
            raise AgentError(msg)

    def publish_tracked(self, topic: str, payload: bytes, qos: int = 1) -> Delivery | None:
        """Hand ``payload`` to the network thread and return a handle on its acknowledgement.

        Unlike :meth:`publish_and_wait`, this never gives up on a message: a QoS 1/2
        message that paho accepted is re-sent by paho after a reconnect, so the
        caller keeps waiting on the same handle instead of publishing a duplicate.
        Returns ``None`` when the outgoing queue is full (nothing was queued).

        Raises
        ------
        AgentError
            If ``topic`` is empty or holds a wildcard, or ``qos`` is not 0, 1 or 2.
        """
        info = self._publish(topic, payload, qos, False)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            return None
        return Delivery(info)

    def socket(self) -> socket.socket | None:
        """Return the broker socket, or ``None`` while disconnected (diagnostics)."""
        sock = self._client.socket()
        return sock if isinstance(sock, socket.socket) else None

    # --- network thread -------------------------------------------------------

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> mqtt.MQTTMessageInfo:
        try:
            return self._client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, TypeError) as exc:
            msg = f"cannot publish to topic '{topic}': {exc}. Use a topic without '+' or '#' and QoS 0, 1 or 2."
            raise AgentError(msg) from exc

    def _run(self) -> None:
        """Connect, pump the loop until the connection ends, back off, repeat."""
        while not self._stopping.is_set():
            try:
                self._client.reconnect()
            except Exception as exc:  # noqa: BLE001 - every failed attempt is retried
                self._note_failure(_describe(exc))
            else:
                if self._stopping.is_set():  # stop() ran while we were connecting
                    self._client.disconnect()
                self._pump()
            if self._stopping.is_set():
                break
            delay = backoff_delay(self._attempt, self._min_backoff, self._max_backoff)
            self._attempt += 1
            self._stopping.wait(delay)

    def _pump(self) -> None:
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            while rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                rc = self._client.loop(timeout=1.0)
        except Exception:  # a paho bug must not end the thread; reconnect() resets
            logger.exception("MQTT network loop failed")
        self._mark_down(mqtt.error_string(rc))

    @property
    def last_failure(self) -> str | None:
        """Why the latest connection attempt failed (``None`` once connected)."""
        return None if self.is_connected else self._last_failure

    def _note_failure(self, reason: str) -> None:
        self._last_failure = reason
        now = time.monotonic()
        if not self._failing:
            self._failing = True
            self._last_failure_log = now
            logger.warning(
                "cannot connect to %s: %s; retrying with backoff up to %g s",
                self.config.url,
                reason,
                self._max_backoff,
            )
        elif now - self._last_failure_log >= self._max_backoff:
            self._last_failure_log = now
            logger.debug("still cannot connect to %s: %s", self.config.url, reason)

    def _mark_down(self, reason: str) -> None:
        """Record that the session ended; log it once, unless stopping."""
        with self._lock:
            was_up, self._session_up = self._session_up, False
            self._resubscribe = None
        self._ready.clear()
        if not was_up:
            # Dropped after TCP/TLS but before CONNACK (e.g. a refused client certificate).
            if not self._stopping.is_set():
                self._note_failure(reason)
            return
        if time.monotonic() - self._up_since >= self._max_backoff:
            # Only a connection that stayed up resets the backoff, so a flapping
            # broker (or a client-id fight) does not get hammered.
            self._attempt = 0
        if not self._stopping.is_set():
            self._failing = True
            self._last_failure_log = time.monotonic()
            logger.warning("connection to %s lost: %s; reconnecting", self.config.url, reason)

    def _became_ready(self) -> None:
        self._ready.set()
        if self._on_connect_cb is not None:
            try:
                self._on_connect_cb()
            except Exception:  # must not end the network thread
                logger.exception("on_connect callback failed")

    # --- paho callbacks (network thread) --------------------------------------

    def _noop_socket_hook(self, client: mqtt.Client, userdata: t.Any, sock: t.Any) -> None:
        """Accept paho's external-loop notifications; our thread watches the socket."""

    def _handle_socket_open(self, client: mqtt.Client, userdata: t.Any, sock: t.Any) -> None:
        # Without TCP_NODELAY a QoS 1 round trip on loopback takes ~88 ms instead of
        # ~0.3 ms (Nagle's algorithm meets delayed ACKs).
        if isinstance(sock, socket.socket) and sock.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                logger.debug("cannot set TCP_NODELAY: %s", exc)

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: t.Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._note_failure(f"the broker refused the connection ({reason})")
            return
        with self._lock:
            self._session_up = True
            self._up_since = time.monotonic()
            self._queue_full_logged = False
            wanted = [(name, sub.qos) for name, sub in self._subscriptions.items()]
            if wanted:
                rc, mid = client.subscribe(wanted)
                if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                    self._resubscribe = (mid, [name for name, _ in wanted])
        retried = " (after retrying)" if self._failing else ""
        self._failing = False
        logger.info("connected to %s as %s%s", self.config.url, self.client_id, retried)
        if not wanted:
            self._became_ready()

    def _handle_subscribe(
        self,
        client: mqtt.Client,
        userdata: t.Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._lock:
            if self._resubscribe is None or mid != self._resubscribe[0]:
                return
            names = self._resubscribe[1]
            self._resubscribe = None
        # One code per filter; strict=False so a broker that miscounts cannot kill us.
        for name, code in zip(names, reason_codes, strict=False):
            if code.is_failure:
                logger.warning(
                    "broker %s refused the subscription to '%s': %s",
                    self.config.url,
                    name,
                    code,
                )
        self._became_ready()

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: t.Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            why = f"the broker sent DISCONNECT ({reason})"
        elif reason.getName() == "Unspecified error":  # paho's name for a lost socket
            why = "the socket was closed by the broker or the network"
        else:
            why = str(reason)
        self._mark_down(why)

    def _handle_message(self, client: mqtt.Client, userdata: t.Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            logger.warning("ignoring a message whose topic is not UTF-8")
            return
        with self._lock:
            exact = self._subscriptions.get(topic)
            matching = [] if exact is None or topic in self._wildcards else [(topic, exact.handler)]
            matching += [(name, sub.handler) for name, sub in self._wildcards.items() if topic_matches(name, topic)]
        if not matching:
            return
        payload = bytes(message.payload)
        props = _message_properties(message)
        for name, handler in matching:
            self._call_handler(name, handler, topic, payload, dict(props))

    def _call_handler(
        self,
        name: str,
        handler: Handler,
        topic: str,
        payload: bytes,
        props: dict[str, t.Any],
    ) -> None:
        try:
            handler(topic, payload, props)
        except Exception:  # a bad handler must not end the network thread
            logger.exception("handler for '%s' failed on a message to '%s'", name, topic)
