"""Alarm delivery over MQTT, fed from the synchronous monitor loop.

The monitor thread hands alarms and patient statuses to :class:`MqttPublisher`,
which only appends them to a bounded in-memory buffer and returns; it never
waits for the network. A background thread runs an asyncio loop that owns the
``aiomqtt`` client, sends the buffer with QoS 1, and reconnects with a
randomised, capped exponential backoff whenever the broker goes away.

Delivery is at least once. A message leaves the buffer only when the broker
acknowledged it (PUBACK); one that was sent but not acknowledged before the
connection broke goes back to the front of the buffer and is sent again, so a
subscriber may see it twice but, within the bound, never loses it. The first
copies of one patient's alarms arrive in the order they were queued.

Overflow policy: when ``buffer_size`` alarms are waiting, a new alarm pushes
out the OLDEST one. After a long outage the newest alarms describe the
patients' current state, and the retained statuses carry the rest. Every
dropped message is counted in ``dropped_total`` and reported in a WARNING at
most once every few seconds. Statuses are coalesced per patient (only the
newest is kept) and held apart from the alarms, so they never push alarms out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import aiomqtt

from beatmon.errors import ConfigError, MessageError, TransportError

logger = logging.getLogger(__name__)
# aiomqtt and paho log through this one (paho only at DEBUG).
_client_logger = logging.getLogger(f"{__name__}.client")

Kind = Literal["alarms", "status"]

QOS = 1
# Messages sent before waiting for their PUBACKs, and in flight at once.
PUBLISH_WINDOW = 64
# While alarms wait, statuses get 1/STATUS_SHARE of each window, so neither
# kind starves the other.
STATUS_SHARE = 4
DROP_LOG_INTERVAL_S = 5.0
DROP_CHECK_INTERVAL_S = 0.5
# How long close() waits for a cancelled loop to wind down.
CANCEL_GRACE_S = 2.0
# CONNACK codes of a refused login: MQTT 3.1.1 (4, 5) and MQTT 5 (134, 135).
_AUTH_REFUSED_CODES = frozenset({4, 5, 134, 135})
_TOPIC_FORBIDDEN = ("+", "#", "/", "\x00")


@dataclass(frozen=True)
class MqttSettings:
    """Where and how alarms are published; validated when built.

    ``buffer_size`` counts messages (alarms; statuses have their own bound of
    the same size). ``timeout_s`` bounds the wait for a CONNACK or a PUBACK.
    TLS without ``ca_file`` trusts the system's certificate authorities.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    client_id: str = "beatmon-monitor"
    topic_prefix: str = "beatmon"
    buffer_size: int = 10_000
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    keepalive_s: int = 30
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"mqtt.port must be a TCP port number, got {self.port}")
        if self.buffer_size < 1:
            raise ConfigError(
                f"mqtt.buffer_size must be at least 1, got {self.buffer_size}"
            )
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ConfigError(
                "mqtt backoff needs 0 < backoff_initial_s <= backoff_max_s, got "
                f"{self.backoff_initial_s} and {self.backoff_max_s}"
            )
        if self.keepalive_s < 1 or self.timeout_s <= 0:
            raise ConfigError(
                "mqtt.keepalive_s must be at least 1 and mqtt.timeout_s above 0, "
                f"got {self.keepalive_s} and {self.timeout_s}"
            )
        if not self.client_id:
            raise ConfigError("mqtt.client_id must not be empty")
        if not self.topic_prefix or any(c in self.topic_prefix for c in "+#\x00"):
            raise ConfigError(
                "mqtt.topic_prefix must be a non-empty topic without the wildcards "
                f"+ and #, got {self.topic_prefix!r}"
            )
        if self.password is not None and self.username is None:
            raise ConfigError("mqtt.password is set but mqtt.username is not")
        if not self.tls and (self.ca_file or self.cert_file or self.key_file):
            raise ConfigError(
                "mqtt.ca_file, cert_file or key_file is set but mqtt.tls is false; "
                "set tls: true or remove them"
            )
        if self.key_file and not self.cert_file:
            raise ConfigError("mqtt.key_file is set but mqtt.cert_file is not")

    def tls_parameters(self) -> aiomqtt.TLSParameters | None:
        """The aiomqtt TLS parameters, or None for plain TCP."""
        if not self.tls:
            return None
        return aiomqtt.TLSParameters(
            ca_certs=self.ca_file, certfile=self.cert_file, keyfile=self.key_file
        )


