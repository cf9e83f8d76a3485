"""The replay producer's pure logic: rhythm, schedule, pacing, stopping, CLI."""

from __future__ import annotations

import argparse
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka.errors import KafkaTimeoutError

from beatmon.cli import PACKAGE_LOGGERS, build_parser
from beatmon.errors import ConfigError, DataError, TransportError
from beatmon.messages import Beat, decode_beat
from beatmon.settings import ProducerSettings
from models.data import BeatSet
from producers.cli import load_replay_beats, replay_settings, replay_settings_from_args
from producers.replay import (
    MAX_SLEEP_S,
    MIN_SLEEP_S,
    BeatSchedule,
    PreparedRows,
    ReplaySettings,
    ReplayStats,
    Rhythm,
    patient_ids,
    replay,
)

STEADY = Rhythm(rr_jitter=0.0, breath_depth=0.0)


@pytest.fixture(autouse=True)
def propagating_logs() -> Iterator[None]:
    """Let caplog see package logs even after an earlier test ran ``main()``.

    ``main()`` gives the package loggers their own handler and stops them
    propagating to the root logger, where caplog listens.
    """
    saved = []
    for name in PACKAGE_LOGGERS:
        package_logger = logging.getLogger(name)
        saved.append(
            (package_logger, package_logger.handlers[:], package_logger.propagate)
        )
        package_logger.handlers[:] = []
        package_logger.propagate = True
    yield
    for package_logger, handlers, propagate in saved:
        package_logger.handlers[:] = handlers
        package_logger.propagate = propagate


class FakeClock:
    """Monotonic time that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeFuture:
    """A kafka future that is already done: acknowledged, or failed when told to."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def add_callback(self, f: Callable[..., Any], *args: Any) -> FakeFuture:
        if self.error is None:
            f(*args, None)
        return self

    def add_errback(self, f: Callable[..., Any], *args: Any) -> FakeFuture:
        if self.error is not None:
            f(*args, self.error)
        return self


@dataclass
class Sent:
    topic: str
    key: bytes
    value: bytes
    partition: int | None
    at: float

    @property
    def beat(self) -> Beat:
        return decode_beat(self.value)


@dataclass
class RecordingProducer:
    """Records every send; fails the sends whose index is in ``fail``."""

    clock: Callable[[], float] = lambda: 0.0
    fail: set[int] = field(default_factory=set)
    raise_on: int | None = None
    sent: list[Sent] = field(default_factory=list)
    flushes: int = 0

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> FakeFuture:
        if len(self.sent) == self.raise_on:
            raise KafkaTimeoutError("buffer full")
        if value is None or key is None:
            raise AssertionError("replay sends a key and a value")
        error = RuntimeError("lost") if len(self.sent) in self.fail else None
        self.sent.append(Sent(topic, key, value, partition, self.clock()))
        return FakeFuture(error)

    def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1


def make_rows(count: int = 7, labelled: bool = True) -> BeatSet:
    beats = np.arange(count * 8, dtype=np.float32).reshape(count, 8) / 7
    labels = np.array(["1" if i % 3 else "2" for i in range(count)], dtype=object)
    return BeatSet(beats, labels if labelled else None, "test-rows", "x", "ucr")


def run_replay(
    settings: ReplaySettings, rows: PreparedRows | None = None, **kwargs: Any
) -> tuple[ReplayStats, RecordingProducer, FakeClock]:
    clock = FakeClock()
    producer = RecordingProducer(clock=clock, **kwargs)
    if rows is None:
        rows = PreparedRows.from_beats(make_rows(), "1")
    stats = replay(
        rows, producer, settings, clock=clock, wall_clock=clock, sleep=clock.sleep
    )
    return stats, producer, clock


# Patients and heart rates


@pytest.mark.parametrize(
    ("count", "first", "last"),
    [(1, "p0001", "p0001"), (100, "p0001", "p0100"), (12345, "p00001", "p12345")],
)
def test_patient_ids_are_zero_padded_to_the_count(
    count: int, first: str, last: str
) -> None:
    ids = patient_ids(count)
    assert (len(ids), ids[0], ids[-1]) == (count, first, last)
    assert len(set(ids)) == count


def test_patient_ids_need_one_patient() -> None:
    with pytest.raises(ConfigError):
        patient_ids(0)


