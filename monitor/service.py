"""The monitor loop: consume beats, score them in micro-batches, publish alerts.

Delivery is at least once. Each batch's output (alerts, alarm events, dead
letters, optional scores) is acknowledged by the broker before the next
batch starts; offsets are committed at checkpoints, after the alarm-policy
state has been saved and acknowledged too. A crash re-delivers the beats
since the last checkpoint, and the re-scored beats carry the same alert and
episode ids, so subscribers can drop the duplicates. Before partitions move
to another monitor the same is done at once, so the new owner scores again
at most the batch that was in hand.

While Kafka is unreachable the loop waits for the batch in hand to be
acknowledged (the client reconnects with a backoff capped at one second),
says so once, and says once when Kafka is back; it gives up, without
committing, after ``delivery_timeout_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from kafka import (
    AsyncConsumerRebalanceListener,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from beatmon.errors import MessageError, TransportError
from beatmon.outage import RECONNECT_BACKOFF_MAX_MS, UNREACHABLE_AFTER_S, OutageLog
from beatmon.partitions import KeyedPartitioner
from models.bundle import ServingBundle
from monitor.alarms import AlarmEvent, AlarmPolicy, Priority
from monitor.batch import Record, ScoredBatch, score_message, score_records
from monitor.checkpoint import StateBuckets
from monitor.offsets import Gap, OffsetGaps
from monitor.topics import read_latest_by_key

logger = logging.getLogger(__name__)

# One message to produce: topic, key, value, headers.
Outgoing = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]

IDLE_POLL_MS = 100
TOPIC_WAIT_S = 30.0
# How long one wait for acknowledgements lasts before the monitor checks on
# the broker; the whole wait is bounded by ``delivery_timeout_s``.
FLUSH_SLICE_S = 1.0
# An idle monitor asks the broker for end offsets this long, once per report.
PROBE_TIMEOUT_MS = 2000
LATENCY_SAMPLES = 100_000
LOGGED_DEAD_LETTERS_PER_REPORT = 10


class DeliveryError(TransportError):
    """The broker did not acknowledge a batch's output in time."""


@dataclass(frozen=True)
class MonitorConfig:
    """How the monitor talks to Kafka and how it batches."""

    bootstrap_servers: str = "127.0.0.1:9092"
    beats_topic: str = "beatmon.beats"
    alerts_topic: str = "beatmon.alerts"
    dead_letter_topic: str = "beatmon.beats.dlq"
    scores_topic: str | None = None
    alarms_topic: str = "beatmon.alarms"
    alarm_state_topic: str = "beatmon.alarm-state"
    group_id: str = "beatmon-monitor"
    client_id: str = "beatmon-monitor"
    max_batch: int = 512
    max_wait_ms: int = 20
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    delivery_timeout_s: float = 120.0
    checkpoint_interval_ms: int = 1000
    report_every_s: float = 10.0
    kafka_options: dict[str, Any] = field(default_factory=dict)


class BatchObserver(Protocol):
    """Told about every batch once its output is acknowledged."""

    def on_batch(self, batch: ScoredBatch) -> None: ...


