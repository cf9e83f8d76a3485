"""Beats the broker deletes before the monitor reads them are reported, not hidden.

The broker's DeleteRecords request moves a partition's start forward exactly
as retention does when a monitor stays behind or stopped for too long.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.structs import OffsetAndMetadata

from tests.services import free_port
from tests.streams import MonitorProcess, Topics, read_topic, replay

pytestmark = pytest.mark.integration

LOST = re.compile(
    r"beats lost: topic=(\S+) partition=(\d+) offsets=(\d+)-(\d+) count=(\d+)"
)


def delete_before(bootstrap: str, offsets: dict[TopicPartition, int]) -> None:
    """Delete each partition's records below the offset, as retention would."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.delete_records(offsets)
    finally:
        admin.close()


@pytest.mark.parametrize("topics", [2], indirect=True)
def test_beats_deleted_after_the_last_commit_are_counted_and_named(
    kafka_bootstrap: str,
    topics: Topics,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    replay(kafka_bootstrap, topics.beats, 400)
    parts = [TopicPartition(topics.beats, p) for p in (0, 1)]
    probe = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=topics.group,
        enable_auto_commit=False,
    )
    try:
        ends = probe.end_offsets(parts)
        assert all(end >= 60 for end in ends.values()), ends
        # As if the group's monitor had scored the first 10 beats of each
        # partition and then stopped for longer than the topic keeps beats.
        probe.commit({tp: OffsetAndMetadata(10, "", -1) for tp in parts})
    finally:
        probe.close()
    deleted_to = {tp: ends[tp] - 25 for tp in parts}
    delete_before(kafka_bootstrap, deleted_to)

    monitor = MonitorProcess(
        bundle,
        kafka_bootstrap,
        topics,
        tmp_path / "m.log",
        topics.group,
        metrics_port=free_port(),
    )
    monitors.append(monitor)
    assert len(read_topic(kafka_bootstrap, topics.scores, 50)) == 50
    monitor.wait_for_log("beats lost: topic=")
    lost = {
        int(p): (int(first), int(last), int(count))
        for topic, p, first, last, count in LOST.findall(monitor.text())
        if topic == topics.beats
    }
    assert lost == {
        tp.partition: (10, deleted_to[tp] - 1, deleted_to[tp] - 10) for tp in parts
    }
    expected_lost = sum(deleted_to[tp] - 10 for tp in parts)
    assert monitor.scrape()["beatmon_beats_lost_total"] == expected_lost
    assert monitor.stop() == 0
    assert "monitor stopped: scored=50 flagged=" in monitor.text()
    assert f" lost={expected_lost} " in monitor.text()


def test_a_group_without_commits_loses_nothing_it_never_had(
    kafka_bootstrap: str,
    topics: Topics,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    replay(kafka_bootstrap, topics.beats, 100)
    delete_before(kafka_bootstrap, {TopicPartition(topics.beats, 0): 40})
    monitor = MonitorProcess(
        bundle, kafka_bootstrap, topics, tmp_path / "m.log", topics.group
    )
    monitors.append(monitor)
    assert len(read_topic(kafka_bootstrap, topics.scores, 60)) == 60
    assert monitor.stop() == 0
    text = monitor.text()
    assert "monitor stopped: scored=60 " in text and " lost=0 " in text
    assert "beats lost" not in text
