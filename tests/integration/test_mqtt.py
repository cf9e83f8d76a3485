"""The MQTT publisher against real Mosquitto brokers and real subscribers.

Each test uses its own topic prefix and client ids. The outage tests stop and
start a broker of their own, which keeps persistent sessions across restarts,
so a subscriber that subscribed before the outage receives everything the
publisher sends after it, whenever each of them reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiomqtt
import pytest

from monitor.mqtt import MqttPublisher, MqttSettings
from tests.services import (
    MQTT_PASSWORD,
    MQTT_USER,
    TEST_MQTT_PORT,
    mosquitto,
    unique_name,
)

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
WAIT_S = 10.0
OUTAGE_PORT = TEST_MQTT_PORT + 2


@dataclass(frozen=True)
class Broker:
    port: int
    run_dir: Path

    def stop(self) -> None:
        mosquitto("stop", self.port, run_dir=self.run_dir, persistence=True)

    def start(self) -> None:
        mosquitto("start", self.port, run_dir=self.run_dir, persistence=True)


@pytest.fixture(scope="module")
def outage_broker(
    mqtt_broker: tuple[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    """A broker of its own, with persistence, for tests that stop it."""
    broker = Broker(OUTAGE_PORT, tmp_path_factory.mktemp("mosquitto-outage"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def make_settings(port: int, **overrides: object) -> MqttSettings:
    settings = MqttSettings(
        host=HOST,
        port=port,
        client_id=unique_name("beatmon-test-pub"),
        topic_prefix=unique_name("beatmon-test"),
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
        keepalive_s=5,
    )
    return replace(settings, **overrides)  # type: ignore[arg-type]


def wait_until(
    condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


async def receive(
    client: aiomqtt.Client, count: int, timeout_s: float = WAIT_S
) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    try:
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                got.append(message)
                if len(got) == count:
                    break
    except TimeoutError:
        pytest.fail(f"received {len(got)} of {count} messages in {timeout_s} s")
    return got


async def nothing_more(client: aiomqtt.Client, quiet_s: float = 0.3) -> None:
    try:
        async with asyncio.timeout(quiet_s):
            async for message in client.messages:
                pytest.fail(f"unexpected extra message on {message.topic}")
    except TimeoutError:
        pass


def by_patient(messages: list[aiomqtt.Message]) -> dict[str, list[bytes]]:
    grouped: dict[str, list[bytes]] = defaultdict(list)
    for message in messages:
        assert isinstance(message.payload, bytes)
        grouped[str(message.topic).rsplit("/", 1)[1]].append(message.payload)
    return dict(grouped)


def test_alarms_arrive_in_order_and_the_status_is_retained(
    mqtt_broker: tuple[str, int],
) -> None:
    host, port = mqtt_broker
    settings = make_settings(port)
    patients = ("p1", "p2", "p3")
    per_patient = 100

    async def scenario() -> None:
        async with aiomqtt.Client(
            host, port, identifier=unique_name("beatmon-test-sub")
        ) as subscriber:
            await subscriber.subscribe(f"{settings.topic_prefix}/alarms/#", qos=1)
            publisher = MqttPublisher(settings)
            publisher.start()
            for n in range(per_patient):
                for patient in patients:
                    publisher.publish_alarm(patient, f"{patient}:{n}".encode())
            publisher.set_status("p1", b"old")
            publisher.set_status("p1", b"stable")
            # close() drains the buffer before it disconnects.
            publisher.close(timeout_s=WAIT_S)
            assert publisher.buffered == 0
            assert publisher.dropped_total == 0
            assert publisher.published_total >= len(patients) * per_patient + 1

            got = await receive(subscriber, len(patients) * per_patient)
            await nothing_more(subscriber)
        assert all(m.qos == 1 and not m.retain for m in got)
        assert by_patient(got) == {
            p: [f"{p}:{n}".encode() for n in range(per_patient)] for p in patients
        }

        # A subscriber that arrives later still gets the newest status.
        async with aiomqtt.Client(
            host, port, identifier=unique_name("beatmon-test-late")
        ) as late:
            await late.subscribe(f"{settings.topic_prefix}/status/#", qos=1)
            (status,) = await receive(late, 1)
        assert str(status.topic) == f"{settings.topic_prefix}/status/p1"
        assert status.retain
        assert status.payload == b"stable"

    asyncio.run(scenario())


async def subscribe_persistently(port: int, topic: str) -> str:
    """Subscribe with a persistent session, disconnect, and return its client id."""
    identifier = unique_name("beatmon-test-sub")
    async with aiomqtt.Client(
        HOST, port, identifier=identifier, clean_session=False
    ) as subscriber:
        await subscriber.subscribe(topic, qos=1)
    return identifier


def publish_during_outage(
    broker: Broker, publisher: MqttPublisher, count: int
) -> list[float]:
    """Stop the broker, queue ``count`` alarms, start it; each call's seconds."""
    publisher.publish_alarm("p0", b"before")
    wait_until(lambda: publisher.published_total == 1, "the first alarm")
    broker.stop()
    wait_until(lambda: not publisher.connected, "the publisher to notice the outage")

    call_s = []
    for n in range(count):
        started = time.perf_counter()
        publisher.publish_alarm(f"p{n % 3}", f"{n}".encode())
        call_s.append(time.perf_counter() - started)

    # Let a few reconnect attempts fail before the broker comes back.
    time.sleep(0.3)
    assert not publisher.connected
    broker.start()
    return call_s