@dataclass
class MonitorStats:
    """Running totals since the monitor started, for the log and the summary."""

    records: int = 0
    scored: int = 0
    flagged: int = 0
    dead_lettered: int = 0
    # Beats the broker deleted before they were read: never scored.
    lost: int = 0
    alarms: int = 0
    alarms_by_priority: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    commit_failures: int = 0
    started_at: float = field(default_factory=time.monotonic)
    # Seconds the loop spent putting each new model in service.
    swap_stalls_s: list[float] = field(default_factory=list)
    # Counts of (truth, predicted) for beats that carried ground truth.
    truth: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies_s: deque[float] = field(
        default_factory=lambda: deque(maxlen=LATENCY_SAMPLES)
    )

    def add(self, batch: ScoredBatch) -> None:
        self.records += batch.records
        self.scored += len(batch.beats)
        self.flagged += len(batch.alerts)
        self.dead_lettered += len(batch.dead_letters)
        self.batches += 1
        for beat, flagged in zip(batch.beats, batch.flagged, strict=True):
            if beat.truth is not None:
                self.truth[beat.truth, "abnormal" if flagged else "normal"] += 1
        self.latencies_s.extend(batch.latencies_s.tolist())

    def sensitivity(self) -> float | None:
        tp, fn = self.truth["abnormal", "abnormal"], self.truth["abnormal", "normal"]
        return tp / (tp + fn) if tp + fn else None

    def false_alarm_rate(self) -> float | None:
        fp, tn = self.truth["normal", "abnormal"], self.truth["normal", "normal"]
        return fp / (fp + tn) if fp + tn else None

    def latency_quantile_s(self, q: float) -> float | None:
        """Latency quantile over the most recent beats (up to LATENCY_SAMPLES)."""
        return float(np.quantile(self.latencies_s, q)) if self.latencies_s else None


Offsets = dict[TopicPartition, OffsetAndMetadata]


class Rebalances(AsyncConsumerRebalanceListener):
    """Commits what was scored before partitions move away, and tells the
    loop to reload the alarm state when partitions arrive.

    kafka-python runs these callbacks on its network thread while the loop's
    thread waits inside ``consumer.poll()`` or ``consumer.close()``, that is
    between two batches, so the monitor's state does not change under them.
    They are coroutines so that the commit can be awaited on that thread.
    The assignment can complete in a later poll than the revocation; in
    between, the loop may still score the batch it had in hand (see
    :meth:`Monitor._reload_alarm_state_if_assigned`).
    """

    def __init__(self) -> None:
        self.assigned = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._handover: Callable[[], Offsets] | None = None
        self._lost: Callable[[set[TopicPartition]], None] | None = None

    def attach(
        self,
        consumer: KafkaConsumer,
        handover: Callable[[], Offsets],
        lost: Callable[[set[TopicPartition]], None],
    ) -> None:
        """Before a revocation, save with ``handover`` and commit the offsets it
        returns; after partitions are lost, tell ``lost`` which."""
        self._consumer = consumer
        self._handover = handover
        self._lost = lost

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        logger.info("partitions revoked: %s", _partitions(revoked))
        if self._consumer is None or self._handover is None:
            return
        offsets = self._handover()
        if not offsets:
            return
        try:
            await self._consumer.commit_async(offsets)
        except KafkaError as exc:
            logger.warning(
                "commit at hand-over failed (%s); the new owner scores the beats "
                "since the last commit again, with the same alert ids",
                exc,
            )
        else:
            logger.info("committed at hand-over: %s", _offsets(offsets))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            logger.info("partitions assigned: %s", _partitions(assigned))
        self.assigned.set()

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        logger.warning(
            "partitions lost without a clean hand-over: %s; their uncommitted "
            "beats will be scored again by the new owner",
            _partitions(lost),
        )
        if self._lost is not None:
            self._lost(set(lost))


def _offsets(offsets: Offsets) -> str:
    return ", ".join(
        f"{tp.topic}[{tp.partition}]@{om.offset}" for tp, om in sorted(offsets.items())
    )