def test_heart_rates_are_bounded_and_seeded() -> None:
    rates = BeatSchedule(5000, seed=3).heart_rates_bpm
    assert rates.min() >= 45 and rates.max() <= 140
    assert 74 < rates.mean() < 76
    assert 11 < rates.std() < 13
    assert np.array_equal(rates, BeatSchedule(5000, seed=3).heart_rates_bpm)
    assert not np.array_equal(rates, BeatSchedule(5000, seed=4).heart_rates_bpm)


def intervals_by_patient(schedule: BeatSchedule, beats: int) -> list[np.ndarray]:
    times: list[list[float]] = [[] for _ in range(schedule.patients)]
    for _ in range(beats):
        due_s, patient = schedule.pop()
        times[patient].append(due_s)
    return [np.diff(t) for t in times]


@pytest.mark.parametrize(
    ("rhythm", "expected_sd"),
    [
        (Rhythm(breath_depth=0.0), 0.04),
        (Rhythm(), float(np.hypot(0.04, 0.03 / np.sqrt(2)))),
    ],
)
def test_intervals_average_60_over_rate_with_the_chosen_jitter(
    rhythm: Rhythm, expected_sd: float
) -> None:
    schedule = BeatSchedule(4, seed=1, rhythm=rhythm)
    for rate_bpm, rr_s in zip(
        schedule.heart_rates_bpm, intervals_by_patient(schedule, 40_000), strict=True
    ):
        relative = rr_s / (60.0 / rate_bpm)
        assert relative.mean() == pytest.approx(1.0, abs=0.005)
        assert relative.std() == pytest.approx(expected_sd, rel=0.1)
        assert relative.min() >= (1 - 0.12) * (1 - rhythm.breath_depth) - 1e-9


def test_steady_rhythm_beats_exactly_at_60_over_rate() -> None:
    schedule = BeatSchedule(3, seed=2, rhythm=STEADY)
    for rate_bpm, rr_s in zip(
        schedule.heart_rates_bpm, intervals_by_patient(schedule, 300), strict=True
    ):
        assert rr_s == pytest.approx(60.0 / rate_bpm)


def test_patients_start_within_their_first_interval_and_interleave() -> None:
    schedule = BeatSchedule(50, seed=0)
    first_due = {}
    order = []
    for _ in range(2000):
        due_s, patient = schedule.pop()
        first_due.setdefault(patient, due_s)
        order.append(patient)
    rr_s = 60.0 / schedule.heart_rates_bpm
    assert len(first_due) == 50
    assert all(0 <= first_due[p] < rr_s[p] for p in range(50))
    # Not in lock-step: first beats spread over the interval, not bunched.
    assert np.std(list(first_due.values())) > 0.1
    switches = sum(a != b for a, b in itertools.pairwise(order))
    assert switches > 0.95 * (len(order) - 1)


def test_due_times_never_go_back() -> None:
    schedule = BeatSchedule(30, seed=5)
    dues = [schedule.pop()[0] for _ in range(3000)]
    assert dues == sorted(dues)


# Rows and messages


def test_rows_carry_truth_words_from_the_normal_label() -> None:
    rows = PreparedRows.from_beats(make_rows(), "1")
    assert rows.truths == [
        "abnormal",
        "normal",
        "normal",
        "abnormal",
        "normal",
        "normal",
        "abnormal",
    ]
    assert PreparedRows.from_beats(make_rows(), None).truths == [None] * 7
    with pytest.raises(DataError, match="no labels"):
        PreparedRows.from_beats(make_rows(labelled=False), "1")


def test_each_beat_takes_the_next_row_and_its_patients_next_seq() -> None:
    data = make_rows()
    stats, producer, _ = run_replay(ReplaySettings(patients=3, speed=None))

    assert (stats.sent, stats.failed, stats.stopped_by) == (7, 0, "end of file")
    beats = [sent.beat for sent in producer.sent]
    for row, (sent, beat) in enumerate(zip(producer.sent, beats, strict=True)):
        assert sent.topic == "beatmon.beats"
        assert sent.key == beat.patient.encode()
        assert np.array_equal(np.float32(beat.samples), data.beats[row])
        assert beat.truth == ("normal" if row % 3 else "abnormal")
    for patient in {beat.patient for beat in beats}:
        seqs = [beat.seq for beat in beats if beat.patient == patient]
        assert seqs == list(range(len(seqs)))
    assert producer.flushes == 1


