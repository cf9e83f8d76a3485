"""Changing the model while the monitor scores a live stream from a real Kafka."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from beatmon.messages import alert_id, decode_alert, decode_beat
from models.autoencoder import VARIANTS
from models.bundle import ServingBundle, load_serving_bundle, save_bundle
from models.data import BeatSet
from models.train import TrainConfig, Trained, train
from monitor.alarms import decode_alarm_event
from tests.integration.test_monitor_kafka import (
    MonitorProcess,
    Topics,
    read_topic,
    replay,
    scored_pairs,
)
from tests.services import free_port
from tests.serving_bundles import replace_by_rename, write_manifest
from tests.streams import make_topics

pytestmark = pytest.mark.integration

TOTAL = 2500
SWAP_AFTER = 600
REFUSAL_TOTAL = 1500
RELOAD_INTERVAL_S = "0.25"
# The loop only swaps a reference; loading happened on the watcher's thread.
MAX_SWAP_STALL_MS = 50.0


@pytest.fixture(scope="module")
def models(small_ecg: BeatSet) -> tuple[Trained, Trained]:
    """Two distinct small models: other seeds give other weights and versions."""

    def trained(seed: int) -> Trained:
        return train(
            small_ecg,
            "1",
            VARIANTS["dense"],
            TrainConfig(max_epochs=3, patience=2, seed=seed),
            on_epoch=lambda *_: None,
        )

    return trained(0), trained(1)


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    return make_topics(kafka_bootstrap, partitions=2, prefix="swap")


def start_monitor(
    bundle: Path,
    bootstrap: str,
    topics: Topics,
    log: Path,
    monitors: list[MonitorProcess],
) -> tuple[MonitorProcess, int]:
    """A monitor watching ``bundle`` every 0.25 s, with its metrics on a free port."""
    port = free_port()
    monitor = MonitorProcess(
        bundle,
        bootstrap,
        topics,
        log,
        topics.group,
        env={
            "BEATMON_MONITOR__RELOAD_INTERVAL_S": RELOAD_INTERVAL_S,
            "BEATMON_METRICS__ENABLED": "true",
            "BEATMON_METRICS__PORT": str(port),
        },
    )
    monitors.append(monitor)
    monitor.wait_for_log("partitions assigned: " + topics.beats)
    return monitor, port


def paced_feed(bootstrap: str, topic: str, total: int) -> threading.Thread:
    """``total`` beats at about 250 beats/s from 20 patients, in the background."""
    feeder = threading.Thread(
        target=replay,
        args=(bootstrap, topic, total),
        kwargs={"paced": ("--speed", "10")},
        daemon=True,
    )
    feeder.start()
    return feeder


def scrape(port: int) -> dict[str, float]:
    """``name{labels}`` -> value of every sample the monitor serves."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def latencies_s(records: list[Any]) -> np.ndarray:
    """Per score record: seconds from the beat's production to the record's send."""
    return np.array(
        [r.timestamp / 1000 - json.loads(r.value)["beat_time"] for r in records]
    )


def ms(values: np.ndarray) -> str:
    return (
        f"p50 {1000 * np.quantile(values, 0.5):.1f} ms, p99 "
        f"{1000 * np.quantile(values, 0.99):.1f} ms, max {1000 * values.max():.1f} ms"
    )


