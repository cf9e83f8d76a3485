"""Replay recorded beats onto Kafka as a ward of simulated patients.

Each patient has a resting heart rate drawn once and beats with natural
beat-to-beat variation; the beats themselves are the rows of a beat file,
taken one after another in file order by whichever patient beats next. The
schedule (:class:`BeatSchedule`) is pure: the clock and the sleep function
are passed to :func:`replay`, so tests can run it on a fake clock.
"""

from __future__ import annotations

import heapq
import logging
import math
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from kafka.errors import KafkaError

from beatmon.errors import ConfigError, DataError, TransportError
from beatmon.messages import Truth, encode_beat_text, samples_text
from beatmon.outage import RECONNECT_BACKOFF_MAX_MS, UNREACHABLE_AFTER_S, OutageLog
from beatmon.partitions import partition_for_key
from models.data import BeatSet
from producers import DEFAULT_TOPIC

logger = logging.getLogger(__name__)

MIN_PATIENT_ID_DIGITS = 4
PATIENT_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,16}")
# Longest single sleep, so a stop request is honoured within this time.
MAX_SLEEP_S = 0.1
# Shortest sleep: a paced replay wakes at most this often and sends every beat
# that fell due meanwhile. At 10,000 beats/s a wake-up per beat cost about a
# third of the replay's CPU; a beat now leaves up to 2 ms after its due time.
MIN_SLEEP_S = 0.002
# The producer retries a beat for this long before it counts as not delivered.
DELIVERY_TIMEOUT_S = 120.0
# How long the final flush waits in one go before checking on the broker.
FLUSH_SLICE_S = 1.0

StopReason = Literal["end of file", "limit", "duration", "interrupted"]


@dataclass(frozen=True)
class Rhythm:
    """How simulated hearts beat: resting rate and beat-to-beat variation.

    Resting rates are drawn from a normal distribution in beats per minute
    and clipped. Each RR interval is ``60 / rate`` times ``1 + N(0,
    rr_jitter)`` (clipped to three standard deviations) times a slow
    breathing modulation ``1 + breath_depth * sin(...)``, whose period each
    patient draws from ``breath_period_s``.
    """

    mean_bpm: float = 75.0
    sd_bpm: float = 12.0
    min_bpm: float = 45.0
    max_bpm: float = 140.0
    rr_jitter: float = 0.04
    breath_depth: float = 0.03
    breath_period_s: tuple[float, float] = (3.0, 5.0)


