"""The MQTT publisher's pure logic: buffer, overflow, coalescing, backoff, config."""

from __future__ import annotations

import logging
import random

import pytest

from beatmon.errors import BeatmonError, ConfigError, TransportError
from monitor.mqtt import (
    DropLog,
    MqttPublisher,
    MqttSettings,
    OutboundBuffer,
    Outgoing,
    backoff_delay_s,
    topic_for,
    topic_safe,
)


def alarm(n: int, patient: str = "p1") -> Outgoing:
    return Outgoing(f"beatmon/alarms/{patient}", f"a{n}".encode())


def status(patient: str, text: str) -> Outgoing:
    return Outgoing(
        f"beatmon/status/{patient}", text.encode(), retain=True, patient=patient
    )


def payloads(messages: list[Outgoing]) -> list[bytes]:
    return [m.payload for m in messages]


class CeilingRandom(random.Random):
    """Always draws the top of the range: the backoff's upper bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_alarms_come_out_in_order() -> None:
    buffer = OutboundBuffer(10)
    for n in range(5):
        buffer.put_alarm(alarm(n))
    assert payloads(buffer.take(3)) == [b"a0", b"a1", b"a2"]
    assert payloads(buffer.take(10)) == [b"a3", b"a4"]
    assert buffer.take(10) == []
    assert len(buffer) == 0


def test_a_full_buffer_drops_the_oldest_alarm_and_counts_it() -> None:
    buffer = OutboundBuffer(3)
    for n in range(7):
        buffer.put_alarm(alarm(n))
    assert len(buffer) == 3
    assert buffer.dropped_total == 4
    assert payloads(buffer.take(10)) == [b"a4", b"a5", b"a6"]


def test_put_reports_whether_the_buffer_was_empty() -> None:
    buffer = OutboundBuffer(3)
    assert buffer.put_alarm(alarm(0)) is True
    assert buffer.put_alarm(alarm(1)) is False
    assert buffer.put_status(status("p1", "ok")) is False
    buffer.take(10)
    assert buffer.put_status(status("p1", "ok")) is True


def test_statuses_are_coalesced_per_patient_and_keep_their_place() -> None:
    buffer = OutboundBuffer(10)
    buffer.put_status(status("p1", "first"))
    buffer.put_status(status("p2", "only"))
    buffer.put_status(status("p1", "newest"))
    assert len(buffer) == 2
    assert buffer.dropped_total == 0
    assert payloads(buffer.take(10)) == [b"newest", b"only"]


def test_statuses_do_not_crowd_out_alarms() -> None:
    buffer = OutboundBuffer(4)
    for patient in ("p1", "p2", "p3", "p4"):
        buffer.put_status(status(patient, "ok"))
    for n in range(4):
        buffer.put_alarm(alarm(n))
    assert buffer.dropped_total == 0
    assert len(buffer) == 8

    # A fifth patient's status pushes out the oldest status, not an alarm.
    buffer.put_status(status("p5", "ok"))
    assert buffer.dropped_total == 1
    taken = buffer.take(100)
    assert payloads([m for m in taken if not m.retain]) == [b"a0", b"a1", b"a2", b"a3"]
    assert [m.patient for m in taken if m.retain] == ["p2", "p3", "p4", "p5"]


def test_take_gives_alarms_priority_but_statuses_a_share() -> None:
    buffer = OutboundBuffer(1000)
    for n in range(100):
        buffer.put_alarm(alarm(n))
    for n in range(30):
        buffer.put_status(status(f"p{n}", "ok"))
    batch = buffer.take(20)
    assert len(batch) == 20
    assert sum(m.retain for m in batch) == 5
    assert payloads(batch[:15]) == [f"a{n}".encode() for n in range(15)]

    # With no alarms waiting, statuses fill the whole batch.
    buffer = OutboundBuffer(1000)
    for n in range(30):
        buffer.put_status(status(f"p{n}", "ok"))
    assert len(buffer.take(20)) == 20


def test_requeue_puts_unacknowledged_messages_back_in_front() -> None:
    buffer = OutboundBuffer(10)
    for n in range(5):
        buffer.put_alarm(alarm(n))
    in_flight = buffer.take(3)
    buffer.put_alarm(alarm(5))
    buffer.requeue(in_flight[1:])
    assert payloads(buffer.take(10)) == [b"a1", b"a2", b"a3", b"a4", b"a5"]


def test_requeue_keeps_a_newer_status_and_drops_the_stale_one() -> None:
    buffer = OutboundBuffer(10)
    buffer.put_status(status("p1", "old"))
    buffer.put_status(status("p2", "p2-old"))
    in_flight = buffer.take(10)
    buffer.put_status(status("p1", "new"))
    buffer.requeue(in_flight)
    assert payloads(buffer.take(10)) == [b"p2-old", b"new"]
    assert buffer.dropped_total == 0


def test_requeue_beyond_the_bound_drops_the_oldest() -> None:
    buffer = OutboundBuffer(4)
    for n in range(4):
        buffer.put_alarm(alarm(n))
    in_flight = buffer.take(2)
    buffer.put_alarm(alarm(4))
    buffer.put_alarm(alarm(5))
    buffer.requeue(in_flight)
    assert buffer.dropped_total == 2
    assert payloads(buffer.take(10)) == [b"a2", b"a3", b"a4", b"a5"]


def test_backoff_doubles_up_to_the_cap() -> None:
    rng = CeilingRandom()
    ceilings = [backoff_delay_s(a, 0.5, 30.0, rng) for a in range(10)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    assert backoff_delay_s(10_000, 0.5, 30.0, rng) == 30.0


def test_backoff_is_jittered_within_its_bounds() -> None:
    rng = random.Random(3)
    for attempt in range(12):
        ceiling_s = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay_s(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling_s for d in delays)
        # Full jitter: the draws spread over the whole range, not one value.
        assert max(delays) - min(delays) > ceiling_s / 2


def test_drop_log_reports_at_most_once_per_interval() -> None:
    log = DropLog(interval_s=5.0)
    assert log.due(100.0, 0) == 0
    assert log.due(100.0, 3) == 3
    assert log.due(101.0, 10) == 0
    assert log.due(104.9, 12) == 0
    assert log.due(105.0, 12) == 9
    assert log.due(200.0, 12) == 0
    assert log.due(200.5, 13) == 1
    assert log.due(201.0, 15, force=True) == 2
    assert log.logged_total == 15


def test_topics() -> None:
    assert topic_for("beatmon", "alarms", "p-17") == "beatmon/alarms/p-17"
    assert topic_for("site/a", "status", "p.1") == "site/a/status/p.1"
    for bad in ("", "a/b", "a+", "#", "x\x00"):
        with pytest.raises(BeatmonError, match="topic level"):
            topic_for("beatmon", "alarms", bad)
    assert topic_safe("ward/3+#") == "ward_3__"
    assert topic_safe("") == "_"


def test_settings_hide_the_password_and_validate() -> None:
    settings = MqttSettings(username="monitor", password="hunter2")
    assert "hunter2" not in repr(settings)
    assert "monitor" in repr(settings)
    assert settings.tls_parameters() is None

    tls = MqttSettings(tls=True, ca_file="ca.pem", cert_file="c.pem", key_file="k.pem")
    params = tls.tls_parameters()
    assert params is not None
    assert (params.ca_certs, params.certfile, params.keyfile) == (
        "ca.pem",
        "c.pem",
        "k.pem",
    )

    bad: list[dict[str, object]] = [
        {"port": 0},
        {"buffer_size": 0},
        {"backoff_initial_s": 0.0},
        {"backoff_initial_s": 5.0, "backoff_max_s": 1.0},
        {"topic_prefix": "beat/#"},
        {"topic_prefix": ""},
        {"password": "x"},
        {"ca_file": "ca.pem"},
        {"tls": True, "key_file": "k.pem"},
        {"client_id": ""},
    ]
    for kwargs in bad:
        with pytest.raises(ConfigError):
            MqttSettings(**kwargs)  # type: ignore[arg-type]


def test_missing_tls_files_fail_at_start() -> None:
    publisher = MqttPublisher(MqttSettings(tls=True, ca_file="/nonexistent/ca.pem"))
    with pytest.raises(ConfigError, match="ca_file"):
        publisher.start()


def test_publisher_buffers_before_start_and_refuses_after_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = MqttPublisher(MqttSettings(buffer_size=2, topic_prefix="t"))
    for n in range(3):
        publisher.publish_alarm("p1", b"%d" % n)
    publisher.set_status("p1", b"s")
    assert (publisher.buffered, publisher.dropped_total) == (3, 1)
    assert (publisher.connected, publisher.published_total) == (False, 0)

    with caplog.at_level(logging.INFO, logger="monitor.mqtt"):
        publisher.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("3 messages undelivered" in m for m in messages)
    assert any("dropped the 1 oldest" in m for m in messages)
    with pytest.raises(TransportError, match="closed"):
        publisher.publish_alarm("p1", b"late")
