"""Finding one alert, and the beat it was raised for, in the Kafka topics.

``beatmon explain --alert ID`` reads them back from the topics the monitor
used. An alert id is a hash, so the alert topic is read from its start until
the alert turns up; that takes time on a topic of millions of alerts. The
beat is then looked for on its patient's partition (the key is the patient
id), from a minute before the alert's beat time by Kafka's time index, and
only if it is not there, on every partition from the start.

A beat is the one an alert was raised for when its patient, seq and
``produced_at`` all equal the alert's ``patient``, ``seq`` and
``beat_time``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from beatmon.errors import MessageError, TransportError
from beatmon.messages import Alert, Beat, decode_alert, decode_beat
from beatmon.partitions import partition_for_key

logger = logging.getLogger(__name__)

ALERT_ID = re.compile(r"[0-9a-f]{32}")
BEAT_SEARCH_MARGIN_S = 60.0
POLL_MS = 200

T = TypeVar("T")


def check_alert_id(alert_id: str) -> str:
    """``alert_id`` in lower case; MessageError unless it is 32 hex digits."""
    text = alert_id.strip().lower()
    if not ALERT_ID.fullmatch(text):
        raise MessageError(
            f"{alert_id!r} is not an alert id: an id is the 32 hexadecimal digits "
            "of an alert's alert_id field"
        )
    return text


def find_alert(
    bootstrap_servers: str,
    topic: str,
    alert_id: str,
    *,
    timeout_s: float = 60.0,
    kafka_options: Mapping[str, Any] | None = None,
) -> Alert:
    """The alert with ``alert_id`` on ``topic``, read from the start to its end."""
    alert_id = check_alert_id(alert_id)
    needle = alert_id.encode()

    def match(record: Any) -> Alert | None:
        if record.value is None or needle not in record.value:
            return None
        try:
            alert = decode_alert(record.value)
        except MessageError:
            return None
        return alert if alert.alert_id == alert_id else None

    with _reader(bootstrap_servers, topic, kafka_options) as reader:
        parts = reader.partitions()
        found, read = reader.scan(parts, reader.beginnings(parts), match, timeout_s)
    if found is None:
        raise MessageError(
            f"no alert with id {alert_id} on topic {topic} at {bootstrap_servers} "
            f"({read} alerts read); check the id and the topic (--alerts-topic)"
        )
    logger.info(
        "alert found: id=%s patient=%s seq=%d topic=%s",
        alert_id,
        found.patient,
        found.seq,
        topic,
    )
    return found


def find_beat(
    bootstrap_servers: str,
    topic: str,
    alert: Alert,
    *,
    timeout_s: float = 60.0,
    kafka_options: Mapping[str, Any] | None = None,
) -> Beat:
    """The beat ``alert`` was raised for, from the beat topic."""
    key = alert.patient.encode()
    near: list[Beat] = []

    def match(record: Any) -> Beat | None:
        if record.key not in (key, None) or record.value is None:
            return None
        try:
            beat = decode_beat(record.value)
        except MessageError:
            return None
        if beat.patient != alert.patient or beat.seq != alert.seq:
            return None
        if beat.produced_at == alert.beat_time:
            return beat
        near.append(beat)
        return None

    with _reader(bootstrap_servers, topic, kafka_options) as reader:
        parts = reader.partitions()
        home = TopicPartition(
            topic, partition_for_key(key, [p.partition for p in parts])
        )
        since_ms = int((alert.beat_time - BEAT_SEARCH_MARGIN_S) * 1000)
        found, _ = reader.scan([home], reader.since([home], since_ms), match, timeout_s)
        if found is None:
            found, _ = reader.scan(parts, reader.beginnings(parts), match, timeout_s)
    if found is not None:
        return found
    if near:
        raise MessageError(
            f"topic {topic} holds patient {alert.patient} seq {alert.seq} produced "
            f"at {near[0].produced_at!r}, but the alert's beat was produced at "
            f"{alert.beat_time!r}: that is another beat under the same patient id, "
            "and the alert's own beat is gone (retention) or on another topic"
        )
    raise MessageError(
        f"no beat of patient {alert.patient} seq {alert.seq} on topic {topic} at "
        f"{bootstrap_servers}; it may be past the topic's retention, or on another "
        "topic (--beats-topic)"
    )


class _Reader:
    """A group-less consumer that reads assigned partitions up to their end."""

    def __init__(
        self, bootstrap_servers: str, topic: str, kafka_options: Mapping[str, Any]
    ) -> None:
        self.topic = topic
        self.where = f"topic {topic} at {bootstrap_servers}"
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            client_id="beatmon-explain",
            **dict(kafka_options),
        )

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.consumer.close()

    def partitions(self) -> list[TopicPartition]:
        try:
            numbers = self.consumer.partitions_for_topic(self.topic)
        except KafkaError as exc:
            raise TransportError(f"cannot read {self.where}: {exc}") from exc
        if not numbers:
            raise MessageError(f"{self.where} does not exist or has no partitions")
        return [TopicPartition(self.topic, p) for p in sorted(numbers)]

    def beginnings(self, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict(self.consumer.beginning_offsets(parts))

    def since(
        self, parts: list[TopicPartition], since_ms: int
    ) -> dict[TopicPartition, int]:
        """Per partition, the first offset whose timestamp is at or after since_ms."""
        ends = self.consumer.end_offsets(parts)
        found = self.consumer.offsets_for_times({tp: max(since_ms, 0) for tp in parts})
        return {
            tp: found[tp].offset if found.get(tp) is not None else ends[tp]
            for tp in parts
        }

    def scan(
        self,
        parts: list[TopicPartition],
        starts: Mapping[TopicPartition, int],
        match: Callable[[Any], T | None],
        timeout_s: float,
    ) -> tuple[T | None, int]:
        """The first record ``match`` accepts, reading from ``starts`` to the end.

        Also returns how many records were read.
        """
        try:
            ends = self.consumer.end_offsets(parts)
            todo = [tp for tp in parts if starts[tp] < ends[tp]]
            read = 0
            if not todo:
                return None, read
            self.consumer.assign(todo)
            for tp in todo:
                self.consumer.seek(tp, starts[tp])
            deadline = time.monotonic() + timeout_s
            while any(self.consumer.position(tp) < ends[tp] for tp in todo):
                if time.monotonic() > deadline:
                    raise TransportError(
                        f"could not read {self.where} to its end within "
                        f"{timeout_s:g} s ({read} records read); raise --timeout"
                    )
                for tp, records in self.consumer.poll(timeout_ms=POLL_MS).items():
                    for record in records:
                        if record.offset >= ends[tp]:
                            continue
                        read += 1
                        found = match(record)
                        if found is not None:
                            return found, read
        except KafkaError as exc:
            raise TransportError(f"cannot read {self.where}: {exc}") from exc
        return None, read


def _reader(
    bootstrap_servers: str, topic: str, kafka_options: Mapping[str, Any] | None
) -> _Reader:
    try:
        return _Reader(bootstrap_servers, topic, kafka_options or {})
    except KafkaError as exc:
        raise TransportError(
            f"cannot reach Kafka at {bootstrap_servers} ({exc}); check --bootstrap"
        ) from exc
