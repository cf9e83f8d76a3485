"""``beatmon replay`` against the real Kafka: every beat arrives, in order, intact."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

from beatmon.cli import main
from beatmon.messages import decode_beat
from beatmon.partitions import partition_for_key
from models.data import BeatSet
from producers.cli import make_producer
from producers.replay import BeatSchedule, patient_ids
from tests.services import REPO, create_topics, unique_name

pytestmark = pytest.mark.integration


def consume_all(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0
) -> list[Any]:
    """Every record of ``topic`` by (partition, offset); waits for ``expected``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        # One more short poll, so a duplicate or stray beat would show up.
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def test_replay_delivers_every_beat_in_order_and_intact(
    kafka_bootstrap: str, ecg5000: BeatSet, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = unique_name("replay")
    create_topics(kafka_bootstrap, [topic], partitions=3)
    code = main(
        [
            "replay",
            "--max",
            "--limit",
            "300",
            "--patients",
            "20",
            "--topic",
            topic,
            "--bootstrap",
            kafka_bootstrap,
        ]
    )
    assert code == 0
    assert "Replayed 300 beats of ecg5000" in capsys.readouterr().out

    records = consume_all(kafka_bootstrap, topic, 300)
    assert len(records) == 300
    beats = [decode_beat(r.value) for r in records]
    assert all(r.key == b.patient.encode() for r, b in zip(records, beats, strict=True))

    # Per patient, the seqs are 0..k-1 in log order.
    by_patient: dict[str, list[int]] = {}
    for beat in beats:
        by_patient.setdefault(beat.patient, []).append(beat.seq)
    assert all(seqs == list(range(len(seqs))) for seqs in by_patient.values())

    # The schedule says which patient sent the n-th beat, which carries row n.
    ids = patient_ids(20)
    schedule = BeatSchedule(20, seed=0)
    row_of: dict[tuple[str, int], int] = {}
    next_seq = [0] * 20
    for row in range(300):
        _, patient = schedule.pop()
        row_of[(ids[patient], next_seq[patient])] = row
        next_seq[patient] += 1
    assert {p: len(s) for p, s in by_patient.items()} == {
        ids[p]: n for p, n in enumerate(next_seq) if n
    }
    assert ecg5000.labels is not None
    for beat in beats:
        row = row_of[(beat.patient, beat.seq)]
        assert beat.truth == ("normal" if ecg5000.labels[row] == "1" else "abnormal")
        assert np.array_equal(np.float32(beat.samples), ecg5000.beats[row])


def test_cached_partitions_match_the_producers_own_choice(
    kafka_bootstrap: str,
) -> None:
    topic = unique_name("replay-partitions")
    create_topics(kafka_bootstrap, [topic], partitions=5)
    producer = make_producer(kafka_bootstrap)
    try:
        partitions = producer.partitions_for(topic)
        keys = [patient.encode() for patient in patient_ids(40)]
        chosen = [
            producer.send(topic, value=b"{}", key=key).get(timeout=30).partition
            for key in keys
        ]
    finally:
        producer.close(timeout=5)
    assert chosen == [partition_for_key(key, partitions) for key in keys]
    assert len(set(chosen)) > 1


def test_unreachable_broker_fails_fast_with_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    start = time.monotonic()
    code = main(
        [
            "replay",
            "--bootstrap",
            "127.0.0.1:1",
            "--connect-timeout",
            "2",
            "--limit",
            "5",
        ]
    )
    elapsed_s = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2
    assert "beatmon replay: error: cannot reach Kafka at 127.0.0.1:1 " in err
    assert elapsed_s < 15


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def test_sigterm_stops_flushes_and_exits_zero(kafka_bootstrap: str) -> None:
    topic = unique_name("replay-sigterm")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "beatmon.cli",
            "replay",
            "--patients",
            "50",
            "--speed",
            "4",
            "--loop",
            "--report-every",
            "0.5",
            "--topic",
            topic,
            "--bootstrap",
            kafka_bootstrap,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if "producers.replay: sent=" in line:
                break
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 0
    assert "stopped by interrupted" in out
    sent = int(out.split("Replayed ")[1].split(" beats")[0])
    assert sent > 0
    assert len(consume_all(kafka_bootstrap, topic, sent)) == sent