def test_model_swapped_mid_stream_scores_every_beat_once_with_one_version(
    kafka_bootstrap: str,
    topics: Topics,
    models: tuple[Trained, Trained],
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    first, second = models
    watched = save_bundle(first, tmp_path / "current")
    model_a = load_serving_bundle(shutil.copytree(watched, tmp_path / "a"))
    monitor, port = start_monitor(
        watched, kafka_bootstrap, topics, tmp_path / "m.log", monitors
    )
    feeder = paced_feed(kafka_bootstrap, topics.beats, TOTAL)

    read_topic(kafka_bootstrap, topics.scores, SWAP_AFTER)
    # What `beatmon train --out <the watched folder>` does: stage, then rename.
    save_bundle(second, watched)
    model_b = load_serving_bundle(watched)
    assert model_b.version != model_a.version
    monitor.wait_for_log("model swapped:")
    feeder.join(timeout=60)
    pairs = scored_pairs(kafka_bootstrap, topics.scores, TOTAL)
    metrics = scrape(port)
    assert monitor.stop() == 0

    # Every beat sent was scored, exactly once.
    beats = {
        (b.patient, b.seq): b
        for b in (
            decode_beat(r.value)
            for r in read_topic(kafka_bootstrap, topics.beats, TOTAL)
        )
    }
    assert len(beats) == TOTAL
    assert sorted(pairs) == sorted(beats)

    # Scores are written in scoring order: all of A, then all of B.
    records = read_topic(kafka_bootstrap, topics.scores, TOTAL)
    scores = [json.loads(r.value) for r in records]
    versions = [s["model_version"] for s in scores]
    switch = versions.index(model_b.version)
    assert SWAP_AFTER <= switch < TOTAL - 100
    assert set(versions[:switch]) == {model_a.version}
    assert set(versions[switch:]) == {model_b.version}

    # Each beat's error and flag are those of the model named with it.
    by_version: dict[str, ServingBundle] = {
        model_a.version: model_a,
        model_b.version: model_b,
    }
    for version, model in by_version.items():
        mine = [s for s in scores if s["model_version"] == version]
        samples = np.stack([beats[s["patient"], s["seq"]].samples for s in mine])
        expected = model.scorer.score(samples)
        got = np.array([s["error"] for s in mine])
        assert np.allclose(got, expected.errors, atol=1e-6), version
        assert [s["flagged"] for s in mine] == expected.flagged.tolist()
    scored_by = {(s["patient"], s["seq"]): s["model_version"] for s in scores}

    # Alerts and alarm events carry the version that scored their beat.
    alerts = [
        decode_alert(r.value) for r in read_topic(kafka_bootstrap, topics.alerts, 1)
    ]
    assert {a.model_version for a in alerts} == set(by_version)
    for alert in alerts:
        version = scored_by[alert.patient, alert.seq]
        assert alert.model_version == version
        assert alert.alert_id == alert_id(version, alert.patient, alert.seq)
        assert alert.threshold == by_version[version].threshold
    events = [
        decode_alarm_event(r.value)
        for r in read_topic(kafka_bootstrap, topics.alarms, 1)
    ]
    assert events
    for event in events:
        assert event.model_version == scored_by[event.patient, event.seq]

    # The loop's own stall at the swap, measured around it in the monitor.
    line = re.search(
        r"model swapped: old_version=(\S+) new_version=(\S+) .*stall_ms=([\d.]+)",
        monitor.text(),
    )
    assert line is not None
    assert line.group(1, 2) == (model_a.version, model_b.version)
    stall_ms = float(line.group(3))
    assert stall_ms < MAX_SWAP_STALL_MS
    assert monitor.text().count("model swapped:") == 1

    # Latency, beat produced to score sent, around the swap and before it.
    latency = latencies_s(records)
    swap_at_s = records[switch].timestamp / 1000
    sent_at = np.array([r.timestamp / 1000 for r in records])
    near = latency[np.abs(sent_at - swap_at_s) <= 1.0]
    before = latency[sent_at < swap_at_s - 1.0]
    print(
        f"\nswap stall {stall_ms:.3f} ms; latency before the swap ({before.size} "
        f"beats): {ms(before)}; within 1 s of it ({near.size} beats): {ms(near)}"
    )
    # Reported, not asserted: on a shared machine these vary with the load,
    # which the stall above does not.
    assert near.size > 100 and before.size > 100

    assert metrics['beatmon_model_reloads_total{result="ok"}'] == 1
    assert metrics['beatmon_model_reloads_total{result="refused"}'] == 0
    info = f'beatmon_model_info{{name="dense",version="{model_b.version}"}}'
    assert metrics[info] == 1
    assert metrics["beatmon_threshold"] == model_b.threshold


def test_an_invalid_bundle_is_refused_and_the_model_keeps_scoring(
    kafka_bootstrap: str,
    topics: Topics,
    models: tuple[Trained, Trained],
    tmp_path: Path,
    monitors: list[MonitorProcess],
) -> None:
    first, second = models
    watched = save_bundle(first, tmp_path / "current")
    version_a = load_serving_bundle(watched).version
    monitor, port = start_monitor(
        watched, kafka_bootstrap, topics, tmp_path / "m.log", monitors
    )
    feeder = paced_feed(kafka_bootstrap, topics.beats, REFUSAL_TOTAL)
    read_topic(kafka_bootstrap, topics.scores, 300)

    # A new bundle whose threshold was edited after it was written.
    tampered = save_bundle(second, tmp_path / "tampered")
    threshold = json.loads((tampered / "threshold.json").read_text())
    threshold["threshold"] *= 10
    (tampered / "threshold.json").write_text(json.dumps(threshold))
    replace_by_rename(tampered, watched)
    monitor.wait_for_log("model bundle refused")
    refused = scrape(port)

    # Then one written half (no serving weights), with a consistent manifest.
    half = save_bundle(second, tmp_path / "half")
    (half / "serving.npz").unlink()
    write_manifest_without(half, "serving.npz")
    replace_by_rename(half, watched)
    deadline = time.monotonic() + 10
    while monitor.text().count("model bundle refused") < 2:
        assert time.monotonic() < deadline, monitor.text()
        time.sleep(0.1)

    feeder.join(timeout=60)
    pairs = scored_pairs(kafka_bootstrap, topics.scores, REFUSAL_TOTAL)
    metrics = scrape(port)
    assert monitor.stop() == 0

    assert len(set(pairs)) == REFUSAL_TOTAL
    scores = [
        json.loads(r.value)
        for r in read_topic(kafka_bootstrap, topics.scores, REFUSAL_TOTAL)
    ]
    assert {s["model_version"] for s in scores} == {version_a}
    lines = [x for x in monitor.text().splitlines() if "model bundle refused" in x]
    assert len(lines) == 2
    assert f"version={version_a} keeps scoring" in lines[0]
    assert "does not match the hash in manifest.json" in lines[0]
    assert "missing serving.npz" in lines[1]
    assert "model swapped" not in monitor.text()
    assert refused['beatmon_model_reloads_total{result="refused"}'] == 1
    assert metrics['beatmon_model_reloads_total{result="refused"}'] == 2
    assert metrics['beatmon_model_reloads_total{result="ok"}'] == 0
    assert metrics[f'beatmon_model_info{{name="dense",version="{version_a}"}}'] == 1


def write_manifest_without(path: Path, name: str) -> None:
    """Rewrite the manifest as if ``name`` had been written, so only its absence
    is wrong: the bundle a writer that stopped half-way would leave."""
    placeholder = path / name
    placeholder.write_bytes(b"")
    write_manifest(path)
    placeholder.unlink()
