"""The monitor's only listener, the metrics endpoint, is on loopback by default.

Opening it to other machines takes an explicit ``metrics.host``, as the
compose settings do for the container network.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from beatmon.settings import MetricsSettings, load_monitor_settings
from monitor.metrics import serve
from tests.services import (
    listening_addresses,
    non_loopback_addresses,
    refuses_connections,
)
from tests.serving_bundles import write_serving_bundle

REPO = Path(__file__).resolve().parents[2]


def test_metrics_default_to_loopback_in_code_and_in_the_shipped_file(
    tmp_path: Path,
) -> None:
    bundle = write_serving_bundle(tmp_path / "bundle", version="listeners")
    shipped = load_monitor_settings(
        REPO / "config" / "beatmon.yaml", env={}, overrides={"monitor.bundle": bundle}
    )
    assert MetricsSettings().host == "127.0.0.1"
    assert shipped.metrics.host == "127.0.0.1"
    # The compose stack opens it on purpose, and says so in its file.
    compose = yaml.safe_load((REPO / "config" / "beatmon.compose.yaml").read_text())
    assert compose["metrics"]["host"] == "0.0.0.0"


def test_the_metrics_server_of_the_default_settings_listens_on_loopback_only() -> None:
    registry = CollectorRegistry()
    with serve(registry, port=0, host=MetricsSettings().host) as server:
        assert server.server.socket.getsockname()[0] == "127.0.0.1"
        assert listening_addresses(server.port) == {"127.0.0.1"}
        with urllib.request.urlopen(server.url, timeout=5) as response:
            assert response.status == 200
        for address in non_loopback_addresses():
            assert refuses_connections(address, server.port), address


def test_an_explicit_wildcard_host_is_reachable_from_other_addresses() -> None:
    # The contrast that shows the checks above can see an open listener.
    registry = CollectorRegistry()
    with serve(registry, port=0, host="0.0.0.0") as server:
        assert listening_addresses(server.port) == {"0.0.0.0"}
        for address in non_loopback_addresses():
            assert not refuses_connections(address, server.port), address