def test_no_truth_sends_no_truth_field() -> None:
    rows = PreparedRows.from_beats(make_rows(), None)
    _, producer, _ = run_replay(ReplaySettings(speed=None), rows)
    assert all(b'"truth"' not in sent.value for sent in producer.sent)


def test_one_patient_keeps_one_partition() -> None:
    _, producer, _ = run_replay(
        ReplaySettings(patients=5, speed=None, loop=True, limit=200)
    )
    partitions: dict[bytes, set[int | None]] = {}
    for sent in producer.sent:
        partitions.setdefault(sent.key, set()).add(sent.partition)
    assert all(len(found) == 1 for found in partitions.values())
    assert {p for found in partitions.values() for p in found} <= {0, 1, 2}


@pytest.mark.parametrize(
    ("loop", "limit", "sent", "stopped_by"),
    [
        (False, None, 7, "end of file"),
        (False, 3, 3, "limit"),
        (False, 100, 7, "end of file"),
        (True, 20, 20, "limit"),
    ],
)
def test_limit_loop_and_end_of_file(
    loop: bool, limit: int | None, sent: int, stopped_by: str
) -> None:
    data = make_rows()
    stats, producer, _ = run_replay(
        ReplaySettings(patients=4, speed=None, loop=loop, limit=limit)
    )
    assert (stats.sent, stats.stopped_by) == (sent, stopped_by)
    for i, record in enumerate(producer.sent):
        expected = data.beats[i % len(data.beats)]
        assert np.array_equal(np.float32(record.beat.samples), expected)


def test_max_speed_never_sleeps() -> None:
    _, _, clock = run_replay(ReplaySettings(speed=None, loop=True, limit=500))
    assert clock.sleeps == []


@pytest.mark.parametrize("speed", [1.0, 2.0, 0.5])
def test_beats_go_out_within_min_sleep_after_due_time_over_speed(
    speed: float,
) -> None:
    settings = ReplaySettings(patients=10, seed=4, speed=speed, loop=True, limit=300)
    stats, producer, clock = run_replay(settings)

    schedule = BeatSchedule(10, seed=4)
    expected_s = [schedule.pop()[0] / speed for _ in range(300)]
    sent_s = np.array([sent.at - 1000.0 for sent in producer.sent])
    late_s = sent_s - np.array(expected_s)
    assert late_s.min() >= -1e-9
    assert late_s.max() <= MIN_SLEEP_S + 1e-9
    assert min(clock.sleeps) >= MIN_SLEEP_S - 1e-12
    assert max(clock.sleeps) <= MAX_SLEEP_S
    assert stats.elapsed_s == pytest.approx(sent_s[-1], abs=1e-9)


def test_produced_at_is_the_wall_clock_at_send() -> None:
    _, producer, _ = run_replay(ReplaySettings(patients=2, loop=True, limit=20))
    assert [sent.beat.produced_at for sent in producer.sent] == [
        sent.at for sent in producer.sent
    ]


def test_duration_stops_on_time() -> None:
    settings = ReplaySettings(patients=20, seed=1, loop=True, duration_s=3.0)
    stats, producer, clock = run_replay(settings)

    schedule = BeatSchedule(20, seed=1)
    due_within = 0
    while schedule.pop()[0] < 3.0:
        due_within += 1
    assert stats.stopped_by == "duration"
    assert stats.sent == due_within
    assert producer.sent[-1].at - 1000.0 < 3.0
    assert clock.now - 1000.0 == pytest.approx(3.0)


def test_max_speed_duration_counts_wall_time() -> None:
    clock = FakeClock()

    class SlowProducer(RecordingProducer):
        def send(self, *args: Any, **kwargs: Any) -> FakeFuture:
            clock.now += 0.01
            return super().send(*args, **kwargs)

    producer = SlowProducer(clock=clock)
    rows = PreparedRows.from_beats(make_rows(), "1")
    settings = ReplaySettings(speed=None, loop=True, duration_s=1.0)
    stats = replay(rows, producer, settings, clock=clock, sleep=clock.sleep)
    assert stats.stopped_by == "duration"
    assert stats.sent == pytest.approx(100, abs=1)


