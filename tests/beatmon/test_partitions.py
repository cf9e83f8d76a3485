"""The kept-hash partitioner must choose exactly what kafka-python's default does."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.partitioner import DefaultPartitioner

from beatmon.partitions import KeyedPartitioner, partition_for_key


class Cluster:
    """The two questions a partitioner asks of the cluster metadata."""

    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self.partitions = partitions

    def topics(self) -> set[str]:
        return set(self.partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions.get(topic, set())


KEYS = [f"p{i:05d}".encode() for i in range(2000)] + [
    b"",
    b"x",
    "patient-é".encode(),
    bytes(range(256)),
]


@pytest.mark.parametrize("count", [1, 2, 3, 6, 7, 64])
def test_same_partition_as_the_default_for_every_key(count: int) -> None:
    cluster = Cluster({"alerts": set(range(count))})
    default, kept = DefaultPartitioner(), KeyedPartitioner()
    for _ in range(2):  # the second round is served from the kept hashes
        for key in KEYS:
            expected = default.partition("alerts", None, key, None, b"v", cluster)
            assert kept.partition("alerts", None, key, None, b"v", cluster) == expected
            assert partition_for_key(key, set(range(count))) == expected


def test_partitions_not_numbered_from_zero_are_chosen_by_rank() -> None:
    cluster = Cluster({"t": {3, 9, 4}})
    default, kept = DefaultPartitioner(), KeyedPartitioner()
    for key in KEYS[:200]:
        assert kept.partition("t", None, key, None, None, cluster) == (
            default.partition("t", None, key, None, None, cluster)
        )


def test_a_message_without_key_goes_to_any_partition() -> None:
    cluster = Cluster({"t": {0, 1, 2}})
    chosen = {
        KeyedPartitioner().partition("t", None, None, None, b"v", cluster)
        for _ in range(200)
    }
    assert chosen == {0, 1, 2}


def test_an_unknown_topic_is_refused_as_the_default_refuses_it() -> None:
    cluster: Any = Cluster({})
    with pytest.raises(ValueError, match="not found"):
        KeyedPartitioner().partition("nope", None, b"k", None, b"v", cluster)
