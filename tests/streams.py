"""The monitor and the replay producer run as an operator runs them, and what
they wrote read back from Kafka.

Shared by the integration tests and the fault matrix: a monitor or a replay
is a real ``beatmon`` child process with its own log file; topics are made
fresh for every test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from beatmon.cli import main
from beatmon.messages import Beat
from models.autoencoder import VARIANTS
from models.bundle import load_bundle, save_bundle
from models.data import BeatSet
from models.scoring import keras_errors
from models.train import TrainConfig, train
from monitor.alarms import AlarmPolicy, AlarmSettings, decode_alarm_event
from tests.services import create_topics, unique_name

WAIT_S = 60.0


def beatmon_command() -> list[str]:
    """The ``beatmon`` console script of this environment."""
    script = Path(sys.executable).with_name("beatmon")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "beatmon.cli"]


def train_small_bundle(data: BeatSet, out: Path) -> Path:
    """A dense model trained for a few epochs on ``data``: enough to score."""
    trained = train(
        data,
        "1",
        VARIANTS["dense"],
        TrainConfig(max_epochs=3, patience=2),
        on_epoch=lambda *_: None,
    )
    return save_bundle(trained, out)


@dataclass
class Topics:
    beats: str
    alerts: str
    dead: str
    scores: str
    alarms: str
    alarm_state: str
    # Each test's monitors form a group of their own: a member killed in one
    # test must not hold up the next test's rebalance.
    group: str


def make_topics(bootstrap: str, partitions: int = 1, prefix: str = "mon") -> Topics:
    """Fresh topics: the beat topic with ``partitions``, the outputs with one."""
    base = unique_name(prefix)
    names = Topics(
        f"{base}.beats",
        f"{base}.alerts",
        f"{base}.dlq",
        f"{base}.scores",
        f"{base}.alarms",
        f"{base}.alarm-state",
        f"{base}.monitors",
    )
    create_topics(bootstrap, [names.beats], partitions=partitions)
    create_topics(bootstrap, [names.alerts, names.dead, names.scores, names.alarms])
    return names


class MonitorProcess:
    """``beatmon monitor`` in a child process, as an operator would run it.

    With ``metrics_port`` it serves Prometheus metrics there; otherwise
    metrics and MQTT are off unless ``env`` turns them on.
    """

    def __init__(
        self,
        bundle: Path,
        bootstrap: str,
        topics: Topics,
        log: Path,
        group: str,
        *extra: str,
        env: dict[str, str] | None = None,
        metrics_port: int | None = None,
    ) -> None:
        env = env or {}
        self.log = log
        self.metrics_port = metrics_port
        self.handle = log.open("ab")
        metrics_env = (
            {
                "BEATMON_METRICS__ENABLED": "true",
                "BEATMON_METRICS__PORT": str(metrics_port),
            }
            if metrics_port is not None
            else {}
        )
        self.proc = subprocess.Popen(
            [
                *beatmon_command(),
                "monitor",
                "--bundle",
                str(bundle),
                "--bootstrap",
                bootstrap,
                "--beats-topic",
                topics.beats,
                "--alerts-topic",
                topics.alerts,
                "--dead-letter-topic",
                topics.dead,
                "--scores-topic",
                topics.scores,
                "--group",
                group,
                "--report-every",
                "1",
                *extra,
            ],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "BEATMON_TOPICS__ALARMS": topics.alarms,
                "BEATMON_TOPICS__ALARM_STATE": topics.alarm_state,
                "BEATMON_MQTT__ENABLED": "false",
                "BEATMON_METRICS__ENABLED": "false",
                **metrics_env,
                **env,
            },
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(f"monitor exited early:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {needle!r} in the monitor log:\n{self.text()}"
                )
            time.sleep(0.1)

    def scrape(self) -> dict[str, float]:
        """The monitor's metrics now; see :func:`scrape_metrics`."""
        if self.metrics_port is None:
            raise AssertionError("this monitor serves no metrics")
        return scrape_metrics(self.metrics_port)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout_s)
        self.handle.close()
        return code


