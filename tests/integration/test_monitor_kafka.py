"""The monitor against a real Kafka broker: parity, poison, crashes, rebalances."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer

from beatmon.cli import main
from beatmon.messages import Beat, alert_id, decode_alert, decode_beat, encode_beat
from models.autoencoder import VARIANTS
from models.bundle import load_bundle, save_bundle
from models.data import BeatSet
from models.scoring import keras_errors
from models.train import TrainConfig, train
from monitor.alarms import AlarmPolicy, AlarmSettings, decode_alarm_event
from tests.integration.test_prometheus import dashboard_exprs, rule_exprs
from tests.services import (
    TEST_MQTT_PORT,
    PrometheusServer,
    create_topics,
    mosquitto,
    unique_name,
)

pytestmark = pytest.mark.integration

WAIT_S = 60.0


@pytest.fixture(scope="module")
def bundle(small_ecg: BeatSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    trained = train(
        small_ecg,
        "1",
        VARIANTS["dense"],
        TrainConfig(max_epochs=3, patience=2),
        on_epoch=lambda *_: None,
    )
    return save_bundle(trained, tmp_path_factory.mktemp("monitor") / "bundle")


@dataclass
class Topics:
    beats: str
    alerts: str
    dead: str
    scores: str
    alarms: str
    alarm_state: str
    # Each test's monitors form a group of their own: a member killed in one
    # test must not hold up the next test's rebalance.
    group: str


@pytest.fixture
def topics(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Topics:
    partitions = getattr(request, "param", 1)
    base = unique_name("mon")
    names = Topics(
        f"{base}.beats",
        f"{base}.alerts",
        f"{base}.dlq",
        f"{base}.scores",
        f"{base}.alarms",
        f"{base}.alarm-state",
        f"{base}.monitors",
    )
    create_topics(kafka_bootstrap, [names.beats], partitions=partitions)
    create_topics(
        kafka_bootstrap, [names.alerts, names.dead, names.scores, names.alarms]
    )
    return names


class MonitorProcess:
    """``beatmon monitor`` in a child process, as an operator would run it."""

    def __init__(
        self,
        bundle: Path,
        bootstrap: str,
        topics: Topics,
        log: Path,
        group: str,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> None:
        env = env or {}
        self.log = log
        self.handle = log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "beatmon.cli",
                "monitor",
                "--bundle",
                str(bundle),
                "--bootstrap",
                bootstrap,
                "--beats-topic",
                topics.beats,
                "--alerts-topic",
                topics.alerts,
                "--dead-letter-topic",
                topics.dead,
                "--scores-topic",
                topics.scores,
                "--group",
                group,
                "--report-every",
                "1",
                *extra,
            ],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "BEATMON_TOPICS__ALARMS": topics.alarms,
                "BEATMON_TOPICS__ALARM_STATE": topics.alarm_state,
                "BEATMON_MQTT__ENABLED": "false",
                "BEATMON_METRICS__ENABLED": "false",
                **env,
            },
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(f"monitor exited early:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {needle!r} in the monitor log:\n{self.text()}"
                )
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout_s)
        self.handle.close()
        return code


@pytest.fixture
def monitors(tmp_path: Path) -> Iterator[list[MonitorProcess]]:
    started: list[MonitorProcess] = []
    yield started
    for monitor in started:
        if monitor.proc.poll() is None:
            monitor.proc.kill()
            monitor.proc.wait()


def replay(
    bootstrap: str,
    topic: str,
    limit: int,
    *extra: str,
    paced: tuple[str, ...] = ("--max",),
) -> None:
    args = ["replay", "--bootstrap", bootstrap, "--topic", topic, *paced]
    assert main([*args, "--limit", str(limit), "--patients", "20", *extra]) == 0


def read_topic(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float = WAIT_S,
    count: Callable[[list[Any]], int] = len,
) -> list[Any]:
    """Every record of ``topic``, waiting until ``count(records) >= expected``."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=1000,
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while count(records) < expected and time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
        # A short extra read catches records beyond the expected count.
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
    finally:
        consumer.close()
    return records


