"""Real services for integration tests, started once per test session.

Kafka runs through ``scripts/kafka`` on its own port, so a developer's
broker on the default port is left alone. Each test makes its own topics.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = REPO / "scripts" / "kafka"
TEST_KAFKA_PORT = int(os.environ.get("BEATMON_TEST_KAFKA_PORT", "39092"))


def kafka_env(port: int = TEST_KAFKA_PORT) -> dict[str, str]:
    return {**os.environ, "KAFKA_PORT": str(port)}


def kafka(command: str, port: int = TEST_KAFKA_PORT) -> None:
    """Run ``scripts/kafka COMMAND`` for the test broker; fail loudly."""
    result = subprocess.run(
        [str(KAFKA_SCRIPT), command],
        env=kafka_env(port),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"scripts/kafka {command} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="beatmon-tests")
    try:
        admin.create_topics(
            [
                NewTopic(name, num_partitions=partitions, replication_factor=1)
                for name in names
            ]
        )
    finally:
        admin.close()
