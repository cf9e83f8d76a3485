"""The monitor against a real Kafka broker: parity, poison, crashes, rebalances."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from beatmon.messages import alert_id, decode_alert, decode_beat, encode_beat
from models.bundle import load_bundle
from models.scoring import keras_errors
from monitor.alarms import decode_alarm_event
from tests.integration.test_prometheus import dashboard_exprs, rule_exprs
from tests.services import PrometheusServer, unique_name
from tests.streams import (
    MonitorProcess,
    Topics,
    alarm_identities,
    expected_alarm_events,
    paced_replay,
    read_topic,
    replay,
    scored_pairs,
)

pytestmark = pytest.mark.integration


def test_alerts_match_the_lab_beat_for_beat(
    kafka_bootstrap: str,
    topics: Topics,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    replay(kafka_bootstrap, topics.beats, 400)
    monitor = MonitorProcess(
        bundle, kafka_bootstrap, topics, tmp_path / "m.log", topics.group
    )
    monitors.append(monitor)
    assert len(read_topic(kafka_bootstrap, topics.scores, 400)) == 400
    assert monitor.stop() == 0
    assert "monitor stopped: scored=400" in monitor.text()

    beats = [
        decode_beat(r.value) for r in read_topic(kafka_bootstrap, topics.beats, 400)
    ]
    lab = load_bundle(bundle)
    samples = np.stack([beat.samples for beat in beats]).astype(np.float32)
    errors = keras_errors(lab.model, lab.scaler, samples)
    expected = {
        (beat.patient, beat.seq): float(error)
        for beat, error in zip(beats, errors, strict=True)
        if error > lab.threshold
    }
    alerts = [
        decode_alert(r.value) for r in read_topic(kafka_bootstrap, topics.alerts, 1)
    ]
    assert expected, "the replayed beats should include abnormal ones"
    assert {(a.patient, a.seq) for a in alerts} == set(expected)
    for alert in alerts:
        assert alert.error == pytest.approx(
            expected[alert.patient, alert.seq], abs=1e-5
        )
        assert alert.alert_id == alert_id(lab.version, alert.patient, alert.seq)
        assert alert.model_version == lab.version and alert.threshold == lab.threshold
        assert len(alert.profile) == 10 and alert.truth in ("normal", "abnormal")
        assert alert.emitted_at >= alert.beat_time


POISON: list[bytes | None] = [
    b"\x00\xff garbage",
    b"",
    b"[1, 2, 3]",
    b'{"v": 1}',
    b'{"v": 99, "patient": "p1", "seq": 0, "produced_at": 1, "samples": [1]}',
    b'{"v": 1, "patient": "p1", "seq": "x", "produced_at": 1, "samples": [1]}',
    None,
]


def _poison(length: int) -> list[tuple[bytes | None, bytes | None]]:
    good = [0.1] * length
    cases = [(b"p0001", payload) for payload in POISON]
    cases.append((b"p0001", encode_beat("p0001", 1, 1.0, good[:-1])))
    cases.append(
        (b"p0001", encode_beat("p0001", 1, 1.0, good).replace(b"0.1]", b"NaN]"))
    )
    cases.append((b"p0001", encode_beat("p0001", 1, 1.0, [*good[:-1], 1e300])))
    cases.append((b"p0001", encode_beat("p0001", 1, 1.0, [*good[:-1], True])))  # type: ignore[list-item]
    cases.append((b"someone-else", encode_beat("p0001", 1, 1.0, good)))
    cases.append((b"p0001", b"{" * 100_000))
    return cases


def test_poison_goes_to_the_dead_letter_topic_and_the_stream_goes_on(
    kafka_bootstrap: str,
    topics: Topics,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    poison = _poison(140)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for key, value in poison:
        producer.send(topics.beats, key=key, value=value)
    producer.flush()
    producer.close()
    replay(kafka_bootstrap, topics.beats, 200)

    monitor = MonitorProcess(
        bundle, kafka_bootstrap, topics, tmp_path / "m.log", topics.group
    )
    monitors.append(monitor)
    assert len(read_topic(kafka_bootstrap, topics.scores, 200)) == 200
    dead = read_topic(kafka_bootstrap, topics.dead, len(poison))
    assert monitor.stop() == 0

    assert [(r.key, r.value) for r in dead] == poison
    for offset, record in enumerate(dead):
        headers = {name: value.decode() for name, value in record.headers}
        assert headers["beatmon.dlq.topic"] == topics.beats
        assert headers["beatmon.dlq.partition"] == "0"
        assert headers["beatmon.dlq.offset"] == str(offset)
        assert headers["beatmon.dlq.reason"]
    assert "dead-lettered: topic=" in monitor.text()
    assert f"dead_lettered={len(poison)}" in monitor.text()


def kill_mid_stream_and_restart(
    bundle: Path,
    bootstrap: str,
    topics: Topics,
    log: Path,
    monitors: list[MonitorProcess],
    scored: int,
    after: Callable[[], object] = lambda: None,
) -> MonitorProcess:
    """Run a monitor in small batches, SIGKILL it once ``scored`` score records
    exist (and ``after`` returned), and start a second one in its place."""
    first = MonitorProcess(
        bundle,
        bootstrap,
        topics,
        log,
        topics.group,
        "--max-batch",
        "16",
        "--max-wait-ms",
        "5",
    )
    monitors.append(first)
    read_topic(bootstrap, topics.scores, scored)
    after()
    first.stop(signal.SIGKILL)
    second = MonitorProcess(bundle, bootstrap, topics, log, topics.group)
    monitors.append(second)
    return second


def test_sigkill_mid_stream_loses_no_beat(
    kafka_bootstrap: str,
    topics: Topics,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    total = 3000
    feeder = paced_replay(kafka_bootstrap, topics.beats, total)
    second = kill_mid_stream_and_restart(
        bundle, kafka_bootstrap, topics, tmp_path / "m.log", monitors, 300
    )
    before = scored_pairs(kafka_bootstrap, topics.scores, 300)
    assert 300 <= len(set(before)) < total, "the kill should land mid-stream"
    feeder.join(timeout=60)
    pairs = scored_pairs(kafka_bootstrap, topics.scores, total)
    assert second.stop() == 0
    sent = {
        (beat.patient, beat.seq)
        for beat in (
            decode_beat(r.value)
            for r in read_topic(kafka_bootstrap, topics.beats, total)
        )
    }
    assert len(sent) == total
    assert set(pairs) == sent


@pytest.mark.parametrize("topics", [4], indirect=True)
def test_two_monitors_share_partitions_and_hand_over(
    kafka_bootstrap: str,
    topics: Topics,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    a = MonitorProcess(
        bundle, kafka_bootstrap, topics, tmp_path / "a.log", topics.group
    )
    monitors.append(a)
    a.wait_for_log("partitions assigned: " + topics.beats)
    b = MonitorProcess(
        bundle, kafka_bootstrap, topics, tmp_path / "b.log", topics.group
    )
    monitors.append(b)
    b.wait_for_log("partitions assigned: " + topics.beats)
    time.sleep(1.0)

    replay(kafka_bootstrap, topics.beats, 1000, "--patient-prefix", "a")
    scored_pairs(kafka_bootstrap, topics.scores, 1000)
    assert a.stop() == 0
    assert "monitor stopped: scored=0 " not in a.text()
    b.wait_for_log(
        f"partitions assigned: {topics.beats}[0], {topics.beats}[1], "
        f"{topics.beats}[2], {topics.beats}[3]"
    )

    replay(kafka_bootstrap, topics.beats, 1000, "--patient-prefix", "b")
    pairs = scored_pairs(kafka_bootstrap, topics.scores, 2000)
    assert b.stop() == 0
    assert "monitor stopped: scored=0 " not in b.text()
    sent = [
        (beat.patient, beat.seq)
        for beat in (
            decode_beat(r.value)
            for r in read_topic(kafka_bootstrap, topics.beats, 2000)
        )
    ]
    assert len(sent) == 2000
    assert set(pairs) >= set(sent)


def test_alarms_survive_sigkill_without_loss_or_a_second_raise(
    kafka_bootstrap: str,
    topics: Topics,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    total = 3000
    feeder = paced_replay(kafka_bootstrap, topics.beats, total, "--patients", "30")

    # Kill it once it has checkpointed alarm state at least once.
    second = kill_mid_stream_and_restart(
        bundle,
        kafka_bootstrap,
        topics,
        tmp_path / "m.log",
        monitors,
        total // 3,
        after=lambda: read_topic(kafka_bootstrap, topics.alarm_state, 1),
    )
    feeder.join(timeout=60)
    before = read_topic(kafka_bootstrap, topics.scores, 1)
    assert len(before) < total, "the kill should land mid-stream"
    beats = [
        decode_beat(r.value) for r in read_topic(kafka_bootstrap, topics.beats, total)
    ]
    expected = expected_alarm_events(bundle, beats)
    assert any(kind == "raised" for _, kind, _ in expected)
    scored_pairs(kafka_bootstrap, topics.scores, total)
    assert second.stop() == 0
    restored = re.findall(r"alarm state restored: patients=(\d+)", second.text())
    assert restored and int(restored[-1]) > 0

    records = read_topic(kafka_bootstrap, topics.alarms, len(expected))
    assert alarm_identities([r.value for r in records]) == expected
    raised = [decode_alarm_event(r.value) for r in records]
    episodes_raised = {(e.episode_id, e.seq) for e in raised if e.kind == "raised"}
    assert episodes_raised == {
        (eid, seq) for eid, kind, seq in expected if kind == "raised"
    }


def test_alarms_reach_a_real_mqtt_subscriber(
    kafka_bootstrap: str,
    mqtt_broker: tuple[str, int],
    topics: Topics,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    import paho.mqtt.client as paho

    host, port = mqtt_broker
    prefix = unique_name("beatmon-test")
    received: list[bytes] = []
    statuses: dict[str, bytes] = {}
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        if message.topic.startswith(f"{prefix}/alarms/"):
            received.append(message.payload)
        else:
            statuses[message.topic.rsplit("/", 1)[1]] = message.payload

    client.on_message = on_message
    client.connect(host, port)
    client.subscribe(f"{prefix}/#", qos=1)
    client.loop_start()
    try:
        replay(kafka_bootstrap, topics.beats, 1500, "--patients", "15")
        beats = [
            decode_beat(r.value)
            for r in read_topic(kafka_bootstrap, topics.beats, 1500)
        ]
        expected = expected_alarm_events(bundle, beats)
        monitor = MonitorProcess(
            bundle,
            kafka_bootstrap,
            topics,
            tmp_path / "m.log",
            topics.group,
            env={
                "BEATMON_MQTT__ENABLED": "true",
                "BEATMON_MQTT__HOST": host,
                "BEATMON_MQTT__PORT": str(port),
                "BEATMON_MQTT__TOPIC_PREFIX": prefix,
            },
        )
        monitors.append(monitor)
        scored_pairs(kafka_bootstrap, topics.scores, 1500)
        assert monitor.stop() == 0
        deadline = time.monotonic() + 10
        while alarm_identities(received) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        client.loop_stop()
        client.disconnect()
    assert alarm_identities(received) == expected
    assert statuses, "each patient with an alarm has a retained status"
    for patient, payload in statuses.items():
        status = json.loads(payload)
        assert status["patient"] == patient and status["state"] in ("normal", "alarm")


def test_prometheus_scrapes_the_monitor_and_every_panel_has_data(
    kafka_bootstrap: str,
    mqtt_broker: tuple[str, int],
    prometheus_server: PrometheusServer,
    topics: Topics,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    host, port = mqtt_broker
    prom = prometheus_server
    monitor = MonitorProcess(
        bundle,
        kafka_bootstrap,
        topics,
        tmp_path / "m.log",
        topics.group,
        env={
            "BEATMON_METRICS__ENABLED": "true",
            "BEATMON_METRICS__PORT": str(prom.metrics_port),
            "BEATMON_MQTT__ENABLED": "true",
            "BEATMON_MQTT__HOST": host,
            "BEATMON_MQTT__PORT": str(port),
            "BEATMON_MQTT__TOPIC_PREFIX": unique_name("beatmon-test"),
        },
    )
    monitors.append(monitor)
    monitor.wait_for_log("metrics served at")
    feeder = threading.Thread(
        target=replay,
        args=(kafka_bootstrap, topics.beats, 30_000),
        kwargs={"paced": ("--speed", "8", "--duration", "30", "--loop")},
        daemon=True,
    )
    feeder.start()

    exprs = dashboard_exprs() + rule_exprs()
    deadline = time.monotonic() + 90
    missing = exprs
    while missing and time.monotonic() < deadline:
        time.sleep(2.0)
        missing = [(where, expr) for where, expr in missing if not prom.query(expr)]
    feeder.join(timeout=60)
    assert monitor.stop() == 0
    assert not missing, "expressions without data:\n" + "\n".join(
        f"{where}: {expr}" for where, expr in missing
    )
