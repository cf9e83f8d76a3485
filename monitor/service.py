"""The monitor loop: consume beats, score them in micro-batches, publish alerts.

Delivery is at least once. A batch's offsets are committed only after every
message it produced (alerts, dead letters, optional scores) has been
acknowledged by the broker. A crash before that re-delivers the batch, and
the re-scored beats carry the same alert ids, so subscribers can drop the
duplicates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from beatmon.errors import TransportError
from models.bundle import ServingBundle
from monitor.batch import Record, ScoredBatch, score_message, score_records

logger = logging.getLogger(__name__)

IDLE_POLL_MS = 100
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
    group_id: str = "beatmon-monitor"
    client_id: str = "beatmon-monitor"
    max_batch: int = 512
    max_wait_ms: int = 20
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 45_000
    delivery_timeout_s: float = 120.0
    report_every_s: float = 10.0
    kafka_options: dict[str, Any] = field(default_factory=dict)


class BatchObserver(Protocol):
    """Told about every batch once its output is acknowledged."""

    def on_batch(self, batch: ScoredBatch) -> None: ...


@dataclass
class MonitorStats:
    """Running totals since the monitor started."""

    records: int = 0
    scored: int = 0
    flagged: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commit_failures: int = 0
    started_at: float = field(default_factory=time.monotonic)


class _Revocations(ConsumerRebalanceListener):
    """Logs partition changes; the loop drops records of revoked partitions."""

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        if revoked:
            logger.info("partitions revoked: %s", _partitions(revoked))

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        logger.info("partitions assigned: %s", _partitions(assigned))

    def on_partitions_lost(self, lost: Sequence[TopicPartition]) -> None:
        logger.warning(
            "partitions lost without a clean hand-over: %s; their uncommitted "
            "beats will be scored again by the new owner",
            _partitions(lost),
        )


def _partitions(parts: Sequence[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(parts)) or "none"


def make_consumer(config: MonitorConfig) -> KafkaConsumer:
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
        **config.kafka_options,
    )
    consumer.subscribe([config.beats_topic], listener=_Revocations())
    return consumer


def make_producer(config: MonitorConfig) -> KafkaProducer:
    """An idempotent producer that waits for all in-sync replicas."""
    return KafkaProducer(
        bootstrap_servers=config.bootstrap_servers,
        client_id=config.client_id,
        acks="all",
        linger_ms=2,
        batch_size=256 * 1024,
        delivery_timeout_ms=int(config.delivery_timeout_s * 1000),
        **config.kafka_options,
    )


class Monitor:
    """Scores beats from a topic with one model; see the module docstring."""

    def __init__(
        self,
        config: MonitorConfig,
        model: ServingBundle,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        observers: Sequence[BatchObserver] = (),
        clock: Callable[[], float] = time.time,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.consumer = consumer
        self.producer = producer
        self.observers = list(observers)
        self.clock = clock
        self.stats = MonitorStats()
        self._stop = stop_event or threading.Event()
        self._report = _Reporter(config.report_every_s)

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit, and return."""
        self._stop.set()

    def run(self) -> MonitorStats:
        """Consume until :meth:`stop`; returns the totals."""
        logger.info(
            "monitor started: model=%s version=%s threshold=%.6g topic=%s group=%s "
            "max_batch=%d max_wait_ms=%d",
            self.model.name,
            self.model.version,
            self.model.threshold,
            self.config.beats_topic,
            self.config.group_id,
            self.config.max_batch,
            self.config.max_wait_ms,
        )
        while not self._stop.is_set():
            records = self._collect_batch()
            if records:
                self.process(records)
            self._report.maybe_log(self.stats)
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
            polled = self.consumer.poll(
                timeout_ms=timeout_ms, max_records=self.config.max_batch - len(batch)
            )
            for records in polled.values():
                batch.extend(records)
            if batch and deadline is None:
                deadline = time.monotonic() + self.config.max_wait_ms / 1000
            elif not batch:
                break
        return batch

    def process(self, records: Sequence[Record]) -> ScoredBatch | None:
        """Score one batch, publish its output, wait for acks, then commit."""
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
        self._publish(batch)
        self._commit(kept)

        self.stats.records += batch.records
        self.stats.scored += len(batch.beats)
        self.stats.flagged += len(batch.alerts)
        self.stats.dead_lettered += len(batch.dead_letters)
        self.stats.batches += 1
        for dead in batch.dead_letters:
            self._report.dead_letter(dead.record, dead.reason)
        for observer in self.observers:
            observer.on_batch(batch)
        return batch

    def _publish(self, batch: ScoredBatch) -> None:
        config = self.config
        futures = []
        for alert in batch.alerts:
            futures.append(
                self.producer.send(
                    config.alerts_topic,
                    value=alert.encode(),
                    key=alert.patient.encode(),
                )
            )
        for dead in batch.dead_letters:
            futures.append(
                self.producer.send(
                    config.dead_letter_topic,
                    value=dead.record.value,
                    key=dead.record.key,
                    headers=dead.headers(),
                )
            )
        if config.scores_topic:
            for i, beat in enumerate(batch.beats):
                futures.append(
                    self.producer.send(
                        config.scores_topic,
                        value=score_message(
                            beat,
                            float(batch.errors[i]),
                            bool(batch.flagged[i]),
                            self.model.version,
                        ),
                        key=beat.patient.encode(),
                    )
                )
        if futures:
            try:
                self.producer.flush(timeout=config.delivery_timeout_s)
            except KafkaError as exc:
                raise DeliveryError(
                    f"Kafka did not acknowledge {len(futures)} messages within "
                    f"{config.delivery_timeout_s:g} s: {exc}; offsets not committed"
                ) from exc
            failed = [f.exception for f in futures if not f.succeeded()]
            if failed:
                raise DeliveryError(
                    f"Kafka refused {len(failed)} of {len(futures)} messages "
                    f"(first: {failed[0]!r}); offsets not committed"
                )
        batch.acked_at = self.clock()

    def _commit(self, records: Sequence[Record]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if tp not in offsets or offsets[tp].offset <= record.offset:
                offsets[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:
            self.stats.commit_failures += 1
            logger.warning(
                "commit failed after the batch was delivered (%s); its %d beats "
                "will be scored again, with the same alert ids",
                exc,
                len(records),
            )


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

    def maybe_log(self, stats: MonitorStats) -> None:
        if time.monotonic() - self._last_at >= self.every_s:
            self.log(stats)

    def log(self, stats: MonitorStats, final: bool = False) -> None:
        now = time.monotonic()
        elapsed = max(now - self._last_at, 1e-9)
        rate = (stats.scored - self._last_scored) / elapsed
        if final:
            total = max(now - stats.started_at, 1e-9)
            logger.info(
                "monitor stopped: scored=%d flagged=%d dead_lettered=%d batches=%d "
                "mean_rate=%.0f/s",
                stats.scored,
                stats.flagged,
                stats.dead_lettered,
                stats.batches,
                stats.scored / total,
            )
        elif stats.records > self._last_records:
            logger.info(
                "scored=%d rate=%.0f/s flagged=%d dead_lettered=%d%s",
                stats.scored,
                rate,
                stats.flagged,
                stats.dead_lettered,
                f" (not logged one by one: {self._dead_unlogged})"
                if self._dead_unlogged
                else "",
            )
        self._last_at = now
        self._last_scored = stats.scored
        self._last_records = stats.records
        self._dead_logged = 0
        self._dead_unlogged = 0
