"""The brokers that scripts/ start for the demo and the tests listen on loopback.

Each check reads the listening sockets from /proc and, when this machine has
an address besides loopback, tries to connect through it.
"""

from __future__ import annotations

import pytest

from tests.services import (
    TEST_KAFKA_PORT,
    PrometheusServer,
    listening_addresses,
    non_loopback_addresses,
    refuses_connections,
)

pytestmark = pytest.mark.integration


def test_kafka_mosquitto_and_prometheus_listen_on_loopback_only(
    kafka_bootstrap: str,
    mqtt_broker: tuple[str, int],
    mqtt_auth_broker: int,
    prometheus_server: PrometheusServer,
) -> None:
    ports = {
        "kafka": TEST_KAFKA_PORT,
        "kafka controller": TEST_KAFKA_PORT + 1,
        "mosquitto": mqtt_broker[1],
        "mosquitto with passwords": mqtt_auth_broker,
        "prometheus": int(prometheus_server.url.rsplit(":", 1)[1]),
    }
    others = non_loopback_addresses()
    for name, port in ports.items():
        assert listening_addresses(port) == {"127.0.0.1"}, name
        for address in others:
            assert refuses_connections(address, port), f"{name} at {address}:{port}"