def patient_ids(count: int, prefix: str = "p") -> list[str]:
    """Ids ``p0001`` to ``pNNNN``, zero-padded to the width of ``count``.

    Another ``prefix`` keeps the patients of two replays apart, for example
    two wards feeding one topic.
    """
    if count < 1:
        raise ConfigError(f"need at least one patient, got {count}")
    width = max(MIN_PATIENT_ID_DIGITS, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


def draw_heart_rates(
    count: int, rng: np.random.Generator, rhythm: Rhythm = Rhythm()
) -> np.ndarray:
    """Resting heart rates in beats per minute, one per patient."""
    rates = rng.normal(rhythm.mean_bpm, rhythm.sd_bpm, count)
    return np.clip(rates, rhythm.min_bpm, rhythm.max_bpm)


class BeatSchedule:
    """When each simulated patient beats next, in seconds from the start.

    :meth:`pop` returns the earliest pending beat as ``(due_s, patient)``,
    ``patient`` being an index from 0, and schedules that patient's next
    beat. Patients start at random phases within their first interval.
    """

    _NOISE_BLOCK = 4096

    def __init__(self, patients: int, seed: int = 0, rhythm: Rhythm = Rhythm()):
        if patients < 1:
            raise ConfigError(f"need at least one patient, got {patients}")
        self._rng = np.random.default_rng(seed)
        self.rhythm = rhythm
        self.heart_rates_bpm = draw_heart_rates(patients, self._rng, rhythm)
        self._mean_rr_s = (60.0 / self.heart_rates_bpm).tolist()
        low, high = rhythm.breath_period_s
        periods_s = self._rng.uniform(low, high, patients)
        self._breath_rad_per_s = (2 * math.pi / periods_s).tolist()
        self._breath_phase_rad = self._rng.uniform(0, 2 * math.pi, patients).tolist()
        self._jitter_limit = 3 * rhythm.rr_jitter
        self._noise: list[float] = []
        starts_s = self._rng.uniform(0, 1, patients) * self._mean_rr_s
        self._heap = [(float(t), i) for i, t in enumerate(starts_s)]
        heapq.heapify(self._heap)

    @property
    def patients(self) -> int:
        return len(self._mean_rr_s)

    def pop(self) -> tuple[float, int]:
        """The next beat as ``(due_s, patient)``; the patient's next is queued."""
        due_s, patient = self._heap[0]
        heapq.heapreplace(
            self._heap, (due_s + self._interval_s(patient, due_s), patient)
        )
        return due_s, patient

    def _interval_s(self, patient: int, at_s: float) -> float:
        if not self._noise:
            draws = self._rng.normal(0.0, self.rhythm.rr_jitter, self._NOISE_BLOCK)
            limit = self._jitter_limit
            self._noise = np.clip(draws, -limit, limit).tolist()
        jitter = self._noise.pop()
        breath = self.rhythm.breath_depth * math.sin(
            self._breath_rad_per_s[patient] * at_s + self._breath_phase_rad[patient]
        )
        return self._mean_rr_s[patient] * (1.0 + jitter) * (1.0 + breath)


@dataclass(frozen=True, eq=False)
class PreparedRows:
    """File rows ready to send: each row's samples as JSON text and its truth."""

    samples: list[str]
    truths: list[Truth | None]
    source: str

    @classmethod
    def from_beats(cls, data: BeatSet, normal_label: str | None) -> PreparedRows:
        """Render every row once; truth words only when ``normal_label`` is given."""
        texts = [samples_text(row) for row in data.beats]
        if normal_label is None:
            return cls(texts, [None] * len(texts), data.source)
        if data.labels is None:
            raise DataError(f"{data.source} has no labels to send as ground truth")
        normal = data.normal_mask(normal_label).tolist()
        truths: list[Truth | None] = [
            "normal" if is_normal else "abnormal" for is_normal in normal
        ]
        return cls(texts, truths, data.source)

    def __len__(self) -> int:
        return len(self.samples)


class DeliveryFuture(Protocol):
    def add_callback(self, f: Callable[..., Any], *args: Any) -> Any: ...

    def add_errback(self, f: Callable[..., Any], *args: Any) -> Any: ...


class Producer(Protocol):
    """The part of ``kafka.KafkaProducer`` that :func:`replay` uses."""

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> DeliveryFuture: ...

    def partitions_for(self, topic: str) -> Collection[int] | None: ...

    def flush(self, timeout: float | None = None) -> None: ...


@dataclass(frozen=True)
class ReplaySettings:
    """What to replay and how fast.

    ``speed`` multiplies time (2 is twice real time); ``speed=None`` sends as
    fast as the producer takes beats. Without ``limit``, ``duration_s`` or
    ``loop`` the file is sent once.
    """

    topic: str = DEFAULT_TOPIC
    patients: int = 100
    seed: int = 0
    speed: float | None = 1.0
    loop: bool = False
    limit: int | None = None
    duration_s: float | None = None
    report_every_s: float = 5.0
    # Beyond the producer's delivery timeout, so that every beat has an
    # outcome (acknowledged or failed) when the replay reports its totals.
    flush_timeout_s: float = DELIVERY_TIMEOUT_S + 10.0
    rhythm: Rhythm = Rhythm()
    patient_prefix: str = "p"

    def __post_init__(self) -> None:
        if not PATIENT_PREFIX.fullmatch(self.patient_prefix):
            raise ConfigError(
                f"patient_prefix {self.patient_prefix!r} must be 1 to 16 letters, "
                "digits, '-' or '_'"
            )
        if self.patients < 1:
            raise ConfigError(f"patients must be at least 1, got {self.patients}")
        if self.speed is not None and not self.speed > 0:
            raise ConfigError(f"speed must be positive, got {self.speed}")
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"limit must not be negative, got {self.limit}")
        if self.duration_s is not None and not self.duration_s >= 0:
            raise ConfigError(f"duration_s must not be negative, got {self.duration_s}")
        if not self.report_every_s > 0:
            raise ConfigError(f"report_every_s must be positive: {self.report_every_s}")


