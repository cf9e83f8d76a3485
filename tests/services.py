"""Real services for integration tests, started once per test session.

Kafka runs through ``scripts/kafka`` and Mosquitto through
``scripts/mosquitto``, each on its own port, so a developer's brokers on the
default ports are left alone. Each test makes its own topics.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = REPO / "scripts" / "kafka"
TEST_KAFKA_PORT = int(os.environ.get("BEATMON_TEST_KAFKA_PORT", "39092"))
MOSQUITTO_SCRIPT = REPO / "scripts" / "mosquitto"
TEST_MQTT_PORT = int(os.environ.get("BEATMON_TEST_MQTT_PORT", "31883"))


def kafka_env(port: int = TEST_KAFKA_PORT) -> dict[str, str]:
    return {**os.environ, "KAFKA_PORT": str(port)}


def run_script(script: Path, command: str, env: Mapping[str, str]) -> None:
    """Run ``scripts/NAME COMMAND`` with ``env``; fail loudly with its output."""
    result = subprocess.run(
        [str(script), command],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"scripts/{script.name} {command} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )


def kafka(
    command: str,
    port: int = TEST_KAFKA_PORT,
    extra_env: Mapping[str, str] | None = None,
) -> None:
    """Run ``scripts/kafka COMMAND`` for the test broker; fail loudly.

    ``extra_env`` adds script settings, such as ``KAFKA_SASL_PORT``.
    """
    run_script(KAFKA_SCRIPT, command, {**kafka_env(port), **(extra_env or {})})


def mosquitto(
    command: str,
    port: int = TEST_MQTT_PORT,
    *,
    users: str | None = None,
    run_dir: Path | None = None,
    persistence: bool = False,
) -> None:
    """Run ``scripts/mosquitto COMMAND`` for a test broker; fail loudly.

    ``users`` is ``MOSQUITTO_USERS`` ("user:password ..."); ``run_dir``
    replaces the per-port folder under ``.cache/mosquitto``.
    """
    env = {**os.environ, "MOSQUITTO_PORT": str(port)}
    env.pop("MOSQUITTO_PASSWORD_FILE", None)
    env["MOSQUITTO_USERS"] = users or ""
    env["MOSQUITTO_PERSISTENCE"] = "true" if persistence else "false"
    if run_dir is not None:
        env["MOSQUITTO_RUN_DIR"] = str(run_dir)
    run_script(MOSQUITTO_SCRIPT, command, env)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topics(
    bootstrap: str,
    names: list[str],
    partitions: int = 1,
    configs: dict[str, str] | None = None,
) -> None:
    """Create ``names``, each with ``partitions`` and the topic ``configs``."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="beatmon-tests")
    try:
        admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs=configs or {},
                )
                for name in names
            ]
        )
    finally:
        admin.close()


# --- Prometheus ----------------------------------------------------------------

PROMETHEUS_SCRIPT = REPO / "scripts" / "prometheus"
PROMETHEUS_CONFIG_DIR = REPO / "config" / "prometheus"
TEST_PROMETHEUS_PORT = int(os.environ.get("BEATMON_TEST_PROMETHEUS_PORT", "39090"))
PROMETHEUS_MISSING = (
    "prometheus and promtool must be on PATH for these tests; install them with "
    "'scripts/prometheus install' as root (or apt-get install prometheus)"
)


def free_port() -> int:
    """A TCP port on loopback that nothing listened on a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prometheus(command: str, env: dict[str, str]) -> None:
    """Run ``scripts/prometheus COMMAND`` with ``env``; fail loudly."""
    run_script(PROMETHEUS_SCRIPT, command, {**os.environ, **env})


def prometheus_test_config(targets: list[str], interval_s: float = 1.0) -> str:
    """config/prometheus/prometheus.yml, scraping ``targets`` every ``interval_s``.

    The job name and the rules stay those of the real file.
    """
    import yaml

    config = yaml.safe_load((PROMETHEUS_CONFIG_DIR / "prometheus.yml").read_text())
    every = f"{int(interval_s * 1000)}ms"
    config["global"].update(
        scrape_interval=every, scrape_timeout=every, evaluation_interval=every
    )
    config["rule_files"] = [
        str((PROMETHEUS_CONFIG_DIR / name).resolve()) for name in config["rule_files"]
    ]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": targets}]
    return str(yaml.safe_dump(config, sort_keys=False))


class PrometheusServer:
    """A running Prometheus, and the loopback port it scrapes for metrics."""

    def __init__(self, port: int, metrics_port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.metrics_port = metrics_port

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer."""
        import json
        import urllib.parse
        import urllib.request

        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus answered {body} to {url}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one element) of ``expr`` now."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])


# --- brokers that want a login ---------------------------------------------------

# A Kafka of its own with a SASL_PLAINTEXT listener (SCRAM-SHA-256 and -512):
# PLAINTEXT on this port, the controller on the next, SASL on the one after.
TEST_KAFKA_SASL_PORT = int(
    os.environ.get("BEATMON_TEST_KAFKA_SASL_PORT", str(TEST_KAFKA_PORT + 100))
)
SCRAM_USER, SCRAM_PASSWORD = "beatmon", "scram-test-horse-battery"
# A Mosquitto that wants a username and password.
TEST_MQTT_AUTH_PORT = int(
    os.environ.get("BEATMON_TEST_MQTT_AUTH_PORT", str(TEST_MQTT_PORT + 1))
)
MQTT_USER, MQTT_PASSWORD = "beatmon", "right-horse-battery"


# The fault matrix's own brokers, which it stops and starts mid-stream:
# a Kafka (the controller on the next port) and a Mosquitto.
TEST_KAFKA_FAULT_PORT = int(
    os.environ.get("BEATMON_TEST_KAFKA_FAULT_PORT", str(TEST_KAFKA_PORT + 200))
)
TEST_MQTT_FAULT_PORT = int(
    os.environ.get("BEATMON_TEST_MQTT_FAULT_PORT", str(TEST_MQTT_PORT + 100))
)


def sasl_kafka_env() -> dict[str, str]:
    """scripts/kafka settings of the SASL test broker."""
    return {
        "KAFKA_SASL_PORT": str(TEST_KAFKA_SASL_PORT + 2),
        "KAFKA_SCRAM_USERS": f"{SCRAM_USER}:{SCRAM_PASSWORD}",
    }


# --- listening sockets -------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port``, from Linux /proc.

    An IPv4-mapped IPv6 address counts as the IPv4 address it maps.
    """
    import ipaddress
    import sys

    found: set[str] = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.is_file():
            continue
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address_hex)
            if sys.byteorder == "little":
                # The kernel prints each 32-bit word in host byte order.
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(raw)
            # Java listens on IPv4 addresses through IPv4-mapped IPv6 ones.
            mapped = getattr(address, "ipv4_mapped", None)
            found.add(str(mapped or address))
    return found


def non_loopback_addresses() -> list[str]:
    """This machine's IPv4 addresses that are not loopback (may be none)."""
    import contextlib
    import ipaddress
    import socket

    found: set[str] = set()
    with contextlib.suppress(OSError):
        found.update(socket.gethostbyname_ex(socket.gethostname())[2])
    # A UDP connect sends nothing; it only picks the outgoing address.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))
            found.add(probe.getsockname()[0])
        except OSError:
            pass
    return sorted(
        address
        for address in found
        if not ipaddress.ip_address(address).is_loopback
        and not ipaddress.ip_address(address).is_unspecified
    )


def refuses_connections(address: str, port: int) -> bool:
    """True when nothing accepts a TCP connection at ``address:port``."""
    import socket

    try:
        with socket.create_connection((address, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
