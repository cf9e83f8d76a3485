"""Logins against real brokers: Kafka SASL/SCRAM and a Mosquitto with passwords.

The Kafka here is a broker of its own (scripts/kafka with ``KAFKA_SASL_PORT``
and ``KAFKA_SCRAM_USERS``): a SASL_PLAINTEXT listener that takes SCRAM-SHA-256
and SCRAM-SHA-512 logins, beside a PLAINTEXT one that the tests use to make
topics and read results. The replay producer and the monitor get only the
SASL address. A wrong password must stop both within seconds, with one line
that says the login was refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from beatmon.errors import TransportError
from beatmon.kafka_login import check_login
from beatmon.settings import KafkaSettings, Secret
from monitor.alarms import decode_alarm_event
from tests.services import (
    KAFKA_SCRIPT,
    MQTT_PASSWORD,
    MQTT_USER,
    SCRAM_PASSWORD,
    SCRAM_USER,
    TEST_KAFKA_SASL_PORT,
    kafka,
    listening_addresses,
    non_loopback_addresses,
    refuses_connections,
    sasl_kafka_env,
    unique_name,
)
from tests.streams import (
    MonitorProcess,
    Topics,
    beatmon_command,
    make_topics,
    read_topic,
    replay,
    scored_pairs,
    subprocess_env,
)

pytestmark = pytest.mark.integration

# The monitor and the replay must give up on a refused login well before this.
REFUSAL_LIMIT_S = 15.0
WRONG_PASSWORD = "not-the-password"


@dataclass(frozen=True)
class SaslKafka:
    plain: str  # for the tests' own set-up and reads
    sasl: str  # the only address beatmon gets


@pytest.fixture(scope="module")
def sasl_kafka() -> Iterator[SaslKafka]:
    kafka("start", TEST_KAFKA_SASL_PORT, sasl_kafka_env())
    try:
        yield SaslKafka(
            plain=f"127.0.0.1:{TEST_KAFKA_SASL_PORT}",
            sasl=f"127.0.0.1:{TEST_KAFKA_SASL_PORT + 2}",
        )
    finally:
        kafka("stop", TEST_KAFKA_SASL_PORT)


def scram_env(mechanism: str, password: str) -> dict[str, str]:
    """The settings of a SCRAM login, as BEATMON_* variables."""
    return {
        "BEATMON_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "BEATMON_KAFKA__SASL_MECHANISM": mechanism,
        "BEATMON_KAFKA__SASL_USERNAME": SCRAM_USER,
        "BEATMON_KAFKA__SASL_PASSWORD": password,
    }


# --- Kafka SASL/SCRAM ------------------------------------------------------------


def test_replay_and_monitor_log_in_with_scram(
    sasl_kafka: SaslKafka,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    beats = 400
    topics = make_topics(sasl_kafka.plain, prefix="sasl")
    # The replay logs in with SCRAM-SHA-256 and the monitor with SCRAM-SHA-512.
    for key, value in scram_env("SCRAM-SHA-256", SCRAM_PASSWORD).items():
        monkeypatch.setenv(key, value)
    replay(sasl_kafka.sasl, topics.beats, beats)
    monitor = MonitorProcess(
        bundle,
        sasl_kafka.sasl,
        topics,
        tmp_path / "m.log",
        topics.group,
        env=scram_env("SCRAM-SHA-512", SCRAM_PASSWORD),
    )
    monitors.append(monitor)

    scores = read_topic(sasl_kafka.plain, topics.scores, beats)
    assert len({(s["patient"], s["seq"]) for s in map(load, scores)}) == beats
    flagged = sum(bool(load(s)["flagged"]) for s in scores)
    assert flagged > 0
    alerts = read_topic(sasl_kafka.plain, topics.alerts, flagged)
    assert len(alerts) == flagged
    assert monitor.stop() == 0
    text = monitor.text()
    assert f"monitor stopped: scored={beats}" in text
    assert SCRAM_PASSWORD not in text


def load(record: Any) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(record.value)
    return value


def test_a_wrong_password_stops_monitor_and_replay_within_seconds(
    sasl_kafka: SaslKafka, bundle: Path
) -> None:
    env = subprocess_env(scram_env("SCRAM-SHA-256", WRONG_PASSWORD))
    commands = {
        "monitor": ["monitor", "--bundle", str(bundle), "--no-mqtt", "--no-metrics"],
        "replay": ["replay", "--limit", "5", "--topic", unique_name("sasl-refused")],
    }
    started = time.monotonic()
    running = {
        name: subprocess.Popen(
            [*beatmon_command(), *args, "--bootstrap", sasl_kafka.sasl],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, args in commands.items()
    }
    took_s: dict[str, float] = {}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=60)
        took_s[name] = time.monotonic() - started
        assert proc.returncode == 2, f"{name}: {err}"
        error_lines = [line for line in err.splitlines() if ": error: " in line]
        assert error_lines == [
            f"beatmon {name}: error: Kafka at {sasl_kafka.sasl} refused the login of "
            f"user '{SCRAM_USER}' (SASL_PLAINTEXT, SCRAM-SHA-256): Authentication "
            "failed during authentication due to invalid credentials with SASL "
            "mechanism SCRAM-SHA-256; check kafka.sasl_username and the password in "
            "BEATMON_KAFKA__SASL_PASSWORD"
        ], err
        assert "Traceback" not in err
        assert WRONG_PASSWORD not in out + err
    print(f"refused login: exit after {took_s}")
    assert max(took_s.values()) < REFUSAL_LIMIT_S, took_s


def test_the_login_check_names_a_mechanism_or_listener_that_does_not_fit(
    sasl_kafka: SaslKafka,
) -> None:
    options = KafkaSettings(
        bootstrap_servers=sasl_kafka.sasl,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username=SCRAM_USER,
        sasl_password=Secret(SCRAM_PASSWORD),
    ).client_options()
    with pytest.raises(TransportError, match="does not offer PLAIN") as refused:
        check_login(sasl_kafka.sasl, options)
    assert "SCRAM-SHA-256" in str(refused.value)
    with pytest.raises(TransportError, match="may not be a SASL listener"):
        check_login(sasl_kafka.plain, options)
    check_login(sasl_kafka.sasl, {**options, "sasl_mechanism": "SCRAM-SHA-512"})


def test_the_sasl_broker_listens_on_loopback_only(sasl_kafka: SaslKafka) -> None:
    others = non_loopback_addresses()
    for port in range(TEST_KAFKA_SASL_PORT, TEST_KAFKA_SASL_PORT + 3):
        assert listening_addresses(port) == {"127.0.0.1"}, port
        assert all(refuses_connections(address, port) for address in others), port


def test_the_kafka_script_refuses_scram_users_it_cannot_pass_on() -> None:
    for users, complaint, secret in (
        ("beatmon", "user:password", "beatmon"),
        ("beat,mon:hunter2", "may hold only", "hunter2"),
        ("beatmon:hun]ter2", "may hold only", "hun]ter2"),
    ):
        result = subprocess.run(
            [str(KAFKA_SCRIPT), "status"],
            env={**os.environ, "KAFKA_PORT": "1", "KAFKA_SCRAM_USERS": users},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 1
        assert "KAFKA_SCRAM_USERS" in result.stderr and complaint in result.stderr
        assert secret not in result.stderr


# --- MQTT with a password ------------------------------------------------------------


class Subscriber:
    """A paho subscriber to ``prefix/alarms/#`` that logs in."""

    def __init__(self, port: int, prefix: str, password: str) -> None:
        import paho.mqtt.client as paho

        self.payloads: list[bytes] = []
        self.connected: list[int] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.client.username_pw_set(MQTT_USER, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, message: self.payloads.append(
            bytes(message.payload)
        )
        self.prefix = prefix
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.append(int(reason.value))
        if not reason.is_failure:
            client.subscribe(f"{self.prefix}/alarms/#", qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def mqtt_env(port: int, prefix: str, password: str) -> dict[str, str]:
    return {
        "BEATMON_MQTT__ENABLED": "true",
        "BEATMON_MQTT__HOST": "127.0.0.1",
        "BEATMON_MQTT__PORT": str(port),
        "BEATMON_MQTT__TOPIC_PREFIX": prefix,
        "BEATMON_MQTT__USERNAME": MQTT_USER,
        "BEATMON_MQTT__PASSWORD": password,
    }


def alarm_identities(payloads: list[bytes]) -> set[tuple[str, str, int]]:
    events = [decode_alarm_event(p) for p in payloads]
    return {(e.episode_id, e.kind, e.seq) for e in events}


def test_alarms_reach_a_subscriber_through_a_broker_with_passwords(
    kafka_bootstrap: str,
    mqtt_auth_broker: int,
    topics: Topics,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    beats = 300
    prefix = unique_name("beatmon-test")
    subscriber = Subscriber(mqtt_auth_broker, prefix, MQTT_PASSWORD)
    try:
        deadline = time.monotonic() + 10
        while not subscriber.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert subscriber.connected == [0], "the subscriber's login was refused"
        replay(kafka_bootstrap, topics.beats, beats, "--patients", "5")
        monitor = MonitorProcess(
            bundle,
            kafka_bootstrap,
            topics,
            tmp_path / "m.log",
            topics.group,
            env=mqtt_env(mqtt_auth_broker, prefix, MQTT_PASSWORD),
        )
        monitors.append(monitor)
        scored_pairs(kafka_bootstrap, topics.scores, beats)
        assert monitor.stop() == 0

        on_kafka = alarm_identities(
            [r.value for r in read_topic(kafka_bootstrap, topics.alarms, 1)]
        )
        assert on_kafka, "these beats raise alarms"
        deadline = time.monotonic() + 10
        while (
            alarm_identities(subscriber.payloads) != on_kafka
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
    finally:
        subscriber.close()
    assert alarm_identities(subscriber.payloads) == on_kafka
    text = monitor.text()
    assert "mqtt connected" in text and "not authorised" not in text
    assert MQTT_PASSWORD not in text


def test_a_wrong_mqtt_password_is_one_clear_line_and_scoring_goes_on(
    kafka_bootstrap: str,
    mqtt_auth_broker: int,
    topics: Topics,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    beats = 200
    replay(kafka_bootstrap, topics.beats, beats, "--patients", "5")
    started = time.monotonic()
    monitor = MonitorProcess(
        bundle,
        kafka_bootstrap,
        topics,
        tmp_path / "m.log",
        topics.group,
        env=mqtt_env(mqtt_auth_broker, unique_name("beatmon-test"), WRONG_PASSWORD),
    )
    monitors.append(monitor)
    monitor.wait_for_log("not authorised", timeout_s=REFUSAL_LIMIT_S)
    refused_after_s = time.monotonic() - started
    scored_pairs(kafka_bootstrap, topics.scores, beats)
    stopping = time.monotonic()
    assert monitor.stop() == 0
    stop_s = time.monotonic() - stopping
    print(f"mqtt login refused after {refused_after_s:.1f} s; stop {stop_s:.1f} s")

    text = monitor.text()
    refusals = [line for line in text.splitlines() if "not authorised" in line]
    assert len(refusals) == 1, refusals
    assert " ERROR " in refusals[0] and f"username={MQTT_USER}" in refusals[0]
    assert "fix mqtt.username and mqtt.password" in refusals[0]
    assert f"monitor stopped: scored={beats}" in text
    assert "Traceback" not in text and WRONG_PASSWORD not in text
    # Stopping waits up to 5 s for the held alarms to drain (MqttPublisher.close).
    assert stop_s < 12
