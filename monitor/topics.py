"""Topics the monitor writes, created on start, and the alarm-state topic reader.

The alarm-state topic is compacted and keyed by patient: after compaction it
holds each patient's latest alarm-policy state, which is what a monitor
needs after a restart or when a patient's partition moves to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from beatmon.errors import TransportError

logger = logging.getLogger(__name__)

COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}


def ensure_topics(
    bootstrap_servers: str,
    topics: Mapping[str, dict[str, str]],
    kafka_options: Mapping[str, Any] | None = None,
) -> None:
    """Create each missing topic with one partition and the given configs."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="beatmon-admin",
        **dict(kafka_options or {}),
    )
    try:
        existing = set(admin.list_topics())
        missing = [name for name in topics if name not in existing]
        for name in missing:
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            name,
                            num_partitions=1,
                            replication_factor=-1,
                            topic_configs=topics[name],
                        )
                    ]
                )
                logger.info("created topic=%s configs=%s", name, topics[name] or "{}")
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def read_latest_by_key(
    bootstrap_servers: str,
    topic: str,
    timeout_s: float = 30.0,
    kafka_options: Mapping[str, Any] | None = None,
) -> dict[str, bytes]:
    """Read ``topic`` from the start to its current end; the last value per key.

    A record with no value (a tombstone) removes its key.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        client_id="beatmon-state-reader",
        **dict(kafka_options or {}),
    )
    latest: dict[str, bytes] = {}
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not parts:
            return latest
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TransportError(
                    f"could not read topic {topic} to its end within {timeout_s:g} s"
                )
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    if record.key is None:
                        continue
                    key = record.key.decode("utf-8", "replace")
                    if record.value is None:
                        latest.pop(key, None)
                    else:
                        latest[key] = record.value
    except KafkaError as exc:
        raise TransportError(f"cannot read topic {topic}: {exc}") from exc
    finally:
        consumer.close()
    return latest