def scored_pairs(bootstrap: str, topic: str, expected: int) -> list[tuple[str, int]]:
    """(patient, seq) of every score record, once ``expected`` distinct ones exist.

    A beat scored twice (after a crash or a rebalance) has two records, so
    the wait counts distinct beats, not records.
    """

    def pairs(records: list[Any]) -> list[tuple[str, int]]:
        return [
            (d["patient"], d["seq"]) for d in (json.loads(r.value) for r in records)
        ]

    return pairs(
        read_topic(bootstrap, topic, expected, count=lambda rs: len(set(pairs(rs))))
    )


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


def paced_replay(
    bootstrap: str, topic: str, limit: int, *extra: str
) -> threading.Thread:
    """Replay at 20 times real time in the background (a few hundred beats/s),
    so that a monitor can be killed while beats are still arriving."""
    feeder = threading.Thread(
        target=replay,
        args=(bootstrap, topic, limit, *extra),
        kwargs={"paced": ("--speed", "20")},
        daemon=True,
    )
    feeder.start()
    return feeder


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


def expected_alarm_events(bundle: Path, beats: list[Beat]) -> set[tuple[str, str, int]]:
    """The alarm events the lab's own scoring gives, run once without a break."""
    lab = load_bundle(bundle)
    samples = np.stack([beat.samples for beat in beats]).astype(np.float32)
    flagged = keras_errors(lab.model, lab.scaler, samples) > lab.threshold
    policy = AlarmPolicy(AlarmSettings(), model_version=lab.version)
    return {(e.episode_id, e.kind, e.seq) for e in policy.apply(beats, flagged)}


def alarm_identities(payloads: list[bytes]) -> set[tuple[str, str, int]]:
    events = [decode_alarm_event(p) for p in payloads]
    return {(e.episode_id, e.kind, e.seq) for e in events}


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


def test_alarms_buffered_while_mosquitto_is_down_arrive_after_it_returns(
    kafka_bootstrap: str,
    topics: Topics,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    import paho.mqtt.client as paho

    port = TEST_MQTT_PORT + 5
    run_dir = tmp_path / "mosquitto"
    # Persistence keeps the subscriber's session, and what is queued for it,
    # across the broker's restart.
    mosquitto("start", port, run_dir=run_dir, persistence=True)
    prefix = unique_name("beatmon-outage")
    received: list[bytes] = []
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=unique_name("subscriber"),
        clean_session=False,
    )
    client.on_message = lambda _c, _u, message: received.append(message.payload)
    client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(
        f"{prefix}/alarms/#", qos=1
    )
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        monitor = MonitorProcess(
            bundle,
            kafka_bootstrap,
            topics,
            tmp_path / "m.log",
            topics.group,
            env={
                "BEATMON_MQTT__ENABLED": "true",
                "BEATMON_MQTT__PORT": str(port),
                "BEATMON_MQTT__TOPIC_PREFIX": prefix,
            },
        )
        monitors.append(monitor)
        monitor.wait_for_log("mqtt connected")
        feeder = threading.Thread(
            target=replay,
            args=(kafka_bootstrap, topics.beats, 2400),
            kwargs={"paced": ("--speed", "10")},
            daemon=True,
        )
        feeder.start()
        read_topic(kafka_bootstrap, topics.scores, 300)
        mosquitto("stop", port, run_dir=run_dir, persistence=True)
        read_topic(kafka_bootstrap, topics.scores, 900)
        mosquitto("start", port, run_dir=run_dir, persistence=True)
        feeder.join(timeout=60)
        scored_pairs(kafka_bootstrap, topics.scores, 2400)

        beats = [
            decode_beat(r.value)
            for r in read_topic(kafka_bootstrap, topics.beats, 2400)
        ]
        expected = expected_alarm_events(bundle, beats)
        deadline = time.monotonic() + 20
        while alarm_identities(received) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert monitor.stop() == 0
        assert (
            "mqtt connection lost" in monitor.text() or "unreachable" in monitor.text()
        )
    finally:
        client.loop_stop()
        client.disconnect()
        mosquitto("stop", port, run_dir=run_dir, persistence=True)
    assert alarm_identities(received) == expected