def test_stop_request_ends_the_replay_and_flushes() -> None:
    clock = FakeClock()
    producer = RecordingProducer(clock=clock)
    rows = PreparedRows.from_beats(make_rows(), "1")
    stats = replay(
        rows,
        producer,
        ReplaySettings(patients=5, loop=True),
        clock=clock,
        sleep=clock.sleep,
        stop=lambda: clock.now > 1002.0,
    )
    assert stats.stopped_by == "interrupted"
    assert 0 < stats.sent == len(producer.sent)
    assert producer.flushes == 1


def test_keyboard_interrupt_while_waiting_flushes_and_returns() -> None:
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now > 1001.0:
            raise KeyboardInterrupt

    producer = RecordingProducer(clock=clock)
    rows = PreparedRows.from_beats(make_rows(), "1")
    settings = ReplaySettings(patients=5, loop=True)
    stats = replay(rows, producer, settings, clock=clock, sleep=sleep)
    assert stats.stopped_by == "interrupted"
    assert stats.sent > 0 and producer.flushes == 1


def test_failed_deliveries_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="producers"):
        stats, _, _ = run_replay(ReplaySettings(speed=None), fail={1, 4})
    assert (stats.sent, stats.failed) == (7, 2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "topic=beatmon.beats" in warnings[0].getMessage()


class HeldFuture:
    """A kafka future that stays pending until :meth:`ack`."""

    def __init__(self) -> None:
        self.done = False
        self.callbacks: list[Callable[[], Any]] = []

    def add_callback(self, f: Callable[..., Any], *args: Any) -> HeldFuture:
        self.callbacks.append(lambda: f(*args, None))
        if self.done:
            self.callbacks.pop()()
        return self

    def add_errback(self, f: Callable[..., Any], *args: Any) -> HeldFuture:
        return self

    def ack(self) -> None:
        self.done = True
        while self.callbacks:
            self.callbacks.pop(0)()


@dataclass
class OutageProducer(RecordingProducer):
    """Acknowledges nothing while the clock is in [down_from, down_until)."""

    down_from: float = 0.0
    down_until: float = 0.0
    held: list[HeldFuture] = field(default_factory=list)

    def _down(self) -> bool:
        return self.down_from <= self.clock() < self.down_until

    def _release(self) -> None:
        for future in self.held:
            future.ack()
        self.held.clear()

    def send(self, *args: Any, **kwargs: Any) -> Any:
        super().send(*args, **kwargs)
        future = HeldFuture()
        self.held.append(future)
        if not self._down():
            self._release()
        return future

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1
        if self._down():
            # A real flush blocks for its timeout before giving up.
            self.clock.now += timeout or 0.0  # type: ignore[attr-defined]
            raise KafkaTimeoutError("flush timed out")
        self._release()


def test_beats_never_acknowledged_count_as_not_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    producer = OutageProducer(clock=clock, down_from=1000.0, down_until=1e9)
    rows = PreparedRows.from_beats(make_rows(), "1")
    settings = ReplaySettings(speed=None, limit=7, flush_timeout_s=30.0)
    with caplog.at_level(logging.WARNING, logger="producers"):
        stats = replay(rows, producer, settings, clock=clock, sleep=clock.sleep)
    assert (stats.sent, stats.failed) == (7, 7)
    assert clock.now - 1000.0 == pytest.approx(30.0)
    assert any("count as not delivered" in r.getMessage() for r in caplog.records)


def test_an_outage_is_logged_once_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    producer = OutageProducer(clock=clock, down_from=1002.0, down_until=1022.0)
    rows = PreparedRows.from_beats(make_rows(), "1")
    settings = ReplaySettings(patients=20, loop=True, duration_s=30.0)
    with caplog.at_level(logging.INFO, logger="producers"):
        stats = replay(rows, producer, settings, clock=clock, sleep=clock.sleep)
    messages = [r.getMessage() for r in caplog.records]
    down = [m for m in messages if m.startswith("Kafka unreachable")]
    back = [m for m in messages if m.startswith("Kafka reachable again")]
    assert len(down) == 1 and "waiting=" in down[0]
    assert len(back) == 1 and "after 20." in back[0]
    assert stats.failed == 0 and not producer.held


def test_a_refused_send_raises_transport_error_after_flushing() -> None:
    clock = FakeClock()
    producer = RecordingProducer(clock=clock, raise_on=3)
    rows = PreparedRows.from_beats(make_rows(), "1")
    with pytest.raises(TransportError, match=r"seq=\d+ topic=beatmon.beats"):
        replay(rows, producer, ReplaySettings(speed=None), clock=clock)
    assert len(producer.sent) == 3 and producer.flushes == 1


def test_progress_lines_report_rate(caplog: pytest.LogCaptureFixture) -> None:
    settings = ReplaySettings(patients=60, loop=True, duration_s=10.0)
    with caplog.at_level(logging.INFO, logger="producers"):
        stats, _, _ = run_replay(settings)
    lines = [r.getMessage() for r in caplog.records]
    progress = [line for line in lines if line.startswith("sent=")]
    assert len(progress) == 1
    assert "patients=60 failed=0" in progress[0]
    rate = float(progress[0].split("rate=")[1].split("/s")[0])
    assert rate == pytest.approx(60 * 75 / 60, rel=0.25)
    assert any(
        line.startswith(f"replay finished: sent={stats.sent} failed=0")
        for line in lines
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"patients": 0},
        {"speed": 0.0},
        {"speed": -1.0},
        {"limit": -1},
        {"duration_s": -1.0},
        {"report_every_s": 0.0},
    ],
)
def test_settings_are_validated(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ReplaySettings(**settings)


# Command line


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["replay", *argv])


