"""Fault: Mosquitto stops mid-stream and comes back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.bundle import load_serving_bundle
from tests.faults.conftest import FAULT_MQTT_PORT
from tests.faults.harness import (
    FaultTable,
    MetricsLedger,
    check_stream,
    exit_counts,
    kafka_alarms,
    total,
    uninterrupted_alarms,
    wait_for,
)
from tests.services import free_port, mosquitto, unique_name
from tests.streams import (
    MonitorProcess,
    ReplayProcess,
    TopicEnds,
    alarm_identities,
    make_topics,
    read_topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

BEATS = 2400
MAX_BATCH = 64


class Subscriber:
    """A persistent MQTT session (clean_session off) on the alarm topics.

    With the broker's persistence on, the session and what is queued for it
    survive the broker's restart, so it receives every alarm published after
    it subscribed, whenever each side reconnects.
    """

    def __init__(self, port: int, prefix: str) -> None:
        import paho.mqtt.client as paho

        self.received: list[bytes] = []
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=unique_name("subscriber"),
            clean_session=False,
        )
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(
            f"{prefix}/alarms/#", qos=1
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.received.append(message.payload)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def outage_broker(tmp_path: Path) -> Iterator[Path]:
    """A Mosquitto of this test's own, with persistence, that the test stops."""
    run_dir = tmp_path / "mosquitto"
    mosquitto("install")
    mosquitto("start", FAULT_MQTT_PORT, run_dir=run_dir, persistence=True)
    try:
        yield run_dir
    finally:
        mosquitto("stop", FAULT_MQTT_PORT, run_dir=run_dir, persistence=True)


def test_alarms_held_while_mosquitto_is_down_arrive_after_it_returns(
    kafka_bootstrap: str,
    outage_broker: Path,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
    fault_table: FaultTable,
) -> None:
    """The monitor keeps scoring and buffers alarms while Mosquitto is away;
    a persistent subscriber then receives every alarm the stream should give.

    Metrics: one monitor life, so once it is idle its counters must equal the
    records written, its exit line the same totals; every alarm sent to
    Kafka was also handed to MQTT, and none was dropped from the buffer.
    """
    with fault_table.scenario("Mosquitto down mid-stream") as row:
        prefix = unique_name("beatmon-outage")
        subscriber = Subscriber(FAULT_MQTT_PORT, prefix)
        topics = make_topics(kafka_bootstrap, partitions=3, prefix="fault-mqtt")
        ends = TopicEnds(kafka_bootstrap)
        feeder: ReplayProcess | None = None
        try:
            monitor = MonitorProcess(
                bundle,
                kafka_bootstrap,
                topics,
                tmp_path / "monitor.log",
                topics.group,
                "--max-batch",
                str(MAX_BATCH),
                metrics_port=free_port(),
                env={
                    "BEATMON_MQTT__ENABLED": "true",
                    "BEATMON_MQTT__PORT": str(FAULT_MQTT_PORT),
                    "BEATMON_MQTT__TOPIC_PREFIX": prefix,
                },
            )
            monitors.append(monitor)
            monitor.wait_for_log("mqtt connected")
            feeder = ReplayProcess(
                kafka_bootstrap, topics.beats, BEATS, tmp_path / "replay.log", speed=10
            )
            ledger = MetricsLedger(ends, topics, MAX_BATCH)
            wait_for(lambda: ledger.since_mark().scored >= 300, "300 beats scored")
            mosquitto("stop", FAULT_MQTT_PORT, run_dir=outage_broker, persistence=True)
            try:
                wait_for(lambda: ledger.since_mark().scored >= 900, "900 beats scored")
            finally:
                mosquitto(
                    "start", FAULT_MQTT_PORT, run_dir=outage_broker, persistence=True
                )
            assert feeder.wait(timeout_s=120) == 0, feeder.text()[-2000:]

            outcome = check_stream(kafka_bootstrap, topics, bundle, BEATS)
            row.fill(outcome)
            counted = ledger.settled([monitor])
            samples = monitor.scrape()
            assert total(samples, kafka_alarms("mqtt")) == counted.alarms
            assert samples["beatmon_mqtt_dropped_total"] == 0

            version = load_serving_bundle(bundle).version
            expected = uninterrupted_alarms(version, outcome)
            records = read_topic(kafka_bootstrap, topics.alarms, len(expected))
            assert alarm_identities([r.value for r in records]) == expected
            deadline = time.monotonic() + 20
            while (
                alarm_identities(subscriber.received) != expected
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)
            assert monitor.stop() == 0
            assert exit_counts(monitor) == counted
            text = monitor.text()
            assert "mqtt connection lost" in text or "unreachable" in text, text
            assert alarm_identities(subscriber.received) == expected
            repeats = len(subscriber.received) - len(expected)
            row.result = f"pass: {len(expected)} alarms over MQTT, {repeats} repeated"
        finally:
            if feeder is not None:
                feeder.kill()
            subscriber.close()
            ends.close()