def topic_for(prefix: str, kind: Kind, patient: str) -> str:
    """``<prefix>/<kind>/<patient>``; raises MessageError for an unsafe patient id.

    A patient id may not be empty or hold ``/``, ``+``, ``#`` or NUL: those would
    change the topic's level structure or make it a wildcard. Use
    :func:`topic_safe` on ids from outside.
    """
    if not patient or any(c in patient for c in _TOPIC_FORBIDDEN):
        raise MessageError(
            f"patient id {patient!r} cannot be an MQTT topic level: it is empty or "
            "holds '/', '+', '#' or NUL; pass it through topic_safe() first"
        )
    return f"{prefix}/{kind}/{patient}"


def topic_safe(patient: str) -> str:
    """The patient id with ``/``, ``+``, ``#`` and NUL replaced by ``_``."""
    for char in _TOPIC_FORBIDDEN:
        patient = patient.replace(char, "_")
    return patient or "_"


def backoff_delay_s(
    attempt: int, initial_s: float, max_s: float, rng: random.Random
) -> float:
    """Full-jitter backoff: uniform in [0, min(max_s, initial_s * 2**attempt)]."""
    ceiling_s = max_s if attempt >= 64 else min(max_s, initial_s * 2.0**attempt)
    return rng.uniform(0.0, ceiling_s)


@dataclass(frozen=True)
class Outgoing:
    """One message waiting for the broker; ``patient`` is set for statuses."""

    topic: str
    payload: bytes
    retain: bool = False
    patient: str | None = None


class OutboundBuffer:
    """Thread-safe bounded buffer: alarms in FIFO order, statuses per patient.

    At most ``capacity`` alarms and ``capacity`` patients' statuses are held.
    Overflow drops the oldest entry of its kind and counts it in
    ``dropped_total``. A new status for a patient replaces the waiting one
    and keeps its place in line.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigError(f"buffer capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._alarms: deque[Outgoing] = deque()
        self._statuses: dict[str, Outgoing] = {}
        self._dropped_total = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._alarms) + len(self._statuses)

    @property
    def dropped_total(self) -> int:
        return self._dropped_total

    def put_alarm(self, message: Outgoing) -> bool:
        """Append an alarm; True when the buffer was empty before."""
        with self._lock:
            was_empty = not self._alarms and not self._statuses
            if len(self._alarms) >= self.capacity:
                self._alarms.popleft()
                self._dropped_total += 1
            self._alarms.append(message)
            return was_empty

    def put_status(self, message: Outgoing) -> bool:
        """Keep only the newest status per patient; True when it was empty."""
        key = message.patient or message.topic
        with self._lock:
            was_empty = not self._alarms and not self._statuses
            if key not in self._statuses and len(self._statuses) >= self.capacity:
                del self._statuses[next(iter(self._statuses))]
                self._dropped_total += 1
            self._statuses[key] = message
            return was_empty

    def take(self, limit: int) -> list[Outgoing]:
        """Remove up to ``limit`` messages: alarms first, statuses get a share."""
        with self._lock:
            n_status = min(len(self._statuses), max(1, limit // STATUS_SHARE))
            n_alarm = min(len(self._alarms), limit - n_status)
            n_status = min(len(self._statuses), limit - n_alarm)
            taken = [self._alarms.popleft() for _ in range(n_alarm)]
            for _ in range(n_status):
                taken.append(self._statuses.pop(next(iter(self._statuses))))
            return taken

    def requeue(self, messages: Iterable[Outgoing]) -> None:
        """Put unacknowledged messages back at the front, in their order.

        A status is dropped silently when a newer one for its patient arrived
        meanwhile. Overflow drops the oldest, as in the put methods.
        """
        alarms: list[Outgoing] = []
        statuses: dict[str, Outgoing] = {}
        for message in messages:
            if message.retain:
                statuses[message.patient or message.topic] = message
            else:
                alarms.append(message)
        with self._lock:
            self._alarms.extendleft(reversed(alarms))
            while len(self._alarms) > self.capacity:
                self._alarms.popleft()
                self._dropped_total += 1
            older = {k: m for k, m in statuses.items() if k not in self._statuses}
            self._statuses = older | self._statuses
            while len(self._statuses) > self.capacity:
                del self._statuses[next(iter(self._statuses))]
                self._dropped_total += 1


class DropLog:
    """Rate limit for the overflow warning: one line per ``interval_s`` at most."""

    def __init__(self, interval_s: float = DROP_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.logged_total = 0
        self._last_s = -math.inf

    def due(self, now_s: float, dropped_total: int, *, force: bool = False) -> int:
        """Drops not yet reported, when a line is due now; otherwise 0."""
        new = dropped_total - self.logged_total
        if new <= 0 or (not force and now_s - self._last_s < self.interval_s):
            return 0
        self.logged_total = dropped_total
        self._last_s = now_s
        return new


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """Schedule ``callback`` on ``loop`` from another thread; no-op once it closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


