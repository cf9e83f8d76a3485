"""Fixtures of the fault matrix, and the table it prints at the end of the run.

Scenarios that stop a broker use brokers of their own
(``BEATMON_TEST_KAFKA_FAULT_PORT``, ``BEATMON_TEST_MQTT_FAULT_PORT``; by
default the session brokers' ports plus 200 and plus 100), so the other
tests never see the outage.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import FaultTable
from tests.services import (
    REPO,
    TEST_KAFKA_FAULT_PORT,
    TEST_MQTT_FAULT_PORT,
    kafka,
)

FAULT_KAFKA_PORT = TEST_KAFKA_FAULT_PORT
FAULT_MQTT_PORT = TEST_MQTT_FAULT_PORT
TABLE_FILE = REPO / "runs" / "faults" / "fault-matrix.md"
TABLE_KEY = pytest.StashKey[FaultTable]()


@pytest.fixture(scope="session")
def fault_table(request: pytest.FixtureRequest) -> Iterator[FaultTable]:
    """The session's fault table; written to runs/faults when the session ends."""
    table = FaultTable()
    request.config.stash[TABLE_KEY] = table
    yield table
    if table.rows:
        TABLE_FILE.parent.mkdir(parents=True, exist_ok=True)
        TABLE_FILE.write_text(table.markdown() + "\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    table = terminalreporter.config.stash.get(TABLE_KEY, None)
    if table is None or not table.rows:
        return
    terminalreporter.section("fault matrix")
    terminalreporter.write_line(table.markdown())
    terminalreporter.write_line(f"(also in {TABLE_FILE.relative_to(REPO)})")


@pytest.fixture(scope="session")
def fault_kafka() -> Iterator[str]:
    """A Kafka broker of the fault matrix's own, which a scenario may stop."""
    kafka("start", port=FAULT_KAFKA_PORT)
    try:
        yield f"127.0.0.1:{FAULT_KAFKA_PORT}"
    finally:
        kafka("stop", port=FAULT_KAFKA_PORT)