def settings_of(*argv: str) -> ProducerSettings:
    """The settings ``beatmon replay ARGV`` runs with, no BEATMON_* variables."""
    return replay_settings_from_args(parse(*argv), env={})


def test_command_line_defaults() -> None:
    settings = replay_settings(settings_of())
    assert settings == ReplaySettings(
        topic="beatmon.beats", patients=100, seed=0, speed=1.0, report_every_s=5.0
    )
    producer_settings = settings_of()
    assert (
        producer_settings.kafka.bootstrap_servers,
        producer_settings.data,
        producer_settings.truth,
        producer_settings.connect_timeout_s,
    ) == ("127.0.0.1:9092", "ecg5000", True, 10.0)


def test_command_line_options_map_to_settings() -> None:
    settings = replay_settings(
        settings_of(
            "--max",
            "--loop",
            "--limit",
            "50",
            "--duration",
            "2.5",
            "--patients",
            "7",
            "--seed",
            "3",
            "--topic",
            "t",
            "--report-every",
            "1",
        )
    )
    assert settings == ReplaySettings(
        topic="t",
        patients=7,
        seed=3,
        speed=None,
        loop=True,
        limit=50,
        duration_s=2.5,
        report_every_s=1.0,
    )
    assert replay_settings(settings_of("--speed", "2")).speed == 2.0


@pytest.mark.parametrize(
    "argv",
    [
        ["--max", "--speed", "2"],
        ["--speed", "0"],
        ["--patients", "0"],
        ["--limit", "-3"],
        ["--duration", "nan"],
    ],
)
def test_command_line_rejects_bad_values(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "beatmon replay: error:" in capsys.readouterr().err


def test_bundled_set_sends_truth_with_the_labs_normal_label(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        data, normal_label = load_replay_beats(settings_of())
    assert normal_label == "1" and len(data.beats) == 5000
    assert any("<- normal" in r.getMessage() for r in caplog.records)


def test_no_truth_and_unlabelled_files_send_no_truth(tmp_path: Path) -> None:
    plain = tmp_path / "beats.csv"
    plain.write_text(
        "\n".join(",".join(["0.5"] * 9 + [str(i + 0.5)]) for i in range(3))
    )
    data, normal_label = load_replay_beats(settings_of("--data", str(plain)))
    assert data.labels is None and normal_label is None

    _, normal_label = load_replay_beats(settings_of("--no-truth"))
    assert normal_label is None


def test_a_labelled_file_still_needs_its_normal_label(tmp_path: Path) -> None:
    labelled = tmp_path / "beats.csv"
    labelled.write_text("\n".join(",".join(["0.5"] * 9 + ["1"]) for _ in range(3)))
    with pytest.raises(DataError, match="--normal-label"):
        load_replay_beats(settings_of("--data", str(labelled)))


def test_patient_prefix_keeps_two_wards_apart() -> None:
    assert patient_ids(3, "icu-") == ["icu-0001", "icu-0002", "icu-0003"]
    with pytest.raises(ConfigError, match="patient_prefix"):
        ReplaySettings(patient_prefix="a/b")
