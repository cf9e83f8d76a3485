"""Shared fixtures. TensorFlow's environment is set before anything imports it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from beatmon.cli import quiet_tensorflow

quiet_tensorflow()

from models.data import BUILTIN, BeatSet, load_beats  # noqa: E402
from tests.services import PrometheusServer  # noqa: E402

if TYPE_CHECKING:
    from tests.streams import MonitorProcess, Topics


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


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of the PNG at ``path``; fails unless it is a whole PNG."""
    import struct

    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"{path} is not a PNG"
    assert data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    width, height = struct.unpack(">II", data[16:24])
    assert len(data) > 20_000, f"{path} is too small to hold a drawing"
    return int(width), int(height)


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


@pytest.fixture(scope="session")
def bundle(small_ecg: BeatSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dense model bundle, trained once for the session's monitors."""
    from tests.streams import train_small_bundle

    return train_small_bundle(small_ecg, tmp_path_factory.mktemp("monitor") / "bundle")


@pytest.fixture
def topics(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Topics:
    """Fresh topics on the session broker; parametrize indirectly with the
    beat topic's partition count (default 1)."""
    from tests.streams import make_topics

    return make_topics(kafka_bootstrap, partitions=getattr(request, "param", 1))


@pytest.fixture
def monitors() -> Iterator[list[MonitorProcess]]:
    """Monitor processes a test starts; any still running at its end are killed."""
    started: list[MonitorProcess] = []
    yield started
    for monitor in started:
        if monitor.proc.poll() is None:
            monitor.proc.kill()
            monitor.proc.wait()


@pytest.fixture(scope="session")
def mqtt_auth_broker(mqtt_broker: tuple[str, int]) -> Iterator[int]:
    """A real Mosquitto that wants a username and password: its port.

    Its users are ``tests.services.MQTT_USER`` and ``MQTT_PASSWORD``.
    """
    from tests.services import MQTT_PASSWORD, MQTT_USER, TEST_MQTT_AUTH_PORT, mosquitto

    mosquitto("start", TEST_MQTT_AUTH_PORT, users=f"{MQTT_USER}:{MQTT_PASSWORD}")
    try:
        yield TEST_MQTT_AUTH_PORT
    finally:
        mosquitto("stop", TEST_MQTT_AUTH_PORT)
