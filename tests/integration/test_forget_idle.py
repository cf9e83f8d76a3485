"""A patient whose beats stopped long ago leaves the monitor's saved state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from beatmon.messages import encode_beat
from models.bundle import load_bundle
from models.data import BeatSet
from models.scoring import keras_errors
from monitor.checkpoint import bucket_of
from tests.streams import MonitorProcess, Topics, read_topic

pytestmark = pytest.mark.integration

T0 = 1_764_763_200.0


def test_a_patient_gone_for_forget_after_s_is_dropped_from_the_alarm_state(
    kafka_bootstrap: str,
    topics: Topics,
    bundle: Path,
    ecg5000: BeatSet,
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    # The beat the model finds most normal, so that no alarm stays open: a
    # patient with an open alarm is never forgotten.
    normal = ecg5000.beats[ecg5000.normal_mask("1")][:500]
    lab = load_bundle(bundle)
    samples = normal[int(np.argmin(keras_errors(lab.model, lab.scaler, normal)))]
    monitor = MonitorProcess(
        bundle, kafka_bootstrap, topics, tmp_path / "m.log", topics.group
    )
    monitors.append(monitor)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    # "gone" sends ten beats, which the next checkpoint saves; then "stays"
    # goes on for 2,000 s of beat time, well past forget_after_s (900 s).
    for seq in range(10):
        value = encode_beat("gone", seq, T0 + seq, samples)
        producer.send(topics.beats, key=b"gone", value=value)
    producer.flush()
    assert len(read_topic(kafka_bootstrap, topics.alarm_state, 1)) >= 1
    for seq in range(2000):
        value = encode_beat("stays", seq, T0 + seq, samples)
        producer.send(topics.beats, key=b"stays", value=value)
    producer.flush()
    producer.close()
    assert len(read_topic(kafka_bootstrap, topics.scores, 2010)) == 2010
    assert monitor.stop() == 0
    assert "flagged=0 " in monitor.text()
    assert "forgot 1 patients with no beat for 900 s of beat time" in monitor.text()

    latest: dict[bytes, list[str]] = {}
    ever: set[str] = set()
    for record in read_topic(kafka_bootstrap, topics.alarm_state, 1):
        patients = [entry["patient"] for entry in json.loads(record.value)["patients"]]
        latest[record.key] = patients
        ever.update(patients)
    assert ever == {"gone", "stays"}
    key = f"0:{bucket_of('gone')}".encode()
    assert "gone" not in latest[key]
    assert "stays" in latest[f"0:{bucket_of('stays')}".encode()]