def test_alarms_buffered_during_an_outage_all_arrive(
    outage_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="monitor.mqtt")
    settings = make_settings(outage_broker.port, buffer_size=500)
    count = 300
    subscriber_id = asyncio.run(
        subscribe_persistently(outage_broker.port, f"{settings.topic_prefix}/#")
    )

    with MqttPublisher(settings) as publisher:
        call_s = publish_during_outage(outage_broker, publisher, count)
        # Blocking on the network would take seconds; an append takes microseconds.
        assert max(call_s) < 0.05, "publish_alarm blocked while the broker was down"
        assert sum(call_s) < 0.1
        wait_until(lambda: publisher.published_total == count + 1, "the backlog")
        assert (publisher.buffered, publisher.dropped_total) == (0, 0)

    async def collect() -> list[aiomqtt.Message]:
        async with aiomqtt.Client(
            HOST, outage_broker.port, identifier=subscriber_id, clean_session=False
        ) as subscriber:
            got = await receive(subscriber, count + 1)
            await nothing_more(subscriber)
            return got

    expected = {
        f"p{k}": [f"{n}".encode() for n in range(k, count, 3)] for k in range(3)
    }
    expected["p0"].insert(0, b"before")
    assert by_patient(asyncio.run(collect())) == expected

    # One line per state change, not one per failed attempt.
    records = [r for r in caplog.records if r.name == "monitor.mqtt"]
    lost = [r for r in records if "connection lost" in r.getMessage()]
    retries = [r for r in records if "still down" in r.getMessage()]
    connected = [r for r in records if r.getMessage().startswith("mqtt connected")]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING
    assert len(connected) == 2
    assert all(r.levelno == logging.DEBUG for r in retries)
    assert not [r for r in records if "unreachable" in r.getMessage()]


def test_overflow_drops_the_oldest_alarms_and_counts_them(
    outage_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="monitor.mqtt")
    bound, count = 20, 50
    settings = make_settings(outage_broker.port, buffer_size=bound)
    subscriber_id = asyncio.run(
        subscribe_persistently(outage_broker.port, f"{settings.topic_prefix}/#")
    )

    with MqttPublisher(settings) as publisher:
        publish_during_outage(outage_broker, publisher, count)
        assert publisher.dropped_total == count - bound
        wait_until(lambda: publisher.published_total == bound + 1, "the backlog")

    async def collect() -> list[aiomqtt.Message]:
        async with aiomqtt.Client(
            HOST, outage_broker.port, identifier=subscriber_id, clean_session=False
        ) as subscriber:
            got = await receive(subscriber, bound + 1)
            await nothing_more(subscriber)
            return got

    got = asyncio.run(collect())
    payloads = [m.payload for m in got]
    assert payloads == [b"before"] + [
        f"{n}".encode() for n in range(count - bound, count)
    ]

    drops = [r.getMessage() for r in caplog.records if "buffer full" in r.getMessage()]
    assert drops, "no warning about the dropped alarms"
    assert f"dropped_total={count - bound}" in drops[-1]


def test_the_right_password_is_accepted(mqtt_auth_broker: int) -> None:
    auth_broker = mqtt_auth_broker
    settings = make_settings(auth_broker, username=MQTT_USER, password=MQTT_PASSWORD)

    async def scenario() -> aiomqtt.Message:
        async with aiomqtt.Client(
            HOST,
            auth_broker,
            username=MQTT_USER,
            password=MQTT_PASSWORD,
            identifier=unique_name("beatmon-test-sub"),
        ) as subscriber:
            await subscriber.subscribe(f"{settings.topic_prefix}/alarms/#", qos=1)
            with MqttPublisher(settings) as publisher:
                publisher.publish_alarm("p1", b"alarm")
                (message,) = await receive(subscriber, 1)
            return message

    message = asyncio.run(scenario())
    assert message.payload == b"alarm"


