"""Shared fixtures. TensorFlow's environment is set before anything imports it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from beatmon.cli import quiet_tensorflow

quiet_tensorflow()

from models.data import BUILTIN, BeatSet, load_beats  # noqa: E402


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