@dataclass(frozen=True)
class ReplayStats:
    """Totals of one replay: beats handed to the producer, failed deliveries."""

    sent: int
    failed: int
    elapsed_s: float
    stopped_by: StopReason

    @property
    def rate_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _Deliveries:
    """Counts acknowledged and failed beats, and notices when Kafka stops
    acknowledging. The callbacks run on the producer's network thread."""

    def __init__(self, topic: str, clock: Callable[[], float]) -> None:
        self.topic = topic
        self.clock = clock
        self.sent = 0
        self.acked = 0
        self.failed = 0
        # When the oldest beat still waiting was sent, or the last ack came.
        self.progress_at = clock()
        self.outage = OutageLog(logger, "Kafka", clock)

    @property
    def pending(self) -> int:
        return self.sent - self.acked - self.failed

    def track(self, future: DeliveryFuture) -> None:
        if self.pending == 0:
            self.progress_at = self.clock()
        self.sent += 1
        future.add_callback(self._acked)
        future.add_errback(self._failed)

    def _acked(self, _metadata: object) -> None:
        self.acked += 1
        self.progress_at = self.clock()
        if self.outage.down:
            self.outage.reachable(
                f"beats are acknowledged again; topic={self.topic} "
                f"waiting={self.pending}"
            )

    def _failed(self, exc: BaseException) -> None:
        self.failed += 1
        if self.failed == 1:
            logger.warning(
                "beat not delivered: topic=%s error=%s; later failures are only "
                "counted",
                self.topic,
                exc,
            )

    def watch(self) -> None:
        """Declare an outage once acknowledgements are overdue."""
        waiting = self.pending
        since = self.progress_at
        if waiting and self.clock() - since > UNREACHABLE_AFTER_S:
            self.outage.unreachable(
                since,
                f"no beat acknowledged for {UNREACHABLE_AFTER_S:g} s; "
                f"topic={self.topic} waiting={waiting}. The producer keeps them "
                f"and retries (reconnecting at least every "
                f"{RECONNECT_BACKOFF_MAX_MS / 1000:g} s) for up to "
                f"{DELIVERY_TIMEOUT_S:g} s per beat",
            )