def _leaf_errors(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaf_errors(sub)]
    return [error]


def _is_login_refused(error: BaseException) -> bool:
    if not isinstance(error, aiomqtt.MqttCodeError):
        return False
    code = getattr(error.rc, "value", error.rc)
    return code in _AUTH_REFUSED_CODES


class MqttPublisher:
    """Non-blocking, thread-safe MQTT publisher for alarms and statuses.

    Call :meth:`start` once, then :meth:`publish_alarm` and :meth:`set_status`
    from any thread; they return at once. :meth:`close` delivers what it can
    within its timeout. See the module docstring for the delivery guarantees.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._buffer = OutboundBuffer(settings.buffer_size)
        self._rng = rng or random.Random()
        self._clock = clock
        self._drop_log = DropLog()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop_ready = threading.Event()
        self._closing = False
        self._closed = False
        self._connected = False
        self._published_total = 0
        self._last_failure: str | None = None
        self._down_since_s: float | None = None

    # --- metrics ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a connection to the broker is up."""
        return self._connected

    @property
    def buffered(self) -> int:
        """Messages waiting for the broker, in flight ones included."""
        return len(self._buffer)

    @property
    def dropped_total(self) -> int:
        """Messages dropped because the buffer was full."""
        return self._buffer.dropped_total

    @property
    def published_total(self) -> int:
        """Messages the broker acknowledged."""
        return self._published_total

    # --- the monitor thread's side -----------------------------------------

    def start(self) -> None:
        """Start the background thread that connects and publishes."""
        if self._thread is not None:
            raise TransportError("the MQTT publisher is already started")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self.settings, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"mqtt.{name} {path} is not a readable file")
        self._thread = threading.Thread(
            target=self._run,
            name=f"mqtt-publisher-{self.settings.client_id}",
            daemon=True,
        )
        self._thread.start()
        if not self._loop_ready.wait(CANCEL_GRACE_S):
            raise TransportError("the MQTT publisher thread did not start its loop")

    def publish_alarm(self, patient: str, payload: bytes) -> None:
        """Queue an alarm for ``<prefix>/alarms/<patient>`` (QoS 1, not retained)."""
        topic = topic_for(self.settings.topic_prefix, "alarms", patient)
        self._refuse_when_closed()
        if self._buffer.put_alarm(Outgoing(topic, payload)):
            self._wake_sender()

    def set_status(self, patient: str, payload: bytes) -> None:
        """Queue the retained ``<prefix>/status/<patient>``; only the newest counts."""
        topic = topic_for(self.settings.topic_prefix, "status", patient)
        self._refuse_when_closed()
        message = Outgoing(topic, payload, retain=True, patient=patient)
        if self._buffer.put_status(message):
            self._wake_sender()

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is buffered within ``timeout_s``, disconnect, join."""
        if self._closed:
            return
        self._closed = True
        thread, loop = self._thread, self._loop
        if thread is not None and loop is not None:
            _call_soon(loop, self._begin_close)
            thread.join(timeout_s)
            if thread.is_alive() and self._main_task is not None:
                _call_soon(loop, self._main_task.cancel)
                thread.join(CANCEL_GRACE_S)
        self._log_drops(force=True)

        left = len(self._buffer)
        context = (
            left,
            self.settings.host,
            self.settings.port,
            self._published_total,
            self._buffer.dropped_total,
        )
        if left:
            logger.warning(
                "mqtt publisher closed with %d messages undelivered host=%s port=%d "
                "published_total=%d dropped_total=%d",
                *context,
            )
        else:
            logger.info(
                "mqtt publisher closed, undelivered=%d host=%s port=%d "
                "published_total=%d dropped_total=%d",
                *context,
            )

    def __enter__(self) -> MqttPublisher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _refuse_when_closed(self) -> None:
        if self._closed:
            raise TransportError(
                "the MQTT publisher is closed; alarms can no longer be queued"
            )

    def _wake_sender(self) -> None:
        if self._loop is not None and self._wake is not None:
            _call_soon(self._loop, self._wake.set)

    # --- the background thread ---------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._wake = asyncio.Event()
        self._loop = loop
        self._main_task = loop.create_task(self._main(), name="mqtt-publisher")
        self._loop_ready.set()
        try:
            loop.run_until_complete(self._main_task)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception(
                "mqtt publisher stopped by an unexpected error host=%s port=%d; "
                "alarms are no longer delivered",
                self.settings.host,
                self.settings.port,
            )
        finally:
            self._connected = False
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _begin_close(self) -> None:
        self._closing = True
        if self._wake is not None:
            self._wake.set()

    async def _main(self) -> None:
        async with asyncio.TaskGroup() as group:
            reporter = group.create_task(self._report_drops(), name="mqtt-drop-report")
            link = group.create_task(self._keep_connected(), name="mqtt-connection")
            link.add_done_callback(lambda _: reporter.cancel())

    async def _report_drops(self) -> None:
        while True:
            await asyncio.sleep(DROP_CHECK_INTERVAL_S)
            self._log_drops()

    def _log_drops(self, *, force: bool = False) -> None:
        total = self._buffer.dropped_total
        new = self._drop_log.due(self._clock(), total, force=force)
        if new:
            logger.warning(
                "mqtt buffer full, dropped the %d oldest messages since the last "
                "report dropped_total=%d buffer_size=%d connected=%s host=%s port=%d",
                new,
                total,
                self.settings.buffer_size,
                self._connected,
                self.settings.host,
                self.settings.port,
            )

    async def _keep_connected(self) -> None:
        attempt = 0
        while not (self._closing and len(self._buffer) == 0):
            error: BaseException = TransportError("connection ended")
            try:
                async with self._new_client() as client:
                    self._on_connected()
                    attempt = 0
                    await self._serve(client)
                return
            except* Exception as group:
                error = _leaf_errors(group)[0]
            was_connected, self._connected = self._connected, False
            delay_s = backoff_delay_s(
                attempt,
                self.settings.backoff_initial_s,
                self.settings.backoff_max_s,
                self._rng,
            )
            attempt += 1
            self._on_failure(error, delay_s, was_connected=was_connected)
            await asyncio.sleep(delay_s)

    def _new_client(self) -> aiomqtt.Client:
        settings = self.settings
        client = aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password,
            identifier=settings.client_id,
            keepalive=settings.keepalive_s,
            timeout=settings.timeout_s,
            tls_params=settings.tls_parameters(),
            max_inflight_messages=PUBLISH_WINDOW,
            logger=_client_logger,
        )
        # A full window of pending publishes is normal here, not a warning.
        client.pending_calls_threshold = PUBLISH_WINDOW
        return client

    async def _serve(self, client: aiomqtt.Client) -> None:
        async with asyncio.TaskGroup() as group:
            watch = group.create_task(self._watch(client), name="mqtt-watch")
            send = group.create_task(self._send(client), name="mqtt-send")
            send.add_done_callback(lambda _: watch.cancel())

    async def _watch(self, client: aiomqtt.Client) -> None:
        # Nothing is subscribed, so the iterator only ends, with MqttError,
        # when the connection drops; that cancels a send stuck on a PUBACK.
        async for _message in client.messages:
            pass

    async def _send(self, client: aiomqtt.Client) -> None:
        wake = self._wake
        if wake is None:
            raise TransportError("the MQTT publisher loop has no wake-up event")
        while True:
            batch = self._buffer.take(PUBLISH_WINDOW)
            if batch:
                await self._publish(client, batch)
                continue
            if self._closing:
                return
            wake.clear()
            if len(self._buffer) == 0 and not self._closing:
                await wake.wait()

    async def _publish(self, client: aiomqtt.Client, batch: list[Outgoing]) -> None:
        acked = [False] * len(batch)

        async def publish_one(index: int, message: Outgoing) -> None:
            await client.publish(
                message.topic, message.payload, qos=QOS, retain=message.retain
            )
            acked[index] = True

        # Tasks start in creation order, so the broker gets the batch in order.
        try:
            async with asyncio.TaskGroup() as group:
                for index, message in enumerate(batch):
                    group.create_task(
                        publish_one(index, message), name=f"mqtt-publish-{index}"
                    )
        finally:
            self._published_total += sum(acked)
            self._buffer.requeue(
                m for m, ok in zip(batch, acked, strict=True) if not ok
            )

    def _on_connected(self) -> None:
        self._connected = True
        self._last_failure = None
        down_s = 0.0
        if self._down_since_s is not None:
            down_s = self._clock() - self._down_since_s
        self._down_since_s = None
        logger.info(
            "mqtt connected host=%s port=%d client_id=%s tls=%s buffered=%d "
            "down_s=%.1f",
            self.settings.host,
            self.settings.port,
            self.settings.client_id,
            self.settings.tls,
            len(self._buffer),
            down_s,
        )

    def _on_failure(
        self, error: BaseException, delay_s: float, *, was_connected: bool
    ) -> None:
        """Log once per outage and kind of failure; retries go to DEBUG."""
        reason = _describe(error)
        if self._down_since_s is None:
            self._down_since_s = self._clock()
        if _is_login_refused(error):
            kind = "login refused"
        elif isinstance(error, aiomqtt.MqttError):
            kind = "down"
        else:
            kind = f"unexpected {type(error).__name__}"
        settings = self.settings
        if kind == self._last_failure and not was_connected:
            logger.debug(
                "mqtt still down host=%s port=%d reason=%s; retrying in %.1f s",
                settings.host,
                settings.port,
                reason,
                delay_s,
            )
            return
        self._last_failure = kind

        if kind == "login refused":
            logger.error(
                "mqtt login to %s:%d not authorised (username=%s): the broker "
                "refused the credentials; fix mqtt.username and mqtt.password. "
                "Alarms stay buffered; retrying in %.1f s reason=%s",
                settings.host,
                settings.port,
                settings.username,
                delay_s,
                reason,
            )
        elif kind == "down":
            logger.warning(
                "mqtt %s host=%s port=%d reason=%s buffered=%d; alarms are buffered "
                "and retried, reconnecting in %.1f s (backoff up to %.1f s)",
                "connection lost" if was_connected else "broker unreachable",
                settings.host,
                settings.port,
                reason,
                len(self._buffer),
                delay_s,
                settings.backoff_max_s,
            )
        else:
            logger.error(
                "mqtt publishing failed unexpectedly host=%s port=%d buffered=%d; "
                "reconnecting in %.1f s",
                settings.host,
                settings.port,
                len(self._buffer),
                delay_s,
                exc_info=error,
            )


def _describe(error: BaseException) -> str:
    """The error and, when it wraps one, its cause: what the user needs to see."""
    text = f"{type(error).__name__}: {error}"
    if error.__cause__ is not None:
        text += f" ({error.__cause__})"
    return text
