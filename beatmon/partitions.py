"""Which partition a keyed message goes to, as kafka-python's default decides it.

The default partitioner hashes the key with murmur2, written in pure Python:
a few microseconds for every message sent. Patient ids repeat all day, so
their hashes are kept.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.default import murmur2

# Enough for every patient of a large hospital many times over; an entry is
# a short key and an integer.
KEY_HASHES_KEPT = 1 << 16

_hash = functools.lru_cache(maxsize=KEY_HASHES_KEPT)(murmur2)


def partition_for_key(key: bytes, partitions: Collection[int]) -> int:
    """The partition kafka-python's default partitioner picks for ``key``."""
    ordered = sorted(partitions)
    return ordered[(_hash(key) & 0x7FFFFFFF) % len(ordered)]


class KeyedPartitioner(DefaultPartitioner):
    """The default partitioner, with the hashes of recent keys kept."""

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:
            return int(
                super().partition(
                    topic, key, serialized_key, value, serialized_value, cluster
                )
            )
        return partition_for_key(serialized_key, partitions)