def _partitions(parts: Collection[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(parts)) or "none"


def make_consumer(
    config: MonitorConfig, listener: Rebalances | None = None
) -> KafkaConsumer:
    """A consumer in the monitor's group with manual commits and bounded polls."""
    consumer = KafkaConsumer(
        bootstrap_servers=config.bootstrap_servers,
        group_id=config.group_id,
        client_id=config.client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=config.max_batch,
        max_poll_interval_ms=config.max_poll_interval_ms,
        session_timeout_ms=config.session_timeout_ms,
        fetch_max_wait_ms=max(config.max_wait_ms, 5),
        # A group can be handed an empty assignment while the beat topic's
        # metadata is not known yet; refreshing it often lets the change
        # trigger the rebalance within seconds instead of minutes.
        metadata_max_age_ms=5_000,
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        **config.kafka_options,
    )
    # Join the group only once the beat topic's partitions are known: a member
    # that joins before is handed an empty assignment, and kafka-python was
    # seen to keep it that way.
    deadline = time.monotonic() + TOPIC_WAIT_S
    while not consumer.partitions_for_topic(config.beats_topic):
        if time.monotonic() > deadline:
            logger.warning(
                "topic=%s has no partitions after %.0f s; joining the group anyway",
                config.beats_topic,
                TOPIC_WAIT_S,
            )
            break
        time.sleep(0.2)
    consumer.subscribe([config.beats_topic], listener=listener or Rebalances())
    # kafka-python's group coordinator keeps its own view of the subscribed
    # topics' partitions, rebuilt only when metadata arrives after subscribe().
    # A member that joins before then assigns against an empty view, so the
    # next metadata update forces a second rebalance at once; a poll that
    # timed out during that one was seen to leave the member with no
    # partitions for good. Fetching the metadata now makes the view current.
    consumer.topics()
    return consumer


def make_producer(config: MonitorConfig) -> KafkaProducer:
    """An idempotent producer that waits for all in-sync replicas."""
    return KafkaProducer(
        bootstrap_servers=config.bootstrap_servers,
        client_id=config.client_id,
        acks="all",
        linger_ms=2,
        batch_size=256 * 1024,
        partitioner=KeyedPartitioner(),
        delivery_timeout_ms=int(config.delivery_timeout_s * 1000),
        reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        **config.kafka_options,
    )


class AlarmSink(Protocol):
    """Where patient alarms go besides Kafka (the MQTT publisher)."""

    def publish_alarm(self, patient: str, payload: bytes) -> None: ...

    def set_status(self, patient: str, payload: bytes) -> None: ...


class Metrics(BatchObserver, Protocol):
    """The Prometheus side of the monitor (see monitor.metrics)."""

    def count_alarm(
        self, channel: Literal["kafka", "mqtt"], priority: Priority
    ) -> None: ...

    def set_lag(self, lags: Mapping[int, int]) -> None: ...

    def count_lost(self, beats: int) -> None: ...

    def model_swapped(self, model: ServingBundle) -> None: ...


class ModelSource(Protocol):
    """Hands over a checked model to put in service (monitor.reload.BundleWatcher)."""

    def take(self) -> ServingBundle | None: ...


class Monitor:
    """Scores beats from a topic with one model at a time; see the module docstring.

    With ``models`` (a bundle watcher), a new model goes into service between
    two batches, so every beat is scored by exactly one model version.

    With an alarm policy, each batch's alarm events go to the alarm topic
    with its alerts. Every ``checkpoint_interval_ms`` the policy state of the
    patients touched since the last checkpoint is written to the compacted
    alarm-state topic and acknowledged, and only then are the offsets
    committed, so state and offsets always agree after a restart.
    """

    def __init__(
        self,
        config: MonitorConfig,
        model: ServingBundle,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        *,
        alarms: AlarmPolicy | None = None,
        alarm_sink: AlarmSink | None = None,
        metrics: Metrics | None = None,
        rebalances: Rebalances | None = None,
        observers: Sequence[BatchObserver] = (),
        gauges: Sequence[Callable[[], None]] = (),
        clock: Callable[[], float] = time.time,
        stop_event: threading.Event | None = None,
        models: ModelSource | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.consumer = consumer
        self.producer = producer
        self.alarms = alarms
        self.alarm_sink = alarm_sink
        self.metrics = metrics
        self.rebalances = rebalances
        self.observers = [*observers, *([metrics] if metrics else [])]
        self.gauges = list(gauges)
        self.clock = clock
        self.stats = MonitorStats()
        self._stop = stop_event or threading.Event()
        self._report = _Reporter(config.report_every_s)
        self._pending: dict[TopicPartition, OffsetAndMetadata] = {}
        self._touched: set[str] = set()
        self._buckets = StateBuckets()
        self._checkpointed_at = time.monotonic()
        self.models = models
        self._outage = OutageLog(logger, "Kafka")
        # Set once the loop ended on an error: the batch in hand may not be
        # acknowledged, so nothing may be saved or committed after that.
        self._halted = False
        self._handover_error: DeliveryError | None = None
        self._records_at_probe = 0
        # Beat partitions whose patients' alarm state in memory is current.
        self._held: set[int] = set()
        self._gaps = OffsetGaps()
        # From a revocation until the new assignment is taken up: no
        # checkpoint may save or commit then, see _reload_alarm_state_if_assigned.
        self._rebalancing = False
        if rebalances is not None:
            rebalances.attach(consumer, self._before_revocation, self._forget_lost)

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit, and return."""
        self._stop.set()

    def run(self) -> MonitorStats:
        """Consume until :meth:`stop`; returns the totals."""
        logger.info(
            "monitor started: model=%s version=%s threshold=%.6g topic=%s group=%s "
            "max_batch=%d max_wait_ms=%d alarms=%s",
            self.model.name,
            self.model.version,
            self.model.threshold,
            self.config.beats_topic,
            self.config.group_id,
            self.config.max_batch,
            self.config.max_wait_ms,
            "on" if self.alarms else "off",
        )
        try:
            while not self._stop.is_set():
                self._swap_model_if_ready()
                self._reload_alarm_state_if_assigned()
                records = self._collect_batch()
                if records:
                    self.process(records)
                if self._pending and self._checkpoint_due() and not self._rebalancing:
                    self.checkpoint()
                if self._report.due():
                    self._probe_if_idle()
                    self._update_gauges()
                    self._report.log(self.stats)
            # Mid-rebalance, what was scored since the revocation is left to
            # the partitions' next owner (see _reload_alarm_state_if_assigned).
            if not self._rebalancing:
                self.checkpoint()
        except BaseException:
            self._halted = True
            raise
        self._report.log(self.stats, final=True)
        return self.stats

    def close(self) -> None:
        """Leave the group and release the clients."""
        try:
            self.consumer.close(autocommit=False)
        finally:
            self.producer.close(timeout=self.config.delivery_timeout_s)

    def _collect_batch(self) -> list[Record]:
        """Up to ``max_batch`` records, within ``max_wait_ms`` of the first."""
        batch: list[Record] = []
        deadline: float | None = None
        while len(batch) < self.config.max_batch and not self._stop.is_set():
            if deadline is None:
                timeout_ms = IDLE_POLL_MS
            else:
                timeout_ms = int((deadline - time.monotonic()) * 1000)
                if timeout_ms <= 0:
                    break
            try:
                polled = self.consumer.poll(
                    timeout_ms=timeout_ms,
                    max_records=self.config.max_batch - len(batch),
                )
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                # The consumer reconnects by itself; nothing is lost meanwhile.
                self._outage.unreachable(
                    time.monotonic(),
                    f"the consumer cannot fetch ({type(exc).__name__}: {exc}); "
                    "it keeps retrying",
                )
                time.sleep(RECONNECT_BACKOFF_MAX_MS / 1000)
                break
            if self._handover_error is not None:
                raise self._handover_error
            for records in polled.values():
                batch.extend(records)
            if batch and deadline is None:
                deadline = time.monotonic() + self.config.max_wait_ms / 1000
            elif not batch:
                break
        return batch

    def process(self, records: Sequence[Record]) -> ScoredBatch | None:
        """Score one batch, publish its output and wait for the broker's acks.

        The batch's offsets are committed at the next checkpoint.
        """
        self._reload_alarm_state_if_assigned()
        owned = self.consumer.assignment()
        kept = [r for r in records if TopicPartition(r.topic, r.partition) in owned]
        if len(kept) < len(records):
            logger.info(
                "dropped %d polled beats of revoked partitions; their new owner "
                "scores them",
                len(records) - len(kept),
            )
        if not kept:
            return None

        batch = score_records(
            kept, self.model.scorer, self.model.name, self.model.version, self.clock
        )
        events = self.alarms.apply(batch.beats, batch.flagged) if self.alarms else []
        self._publish(batch, events)
        batch.acked_at = self.clock()

        for record in kept:
            tp = TopicPartition(record.topic, record.partition)
            if tp not in self._pending or self._pending[tp].offset <= record.offset:
                self._pending[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
            gap = self._gaps.see(record.topic, record.partition, record.offset)
            if gap is not None:
                self._beats_lost(gap)
        if self.alarms:
            for beat, partition in zip(batch.beats, batch.partitions, strict=True):
                self._buckets.note(beat.patient, partition)
            self._touched.update(beat.patient for beat in batch.beats)

        self.stats.add(batch)
        self.stats.alarms += len(events)
        self.stats.alarms_by_priority.update(event.priority for event in events)
        for dead in batch.dead_letters:
            self._report.dead_letter(dead.record, dead.reason)
        for event in events:
            self._hand_over_alarm(event)
        for observer in self.observers:
            observer.on_batch(batch)
        return batch

    def _beats_lost(self, gap: Gap) -> None:
        self.stats.lost += gap.beats
        if self.metrics:
            self.metrics.count_lost(gap.beats)
        logger.warning(
            "beats lost: topic=%s partition=%d offsets=%d-%d count=%d were deleted "
            "by the broker before this monitor read them and were never scored; "
            "the monitor was behind or stopped for longer than the topic keeps "
            "beats (retention.ms, retention.bytes)",
            gap.topic,
            gap.partition,
            gap.first,
            gap.last,
            gap.beats,
        )

    def _swap_model_if_ready(self) -> None:
        """Between two batches, put the model the watcher checked in service.

        Loading and checking happened on the watcher's thread; here only the
        reference changes, so the loop stalls for microseconds. The alarm
        state is per patient and stays as it is.
        """
        if self.models is None:
            return
        started = time.perf_counter()
        new = self.models.take()
        if new is None:
            return
        old = self.model
        self.model = new
        if self.alarms:
            self.alarms.model_version = new.version
        if self.metrics:
            self.metrics.model_swapped(new)
        stall_s = time.perf_counter() - started
        self.stats.swap_stalls_s.append(stall_s)
        logger.info(
            "model swapped: old_version=%s new_version=%s old_threshold=%.6g "
            "new_threshold=%.6g stall_ms=%.3f",
            old.version,
            new.version,
            old.threshold,
            new.threshold,
            stall_s * 1000,
        )

    def _hand_over_alarm(self, event: AlarmEvent) -> None:
        logger.debug(
            "alarm %s: patient=%s priority=%s episode=%s seq=%d flagged=%d/%d",
            event.kind,
            event.patient,
            event.priority,
            event.episode_id[:12],
            event.seq,
            event.flagged_in_window,
            event.window,
        )
        if self.metrics:
            self.metrics.count_alarm("kafka", event.priority)
        if self.alarm_sink and self.alarms:
            self.alarm_sink.publish_alarm(event.patient, event.encode())
            self.alarm_sink.set_status(
                event.patient, self.alarms.status_payload(event.patient)
            )
            if self.metrics:
                self.metrics.count_alarm("mqtt", event.priority)

    def _publish(self, batch: ScoredBatch, events: Sequence[AlarmEvent]) -> None:
        config = self.config
        sends: list[Outgoing] = [
            (config.alerts_topic, a.patient.encode(), a.encode(), [])
            for a in batch.alerts
        ]
        sends += [
            (config.dead_letter_topic, d.key(), d.value(), d.headers())
            for d in batch.dead_letters
        ]
        sends += [
            (config.alarms_topic, e.patient.encode(), e.encode(), []) for e in events
        ]
        if config.scores_topic:
            sends += [
                (
                    config.scores_topic,
                    beat.patient.encode(),
                    score_message(
                        beat,
                        float(batch.errors[i]),
                        bool(batch.flagged[i]),
                        self.model.version,
                    ),
                    [],
                )
                for i, beat in enumerate(batch.beats)
            ]
        self._send_and_wait(sends)

    def _send_and_wait(
        self,
        sends: Sequence[
            tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]
        ],
    ) -> None:
        """Send every message and return once the broker acknowledged them all.

        While the broker is away the producer keeps the messages and retries;
        this waits, saying once that Kafka is unreachable and once that it is
        back, and gives up with DeliveryError after ``delivery_timeout_s``.
        """
        if not sends:
            return
        futures = [
            self.producer.send(topic, value=value, key=key, headers=headers or None)
            for topic, key, value, headers in sends
        ]
        timeout_s = self.config.delivery_timeout_s
        started = time.monotonic()
        while True:
            waited_s = time.monotonic() - started
            try:
                self.producer.flush(
                    timeout=max(min(FLUSH_SLICE_S, timeout_s - waited_s), 0)
                )
                break
            except KafkaTimeoutError as exc:
                waited_s = time.monotonic() - started
                if waited_s >= timeout_s:
                    raise DeliveryError(
                        f"Kafka did not acknowledge {len(futures)} messages within "
                        f"{timeout_s:g} s: {exc}; offsets not committed"
                    ) from exc
                if waited_s >= UNREACHABLE_AFTER_S:
                    self._outage.unreachable(
                        started,
                        f"{sum(not f.is_done for f in futures)} of {len(futures)} "
                        f"messages not acknowledged for {waited_s:.0f} s; scoring "
                        f"waits while the producer retries (reconnecting at least "
                        f"every {RECONNECT_BACKOFF_MAX_MS / 1000:g} s), for up to "
                        f"{timeout_s:g} s",
                    )
        failed = [f.exception for f in futures if not f.succeeded()]
        if failed:
            raise DeliveryError(
                f"Kafka refused {len(failed)} of {len(futures)} messages "
                f"(first: {failed[0]!r}); offsets not committed"
            )
        self._outage.reachable(f"{len(futures)} messages acknowledged; scoring goes on")

    def _checkpoint_due(self) -> bool:
        if self.alarms is None:
            return True
        elapsed_ms = (time.monotonic() - self._checkpointed_at) * 1000
        return elapsed_ms >= self.config.checkpoint_interval_ms

    def checkpoint(self) -> None:
        """Save the touched patients' alarm state, then commit the offsets.

        Work on partitions this monitor no longer owns is left to their new
        owner: it is neither saved nor committed here, and those beats are
        scored again there, with the same alert and episode ids.
        """
        offsets = self._save_for_commit()
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:
            self.stats.commit_failures += 1
            logger.warning(
                "commit failed after the output was delivered (%s); the beats since "
                "the last commit will be scored again, with the same alert ids",
                exc,
            )

    def _save_for_commit(self) -> Offsets:
        """Write and acknowledge the alarm state; the offsets it covers."""
        self._checkpointed_at = time.monotonic()
        owned = self.consumer.assignment()
        if self.alarms:
            partitions = {tp.partition for tp in owned}
            self._buckets.forget_all_but(self.alarms, partitions)
            self._held &= partitions
            gone = self.alarms.idle_patients()
            emptied = self._buckets.drop(self.alarms, gone)
            if gone:
                logger.info(
                    "forgot %d patients with no beat for %g s of beat time and no "
                    "open alarm",
                    len(gone),
                    self.alarms.settings.forget_after_s,
                )
            changed = self.alarms.due_for_saving(self._touched)
            self._touched.clear()
            self._send_and_wait(
                [
                    (self.config.alarm_state_topic, key, value, [])
                    for key, value in self._buckets.messages(
                        self.alarms, changed, emptied
                    )
                ]
            )
        offsets = {tp: om for tp, om in self._pending.items() if tp in owned}
        self._pending.clear()
        return offsets

    def _before_revocation(self) -> Offsets:
        """Before partitions move: save everything scored so far and return its
        offsets, so that the new owner starts after it. Nothing after an error.
        """
        self._rebalancing = True
        if self._halted:
            return {}
        try:
            return self._save_for_commit()
        except DeliveryError as exc:
            self._halted = True
            self._handover_error = exc
            return {}

    def _forget_lost(self, lost: set[TopicPartition]) -> None:
        """Partitions taken away without a hand-over: their uncommitted offsets
        must not be committed later, as their alarm state was not saved."""
        self._rebalancing = True
        for tp in lost:
            self._pending.pop(tp, None)
            self._held.discard(tp.partition)

    def _probe_if_idle(self) -> None:
        """When no beat arrived since the last report, ask the broker for end
        offsets, so that an idle monitor notices an outage and its end too."""
        if self.stats.records > self._records_at_probe:
            self._records_at_probe = self.stats.records
            return
        topic = self.config.beats_topic
        started = time.monotonic()
        try:
            parts = [
                TopicPartition(topic, p)
                for p in sorted(self.consumer.partitions_for_topic(topic))
            ]
            self.consumer.end_offsets(parts, timeout_ms=PROBE_TIMEOUT_MS)
        except KafkaError as exc:
            self._outage.unreachable(
                started,
                f"no answer about topic={topic} within {PROBE_TIMEOUT_MS / 1000:g} s "
                f"({type(exc).__name__}); the consumer keeps retrying",
            )
        else:
            self._outage.reachable(f"topic={topic} answers again")

    def _reload_alarm_state_if_assigned(self) -> None:
        """After partitions were assigned, load the alarm state of the new ones.

        A partition kept through a rebalance keeps its state in memory: its
        position is kept too, and the batch in hand when the rebalance began
        was scored after the state was saved at the revocation, so the saved
        state would be a batch behind.
        """
        if self.rebalances is None or not self.rebalances.assigned.is_set():
            return
        self.rebalances.assigned.clear()
        self._rebalancing = False
        owned = {tp.partition for tp in self.consumer.assignment()}
        new, gone, self._held = owned - self._held, self._held - owned, owned
        topic = self.config.beats_topic
        self._gaps.forget((topic, p) for p in gone)
        self._expect_committed_offsets(new)
        if self.alarms is None or not new:
            return
        started = time.monotonic()
        states = read_latest_by_key(
            self.config.bootstrap_servers,
            self.config.alarm_state_topic,
            kafka_options=self.config.kafka_options,
        )
        restored = 0
        for key, payload in states.items():
            if _bucket_partition(key) not in new:
                continue
            try:
                restored += self._buckets.restore(self.alarms, payload)
            except MessageError as exc:
                logger.warning(
                    "alarm state bucket=%s not restored: %s; its patients start afresh",
                    key,
                    exc,
                )
        logger.info(
            "alarm state restored: patients=%d partitions=%s topic=%s seconds=%.2f",
            restored,
            ",".join(str(p) for p in sorted(new)),
            self.config.alarm_state_topic,
            time.monotonic() - started,
        )

    def _expect_committed_offsets(self, partitions: Collection[int]) -> None:
        """Newly assigned partitions should go on at the group's committed
        offsets; a first record beyond one means beats were deleted unread."""
        topic = self.config.beats_topic
        for partition in partitions:
            try:
                committed = self.consumer.committed(TopicPartition(topic, partition))
            except KafkaError as exc:
                logger.debug(
                    "committed offset of %s[%d] unknown: %s", topic, partition, exc
                )
                continue
            if committed is not None:
                self._gaps.expect(topic, partition, committed)

    def _update_gauges(self) -> None:
        for update in self.gauges:
            update()
        if self.metrics is None:
            return
        # The highwater mark comes with fetch responses; a partition that has
        # not been fetched from yet is asked for its end offset instead.
        ends = {tp: self.consumer.highwater(tp) for tp in self.consumer.assignment()}
        unknown = [tp for tp, end in ends.items() if end is None]
        if unknown:
            try:
                ends.update(self.consumer.end_offsets(unknown, timeout_ms=2000))
            except KafkaError as exc:
                logger.debug("end offsets unavailable for the lag gauge: %s", exc)
        try:
            lags = {
                tp.partition: max(
                    end - self.consumer.position(tp, timeout_ms=PROBE_TIMEOUT_MS), 0
                )
                for tp, end in ends.items()
                if end is not None
            }
        except KafkaError as exc:
            # Only a gauge: while Kafka is away it keeps its last values.
            logger.debug("positions unavailable for the lag gauge: %s", exc)
            return
        self.metrics.set_lag(lags)


def _bucket_partition(key: str) -> int | None:
    """The beat partition of an alarm-state key ``"<partition>:<bucket>"``."""
    try:
        return int(key.split(":", 1)[0])
    except ValueError:
        return None


def _fmt(value: float | None, scale: float, spec: str) -> str:
    return "n/a" if value is None else format(value * scale, spec)


class _Reporter:
    """Periodic operator log lines, and a cap on per-message warnings."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last_at = time.monotonic()
        self._last_scored = 0
        self._last_records = 0
        self._dead_logged = 0
        self._dead_unlogged = 0

    def dead_letter(self, record: Record, reason: str) -> None:
        if self._dead_logged < LOGGED_DEAD_LETTERS_PER_REPORT:
            self._dead_logged += 1
            logger.warning(
                "dead-lettered: topic=%s partition=%d offset=%d reason=%s",
                record.topic,
                record.partition,
                record.offset,
                reason,
            )
        else:
            self._dead_unlogged += 1

    def due(self) -> bool:
        return time.monotonic() - self._last_at >= self.every_s

    def log(self, stats: MonitorStats, final: bool = False) -> None:
        now = time.monotonic()
        elapsed = max(now - self._last_at, 1e-9)
        rate = (stats.scored - self._last_scored) / elapsed
        if final:
            total = max(now - stats.started_at, 1e-9)
            logger.info(
                "monitor stopped: scored=%d flagged=%d dead_lettered=%d lost=%d "
                "alarms=%d batches=%d mean_rate=%.0f/s p50_latency_ms=%s "
                "p99_latency_ms=%s sensitivity=%s false_alarm_rate=%s",
                stats.scored,
                stats.flagged,
                stats.dead_lettered,
                stats.lost,
                stats.alarms,
                stats.batches,
                stats.scored / total,
                _fmt(stats.latency_quantile_s(0.5), 1000, ".1f"),
                _fmt(stats.latency_quantile_s(0.99), 1000, ".1f"),
                _fmt(stats.sensitivity(), 1, ".4f"),
                _fmt(stats.false_alarm_rate(), 1, ".4f"),
            )
        elif stats.records > self._last_records:
            logger.info(
                "scored=%d rate=%.0f/s flagged=%d dead_lettered=%d alarm_events=%d%s",
                stats.scored,
                rate,
                stats.flagged,
                stats.dead_lettered,
                stats.alarms,
                f" (not logged one by one: {self._dead_unlogged})"
                if self._dead_unlogged
                else "",
            )
        self._last_at = now
        self._last_scored = stats.scored
        self._last_records = stats.records
        self._dead_logged = 0
        self._dead_unlogged = 0