class ReplayProcess:
    """``beatmon replay`` in a child process: ``limit`` beats of the bundled set."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        limit: int,
        log: Path,
        *extra: str,
        patients: int = 20,
        speed: float | None = None,
    ) -> None:
        self.log = log
        self.handle = log.open("ab")
        pace = ["--max"] if speed is None else ["--speed", str(speed)]
        self.proc = subprocess.Popen(
            [
                *beatmon_command(),
                "replay",
                "--bootstrap",
                bootstrap,
                "--topic",
                topic,
                *pace,
                "--limit",
                str(limit),
                "--patients",
                str(patients),
                "--report-every",
                "1",
                *extra,
            ],
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout_s: float = WAIT_S) -> int:
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.handle.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.handle.close()


def scrape_metrics(port: int, timeout_s: float = 5.0) -> dict[str, float]:
    """Every sample of ``127.0.0.1:port/metrics`` as ``{'name{k="v",...}': value}``.

    Labels are sorted by name, so ``beatmon_alerts_total{channel="kafka"}``
    is one key whatever order the exporter wrote them in.
    """
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = (
                sample.value
            )
    return samples


def replay(
    bootstrap: str,
    topic: str,
    limit: int,
    *extra: str,
    paced: tuple[str, ...] = ("--max",),
) -> None:
    """``beatmon replay`` in this process: ``limit`` beats as 20 patients."""
    args = ["replay", "--bootstrap", bootstrap, "--topic", topic, *paced]
    assert main([*args, "--limit", str(limit), "--patients", "20", *extra]) == 0


def paced_replay(
    bootstrap: str, topic: str, limit: int, *extra: str
) -> threading.Thread:
    """Replay at 20 times real time in the background (a few hundred beats/s),
    so that a monitor can be killed while beats are still arriving."""
    feeder = threading.Thread(
        target=replay,
        args=(bootstrap, topic, limit, *extra),
        kwargs={"paced": ("--speed", "20")},
        daemon=True,
    )
    feeder.start()
    return feeder


def read_topic(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float = WAIT_S,
    count: Callable[[list[Any]], int] = len,
) -> list[Any]:
    """Every record of ``topic``, waiting until ``count(records) >= expected``."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=1000,
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while count(records) < expected and time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
        # A short extra read catches records beyond the expected count.
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
    finally:
        consumer.close()
    return records


def score_pairs(records: list[Any]) -> list[tuple[str, int]]:
    """(patient, seq) of each score record."""
    return [(d["patient"], d["seq"]) for d in (json.loads(r.value) for r in records)]


def scored_pairs(
    bootstrap: str, topic: str, expected: int, timeout_s: float = WAIT_S
) -> list[tuple[str, int]]:
    """(patient, seq) of every score record, once ``expected`` distinct ones exist.

    A beat scored twice (after a crash or a rebalance) has two records, so
    the wait counts distinct beats, not records.
    """
    return score_pairs(
        read_topic(
            bootstrap,
            topic,
            expected,
            timeout_s,
            count=lambda rs: len(set(score_pairs(rs))),
        )
    )


class TopicEnds:
    """End offsets of topics, summed over their partitions: records written so far."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
        )

    def __call__(self, *topics: str) -> dict[str, int]:
        parts = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        ends = self.consumer.end_offsets(parts, timeout_ms=10_000)
        return {
            topic: sum(end for tp, end in ends.items() if tp.topic == topic)
            for topic in topics
        }

    def close(self) -> None:
        self.consumer.close()


def expected_alarm_events(bundle: Path, beats: list[Beat]) -> set[tuple[str, str, int]]:
    """The alarm events the lab's own scoring gives, run once without a break."""
    lab = load_bundle(bundle)
    samples = np.stack([beat.samples for beat in beats]).astype(np.float32)
    flagged = keras_errors(lab.model, lab.scaler, samples) > lab.threshold
    policy = AlarmPolicy(AlarmSettings(), model_version=lab.version)
    return {(e.episode_id, e.kind, e.seq) for e in policy.apply(beats, flagged)}


def alarm_identities(payloads: list[bytes]) -> set[tuple[str, str, int]]:
    events = [decode_alarm_event(p) for p in payloads]
    return {(e.episode_id, e.kind, e.seq) for e in events}


def subprocess_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment with ``extra`` on top, for a child process."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