def test_a_wrong_password_gives_one_clear_error_and_no_hang(
    mqtt_auth_broker: int, caplog: pytest.LogCaptureFixture
) -> None:
    auth_broker = mqtt_auth_broker
    caplog.set_level(logging.DEBUG, logger="monitor.mqtt")
    wrong = "not-the-password"
    settings = make_settings(
        auth_broker, username=MQTT_USER, password=wrong, backoff_max_s=0.2
    )
    publisher = MqttPublisher(settings)
    publisher.start()
    publisher.publish_alarm("p1", b"alarm")

    def refused() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "not authorised" in r.getMessage()]

    wait_until(lambda: bool(refused()), "the login error", timeout_s=3.0)
    time.sleep(1.0)  # several more refused attempts
    started = time.monotonic()
    publisher.close(timeout_s=0.5)
    close_s = time.monotonic() - started

    (error,) = refused()
    assert error.levelno == logging.ERROR
    assert f"{HOST}:{auth_broker}" in error.getMessage()
    assert not error.exc_info
    assert close_s < 3.0
    assert not publisher.connected
    mqtt_records = [r for r in caplog.records if r.name.startswith("monitor.mqtt")]
    assert sum(r.levelno >= logging.WARNING for r in mqtt_records) == 2
    assert "1 messages undelivered" in mqtt_records[-1].getMessage()
    assert not [r for r in caplog.records if wrong in r.getMessage()]


def test_an_unreachable_broker_is_reported_once_and_close_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="monitor.mqtt")
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        free_port = probe.getsockname()[1]
    settings = make_settings(free_port, backoff_max_s=0.1)
    publisher = MqttPublisher(settings)
    publisher.start()
    publisher.publish_alarm("p1", b"alarm")
    time.sleep(0.5)
    started = time.monotonic()
    publisher.close(timeout_s=0.3)
    assert time.monotonic() - started < 2.0
    assert publisher.buffered == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "broker unreachable" in warnings[0]
    assert f"port={free_port}" in warnings[0]
    assert "1 messages undelivered" in warnings[1]


def test_an_outage_in_the_middle_of_a_stream_loses_nothing(
    outage_broker: Broker,
) -> None:
    settings = make_settings(outage_broker.port, buffer_size=1000)
    count, interval_s = 600, 0.002
    subscriber_id = asyncio.run(
        subscribe_persistently(outage_broker.port, f"{settings.topic_prefix}/#")
    )

    # The monitor thread's part: a steady stream, whatever the broker does.
    with MqttPublisher(settings) as publisher:

        def monitor_loop() -> None:
            for n in range(count):
                publisher.publish_alarm("p1", f"{n}".encode())
                time.sleep(interval_s)

        stream = threading.Thread(target=monitor_loop, name="test-alarm-stream")
        stream.start()
        wait_until(lambda: publisher.published_total > 50, "the stream to flow")
        outage_broker.stop()
        time.sleep(0.2)
        outage_broker.start()
        stream.join()
        wait_until(lambda: publisher.buffered == 0, "the backlog")
        assert publisher.dropped_total == 0

    async def collect_all() -> list[bytes]:
        seen: list[bytes] = []
        async with aiomqtt.Client(
            HOST, outage_broker.port, identifier=subscriber_id, clean_session=False
        ) as subscriber:
            async with asyncio.timeout(WAIT_S):
                async for message in subscriber.messages:
                    assert isinstance(message.payload, bytes)
                    seen.append(message.payload)
                    if len(set(seen)) == count:
                        break
        return seen

    seen = asyncio.run(collect_all())
    # At least once: a message whose PUBACK was lost may come twice, but the
    # first copies arrive in the order they were published.
    first_copies = list(dict.fromkeys(seen))
    assert first_copies == [f"{n}".encode() for n in range(count)]


def test_unacknowledged_alarms_are_sent_again_after_a_timeout(
    outage_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="monitor.mqtt")
    settings = make_settings(outage_broker.port, timeout_s=0.5, backoff_max_s=0.2)
    count = 100
    subscriber_id = asyncio.run(
        subscribe_persistently(outage_broker.port, f"{settings.topic_prefix}/#")
    )
    broker_pid = int((outage_broker.run_dir / "mosquitto.pid").read_text())

    with MqttPublisher(settings) as publisher:
        publisher.publish_alarm("p1", b"before")
        wait_until(lambda: publisher.published_total == 1, "the first alarm")

        # A frozen broker takes the bytes but sends no PUBACK: every publish
        # in flight times out and must go back into the buffer.
        os.kill(broker_pid, signal.SIGSTOP)
        try:
            for n in range(count):
                publisher.publish_alarm("p1", f"{n}".encode())
            wait_until(lambda: not publisher.connected, "the PUBACK timeout")
            assert publisher.buffered == count
        finally:
            os.kill(broker_pid, signal.SIGCONT)
        wait_until(lambda: publisher.buffered == 0, "the backlog")

    async def collect_all() -> list[bytes]:
        seen: list[bytes] = []
        async with aiomqtt.Client(
            HOST, outage_broker.port, identifier=subscriber_id, clean_session=False
        ) as subscriber:
            async with asyncio.timeout(WAIT_S):
                async for message in subscriber.messages:
                    assert isinstance(message.payload, bytes)
                    seen.append(message.payload)
                    if len(set(seen)) == count + 1:
                        break
        return seen

    first_copies = list(dict.fromkeys(asyncio.run(collect_all())))
    assert first_copies == [b"before"] + [f"{n}".encode() for n in range(count)]
    lost = [
        r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()
    ]
    assert len(lost) == 1
    assert "timed out" in lost[0]