def replay(
    rows: PreparedRows,
    producer: Producer,
    settings: ReplaySettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] = lambda: False,
) -> ReplayStats:
    """Send ``rows`` as beats of simulated patients; flush; return the totals.

    ``clock`` (seconds, monotonic) paces the beats and ``sleep`` waits;
    ``wall_clock`` (Unix seconds) stamps ``produced_at``. ``stop`` is polled
    between beats; when it turns true, or on KeyboardInterrupt, sending
    stops and what was sent is flushed. Raises TransportError when the
    producer refuses a beat or the topic has no partitions.
    """
    if not len(rows):
        raise DataError(f"{rows.source} has no beats to replay")
    topic = settings.topic
    schedule = BeatSchedule(settings.patients, settings.seed, settings.rhythm)
    ids = patient_ids(settings.patients, settings.patient_prefix)
    keys = [patient.encode() for patient in ids]
    partitions = _partitions(producer, topic, keys)
    seqs = [0] * settings.patients
    texts, truths, n_rows = rows.samples, rows.truths, len(rows)
    limit, speed = settings.limit, settings.speed
    deliveries = _Deliveries(topic, clock)
    logger.info(
        "replaying: source=%s beats=%d topic=%s patients=%d speed=%s loop=%s "
        "limit=%s duration_s=%s",
        rows.source,
        n_rows,
        topic,
        settings.patients,
        "max" if speed is None else speed,
        settings.loop,
        limit,
        settings.duration_s,
    )

    start = clock()
    end = math.inf if settings.duration_s is None else start + settings.duration_s
    next_report = start + settings.report_every_s
    last_report, sent_at_report = start, 0
    sent = row = 0
    reason: StopReason
    try:
        while True:
            if sent == limit:
                reason = "limit"
                break
            if row == n_rows:
                if not settings.loop:
                    reason = "end of file"
                    break
                row = 0
            due_s, patient = schedule.pop()
            now = clock()
            if speed is not None:
                now = _wait_until(start + due_s / speed, end, clock, sleep, stop)
            if stop():
                reason = "interrupted"
                break
            if now >= end:
                reason = "duration"
                break

            seq = seqs[patient]
            seqs[patient] = seq + 1
            value = encode_beat_text(
                ids[patient], seq, wall_clock(), texts[row], truths[row]
            )
            try:
                future = producer.send(
                    topic, value=value, key=keys[patient], partition=partitions[patient]
                )
            except KafkaError as exc:
                _flush(producer, deliveries, settings.flush_timeout_s)
                raise TransportError(
                    f"Kafka refused beat patient={ids[patient]} seq={seq} "
                    f"topic={topic}: {exc}"
                ) from exc
            deliveries.track(future)
            deliveries.watch()
            sent += 1
            row += 1

            if now >= next_report:
                logger.info(
                    "sent=%d rate=%.0f/s patients=%d failed=%d",
                    sent,
                    (sent - sent_at_report) / (now - last_report),
                    settings.patients,
                    deliveries.failed,
                )
                last_report, sent_at_report = now, sent
                next_report = now + settings.report_every_s
    except KeyboardInterrupt:
        reason = "interrupted"

    # A beat still waiting when the flush gives up counts as not delivered.
    unresolved = _flush(producer, deliveries, settings.flush_timeout_s)
    stats = ReplayStats(sent, deliveries.failed + unresolved, clock() - start, reason)
    logger.info(
        "replay finished: sent=%d failed=%d elapsed_s=%.2f rate=%.0f/s "
        "stopped_by=%s topic=%s",
        stats.sent,
        stats.failed,
        stats.elapsed_s,
        stats.rate_per_s,
        stats.stopped_by,
        topic,
    )
    return stats


def _wait_until(
    target: float,
    end: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    stop: Callable[[], bool],
) -> float:
    """Sleep until ``target`` on ``clock`` (or up to ``MIN_SLEEP_S`` past it),
    or ``end``, or a stop; return now."""
    now = clock()
    while now < target and now < end and not stop():
        sleep(min(max(target - now, MIN_SLEEP_S), end - now, MAX_SLEEP_S))
        now = clock()
    return now


def _partitions(producer: Producer, topic: str, keys: list[bytes]) -> list[int]:
    """Each key's partition, as the default partitioner would choose it."""
    try:
        partitions = producer.partitions_for(topic)
    except KafkaError as exc:
        raise TransportError(
            f"cannot get the partitions of topic {topic}: {exc}"
        ) from exc
    if not partitions:
        raise TransportError(f"topic {topic} has no partitions")
    return [partition_for_key(key, partitions) for key in keys]


def _flush(producer: Producer, deliveries: _Deliveries, timeout_s: float) -> int:
    """Wait up to ``timeout_s`` for every beat sent to be acknowledged or failed.

    Returns how many beats were still waiting when it gave up (0 when done).
    """
    deadline = deliveries.clock() + timeout_s
    while True:
        remaining = deadline - deliveries.clock()
        try:
            producer.flush(timeout=max(min(FLUSH_SLICE_S, remaining), 0.0))
            return 0
        except KafkaError as exc:
            deliveries.watch()
            if deliveries.clock() >= deadline:
                logger.warning(
                    "flush did not finish within %.0f s (%s); %d beats not "
                    "acknowledged count as not delivered",
                    timeout_s,
                    exc,
                    deliveries.pending,
                )
                return deliveries.pending
