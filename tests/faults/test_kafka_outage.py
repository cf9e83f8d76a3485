"""Fault: the Kafka broker stops for 20 s mid-stream and comes back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from models.bundle import load_serving_bundle
from tests.faults.conftest import FAULT_KAFKA_PORT
from tests.faults.harness import (
    FaultTable,
    MetricsLedger,
    check_stream,
    exit_counts,
    uninterrupted_alarms,
    wait_for,
)
from tests.services import free_port, kafka
from tests.streams import (
    MonitorProcess,
    ReplayProcess,
    TopicEnds,
    alarm_identities,
    make_topics,
    read_topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

BEATS = 3000
OUTAGE_S = 20.0
IDLE_OUTAGE_S = 8.0
MAX_BATCH = 64
UNREACHABLE = "Kafka unreachable"
RECOVERED = "Kafka reachable again"


def test_monitor_and_replay_ride_out_a_broker_outage(
    fault_kafka: str,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
    fault_table: FaultTable,
) -> None:
    """Both processes keep running through the outage and lose nothing.

    The replay keeps handing beats to its producer, which holds them and
    retries; the monitor waits for the acknowledgement of the batch in hand
    and does not commit past it. Each says once that Kafka is unreachable
    and once that it is back. Metrics: one monitor life, so once the stream
    is scored its counters must equal the records written, and its exit line
    the same totals.
    """
    with fault_table.scenario(f"Kafka broker down {OUTAGE_S:.0f} s") as row:
        topics = make_topics(fault_kafka, partitions=3, prefix="fault-kafka")
        monitor = MonitorProcess(
            bundle,
            fault_kafka,
            topics,
            tmp_path / "monitor.log",
            topics.group,
            "--max-batch",
            str(MAX_BATCH),
            metrics_port=free_port(),
        )
        monitors.append(monitor)
        monitor.wait_for_log("partitions assigned: ")
        feeder = ReplayProcess(
            fault_kafka, topics.beats, BEATS, tmp_path / "replay.log", speed=3
        )
        ends = TopicEnds(fault_kafka)
        try:
            ledger = MetricsLedger(ends, topics, MAX_BATCH)
            wait_for(lambda: ledger.since_mark().scored >= 300, "300 beats scored")
            ends.close()

            stopped_at = time.monotonic()
            kafka("stop", port=FAULT_KAFKA_PORT)
            try:
                time.sleep(OUTAGE_S)
                assert feeder.proc.poll() is None, "the replay must not give up"
                assert monitor.proc.poll() is None, "the monitor must not give up"
            finally:
                kafka("start", port=FAULT_KAFKA_PORT)
            down_s = time.monotonic() - stopped_at

            assert feeder.wait(timeout_s=120) == 0, feeder.text()[-3000:]
            outcome = check_stream(fault_kafka, topics, bundle, BEATS, timeout_s=90)
            row.fill(outcome)
            ends = TopicEnds(fault_kafka)
            ledger = MetricsLedger(ends, topics, MAX_BATCH)
            counted = ledger.settled([monitor])
            assert monitor.stop() == 0
            assert exit_counts(monitor) == counted

            version = load_serving_bundle(bundle).version
            expected = uninterrupted_alarms(version, outcome)
            records = read_topic(fault_kafka, topics.alarms, len(expected))
            assert alarm_identities([r.value for r in records]) == expected

            for name, text in (("monitor", monitor.text()), ("replay", feeder.text())):
                assert text.count(UNREACHABLE) == 1, f"{name} log:\n{text[-3000:]}"
                assert text.count(RECOVERED) == 1, f"{name} log:\n{text[-3000:]}"
            row.result = (
                f"pass: broker away {down_s:.0f} s (stop, {OUTAGE_S:.0f} s, restart); "
                "1 outage and 1 recovery line from each process"
            )
        finally:
            feeder.kill()
            ends.close()


def test_an_idle_monitor_notices_an_outage_and_its_end(
    fault_kafka: str,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
    fault_table: FaultTable,
) -> None:
    """With no beat arriving, nothing waits on the broker; the monitor asks
    for end offsets at every report instead, so the operator still hears of
    the outage and its end, once each, and the monitor keeps running."""
    with fault_table.scenario(f"Kafka broker down {IDLE_OUTAGE_S:.0f} s, idle") as row:
        topics = make_topics(fault_kafka, partitions=3, prefix="fault-idle")
        monitor = MonitorProcess(
            bundle,
            fault_kafka,
            topics,
            tmp_path / "monitor.log",
            topics.group,
            metrics_port=free_port(),
        )
        monitors.append(monitor)
        monitor.wait_for_log("alarm state restored: ")
        kafka("stop", port=FAULT_KAFKA_PORT)
        try:
            time.sleep(IDLE_OUTAGE_S)
            assert monitor.proc.poll() is None, monitor.text()[-3000:]
        finally:
            kafka("start", port=FAULT_KAFKA_PORT)
        monitor.wait_for_log(RECOVERED, timeout_s=30)
        assert monitor.stop() == 0
        text = monitor.text()
        assert text.count(UNREACHABLE) == 1 and text.count(RECOVERED) == 1, text
        row.result = "pass: 1 outage and 1 recovery line"
