"""Shared fixtures. TensorFlow's environment is set before anything imports it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from beatmon.cli import quiet_tensorflow

quiet_tensorflow()

from models.data import BUILTIN, BeatSet, load_beats  # noqa: E402
from tests.services import PrometheusServer  # noqa: E402


@pytest.fixture(scope="session")
def ecg5000() -> BeatSet:
    return load_beats(BUILTIN)


@pytest.fixture(scope="session")
def small_ecg(ecg5000: BeatSet) -> BeatSet:
    """400 bundled beats (about 240 normal): enough to train in a few seconds."""
    rows = np.random.default_rng(7).choice(len(ecg5000.beats), 400, replace=False)
    rows.sort()
    assert ecg5000.labels is not None
    return BeatSet(
        beats=ecg5000.beats[rows],
        labels=ecg5000.labels[rows],
        source="ecg5000-sample",
        sha256=f"sample-of-{ecg5000.sha256}",
        layout="ucr",
        default_normal_label="1",
    )


def write_binary_csv(path: Path, data: BeatSet, normal_label: str) -> Path:
    """Write ``data`` in the ecg.csv layout: index column, samples, 1.0/0.0 label."""
    assert data.labels is not None
    binary = np.where(data.labels == normal_label, "1.0", "0.0")
    header = "," + ",".join(str(i) for i in range(data.length + 1))
    lines = [header]
    for row, (beat, label) in enumerate(zip(data.beats, binary, strict=True)):
        lines.append(f"{row}," + ",".join(f"{x:.6f}" for x in beat) + f",{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real single-node Kafka for the whole session, on loopback."""
    from tests.services import TEST_KAFKA_PORT, kafka

    kafka("start")
    try:
        yield f"127.0.0.1:{TEST_KAFKA_PORT}"
    finally:
        kafka("stop")


@pytest.fixture(scope="session")
def prometheus_server() -> Iterator[PrometheusServer]:
    """A real Prometheus for the session, with the rules of config/prometheus.

    It scrapes ``127.0.0.1:<metrics_port>`` every second as the job
    ``beatmon-monitor``; a test serves its metrics on that port. The data
    folder is emptied first, so no series from an earlier session shows up.
    """
    import shutil

    from tests.services import (
        PROMETHEUS_MISSING,
        REPO,
        TEST_PROMETHEUS_PORT,
        free_port,
        prometheus,
        prometheus_test_config,
    )

    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: {PROMETHEUS_MISSING}")
    metrics_port = free_port()
    run_dir = REPO / ".cache" / "prometheus" / f"test-run-{TEST_PROMETHEUS_PORT}"
    env = {
        "PROMETHEUS_PORT": str(TEST_PROMETHEUS_PORT),
        "PROMETHEUS_RUN_DIR": str(run_dir),
        "PROMETHEUS_CONFIG": str(run_dir / "prometheus.yml"),
    }
    prometheus("stop", env)
    shutil.rmtree(run_dir / "data", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "prometheus.yml").write_text(
        prometheus_test_config([f"127.0.0.1:{metrics_port}"])
    )
    prometheus("start", env)
    try:
        yield PrometheusServer(TEST_PROMETHEUS_PORT, metrics_port)
    finally:
        prometheus("stop", env)


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[tuple[str, int]]:
    """A real Mosquitto for the whole session, on loopback: (host, port)."""
    from tests.services import TEST_MQTT_PORT, mosquitto

    mosquitto("install")
    mosquitto("start")
    try:
        yield "127.0.0.1", TEST_MQTT_PORT
    finally:
        mosquitto("stop")
