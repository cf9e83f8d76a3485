"""The fault matrix: what every scenario checks, and the table it fills.

Every scenario replays a known set of labelled ECG5000 beats through real
``beatmon`` processes while something breaks, then checks three things:

a. every beat sent was scored at least once, by the ``(patient, seq)`` of the
   score records;
b. the alerts, de-duplicated by ``alert_id``, are exactly those the lab's
   Keras model gives for the same beats (error above the threshold), none
   missing and none unexpected, and no beat has two different alert ids;
c. the counters the monitor exports at ``/metrics`` agree with what reached
   Kafka (see :class:`MetricsLedger`).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from beatmon.messages import Beat, alert_id, decode_alert, decode_beat
from models.bundle import PARITY_TOLERANCE, load_bundle
from models.scoring import keras_errors
from monitor.alarms import AlarmPolicy, AlarmSettings
from tests.streams import (
    WAIT_S,
    MonitorProcess,
    TopicEnds,
    Topics,
    read_topic,
    score_pairs,
)

# Metric samples, as tests.streams.scrape_metrics names them.
SCORED = (
    'beatmon_beats_total{outcome="normal"}',
    'beatmon_beats_total{outcome="flagged"}',
)
ALERTS = ('beatmon_alerts_total{channel="kafka"}',)
PRIORITIES = ("low", "medium", "high")


def kafka_alarms(channel: str = "kafka") -> tuple[str, ...]:
    return tuple(
        f'beatmon_alarms_total{{channel="{channel}",priority="{p}"}}'
        for p in PRIORITIES
    )


def total(samples: dict[str, float], names: Sequence[str]) -> int:
    return int(sum(samples.get(name, 0.0) for name in names))


# --- the table -----------------------------------------------------------------

COLUMNS = (
    "scenario",
    "beats sent",
    "beats scored",
    "alerts",
    "duplicates before de-dup",
    "duplicates after de-dup",
    "result",
    "seconds",
)


@dataclass
class Row:
    """One line of the fault table; counts stay None where they do not apply."""

    scenario: str
    sent: int | None = None
    scored: int | None = None
    alerts: int | None = None
    duplicates_before: int | None = None
    duplicates_after: int | None = None
    result: str = ""
    seconds: float = 0.0

    def fill(self, outcome: StreamOutcome) -> None:
        self.sent = outcome.sent
        self.scored = outcome.scored
        self.alerts = outcome.alerts
        self.duplicates_before = outcome.duplicates_before
        self.duplicates_after = outcome.duplicates_after

    def cells(self) -> list[str]:
        def count(value: int | None) -> str:
            return "-" if value is None else str(value)

        return [
            self.scenario,
            count(self.sent),
            count(self.scored),
            count(self.alerts),
            count(self.duplicates_before),
            count(self.duplicates_after),
            self.result,
            f"{self.seconds:.0f}",
        ]


@dataclass
class FaultTable:
    """The rows of one test session, in the order the scenarios ran."""

    rows: list[Row] = field(default_factory=list)

    @contextmanager
    def scenario(self, name: str) -> Iterator[Row]:
        """A row for ``name``: ``pass`` unless the block raises, then the reason."""
        row = Row(name)
        started = time.monotonic()
        try:
            yield row
            row.result = row.result or "pass"
        except BaseException as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            row.result = f"FAIL: {type(exc).__name__} {reason}"[:120]
            raise
        finally:
            row.seconds = time.monotonic() - started
            self.rows.append(row)

    def markdown(self) -> str:
        lines = [
            "| " + " | ".join(COLUMNS) + " |",
            "| " + " | ".join("---" for _ in COLUMNS) + " |",
        ]
        lines += ["| " + " | ".join(row.cells()) + " |" for row in self.rows]
        return "\n".join(lines)


# --- checks (a) and (b) --------------------------------------------------------


@dataclass
class StreamOutcome:
    """What one scenario's stream left on Kafka, counted."""

    beats: list[Beat]
    sent: int
    scored: int
    score_records: int
    alerts: int
    alert_records: int
    duplicates_before: int
    duplicates_after: int
    # (patient, seq) -> flagged, as the monitor's score records say.
    monitor_flags: dict[tuple[str, int], bool]


def check_sent(beats: list[Beat], expected: int) -> None:
    """The replay delivered ``expected`` beats once each, every patient's
    numbered 0, 1, 2, ... without a gap."""
    pairs = [(beat.patient, beat.seq) for beat in beats]
    duplicated = len(pairs) - len(set(pairs))
    assert duplicated == 0, f"{duplicated} beats are on the beat topic twice"
    assert len(pairs) == expected, f"{len(pairs)} beats on the topic, {expected} sent"
    seqs: defaultdict[str, list[int]] = defaultdict(list)
    for patient, seq in pairs:
        seqs[patient].append(seq)
    gaps = [p for p, s in seqs.items() if sorted(s) != list(range(len(s)))]
    assert not gaps, f"patients with missing beats: {gaps[:5]}"


def lab_view(bundle: Path, beats: list[Beat]) -> tuple[str, np.ndarray, np.ndarray]:
    """The lab's verdict on ``beats``: model version, flags, and which are
    within the serving/Keras parity tolerance of the threshold."""
    lab = load_bundle(bundle)
    samples = np.stack([beat.samples for beat in beats]).astype(np.float32)
    errors = keras_errors(lab.model, lab.scaler, samples)
    borderline = np.abs(errors - lab.threshold) <= PARITY_TOLERANCE
    return lab.version, errors > lab.threshold, borderline


def check_stream(
    bootstrap: str,
    topics: Topics,
    bundle: Path,
    expected: int,
    timeout_s: float = WAIT_S,
) -> StreamOutcome:
    """Checks (a) and (b) for ``expected`` beats sent to ``topics.beats``."""
    beats = [
        decode_beat(r.value)
        for r in read_topic(bootstrap, topics.beats, expected, timeout_s)
    ]
    check_sent(beats, expected)
    sent = {(beat.patient, beat.seq) for beat in beats}

    # (a) every beat scored at least once, and nothing else scored.
    records = read_topic(
        bootstrap,
        topics.scores,
        expected,
        timeout_s,
        count=lambda rs: len(set(score_pairs(rs))),
    )
    pairs = score_pairs(records)
    missing = sent - set(pairs)
    assert not missing, f"{len(missing)} beats never scored, e.g. {sorted(missing)[:3]}"
    stray = set(pairs) - sent
    assert not stray, f"{len(stray)} scores of beats never sent"
    monitor_flags = {
        (d["patient"], d["seq"]): bool(d["flagged"])
        for d in (json.loads(r.value) for r in records)
    }

    # (b) alerts: exactly the lab's flagged beats, once each after de-duplication.
    version, flags, borderline = lab_view(bundle, beats)
    must = {
        alert_id(version, b.patient, b.seq)
        for b, f, edge in zip(beats, flags, borderline, strict=True)
        if f and not edge
    }
    may = {
        alert_id(version, b.patient, b.seq)
        for b, edge in zip(beats, borderline, strict=True)
        if edge
    }
    alert_records = read_topic(
        bootstrap,
        topics.alerts,
        len(must),
        timeout_s,
        count=lambda rs: len({decode_alert(r.value).alert_id for r in rs}),
    )
    alerts = [decode_alert(r.value) for r in alert_records]
    ids = Counter(a.alert_id for a in alerts)
    absent = must - set(ids)
    unexpected = set(ids) - must - may
    assert not absent, f"{len(absent)} alerts the lab expects are missing"
    assert not unexpected, f"{len(unexpected)} alerts the lab does not expect"
    wrong = [a for a in alerts if a.alert_id != alert_id(version, a.patient, a.seq)]
    assert not wrong, f"{len(wrong)} alerts carry an id not derived from their beat"
    by_beat = {(a.patient, a.seq) for a in alerts}
    duplicates_after = len(ids) - len(by_beat)
    assert duplicates_after == 0, f"{duplicates_after} beats have two alert ids"

    return StreamOutcome(
        beats=beats,
        sent=len(sent),
        scored=len(set(pairs)),
        score_records=len(pairs),
        alerts=len(ids),
        alert_records=len(alerts),
        duplicates_before=len(alerts) - len(ids),
        duplicates_after=duplicates_after,
        monitor_flags=monitor_flags,
    )


def uninterrupted_alarms(
    version: str, outcome: StreamOutcome
) -> set[tuple[str, str, int]]:
    """The alarm events one policy gives over the monitor's own flags, run
    once without a break: what a fault must not change."""
    flagged = np.array(
        [outcome.monitor_flags[b.patient, b.seq] for b in outcome.beats], dtype=bool
    )
    policy = AlarmPolicy(AlarmSettings(), model_version=version)
    return {(e.episode_id, e.kind, e.seq) for e in policy.apply(outcome.beats, flagged)}


# --- check (c) -----------------------------------------------------------------


@dataclass
class Counts:
    scored: int
    alerts: int
    alarms: int

    @classmethod
    def of(cls, samples: dict[str, float]) -> Counts:
        return cls(
            total(samples, SCORED),
            total(samples, ALERTS),
            total(samples, kafka_alarms()),
        )

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.scored + other.scored,
            self.alerts + other.alerts,
            self.alarms + other.alarms,
        )


ZERO = Counts(0, 0, 0)


class MetricsLedger:
    """Holds a monitor's exported counters against the records on Kafka.

    The monitor counts a batch only after the broker acknowledged the
    batch's output, and works on one batch at a time. So at any instant the
    counters of the monitors running since ``mark()`` are at most the
    records written since then, and at least those records minus one batch
    per monitor (the batch whose output is on its way):

        written(before scrape) - monitors * max_batch <= counted <= written(after)

    :meth:`bracket` checks that for beats scored and alerts (a batch of
    ``max_batch`` beats has at most ``max_batch`` alerts). Once the stream has
    been scored and the monitors are idle, :meth:`settled` checks equality
    for beats, alerts and alarm events.
    """

    def __init__(self, ends: TopicEnds, topics: Topics, max_batch: int) -> None:
        self.ends = ends
        self.topics = topics
        self.max_batch = max_batch
        self.base = ZERO

    def written(self) -> Counts:
        t = self.topics
        ends = self.ends(t.scores, t.alerts, t.alarms)
        return Counts(ends[t.scores], ends[t.alerts], ends[t.alarms])

    def mark(self) -> None:
        """Records written so far belong to earlier lives; count from here."""
        self.base = self.written()

    def since_mark(self) -> Counts:
        now, base = self.written(), self.base
        return Counts(
            now.scored - base.scored, now.alerts - base.alerts, now.alarms - base.alarms
        )

    def bracket(self, monitors: Sequence[MonitorProcess]) -> Counts:
        """Check the counters of ``monitors`` mid-stream; returns them."""
        before = self.since_mark()
        counted = sum((Counts.of(m.scrape()) for m in monitors), ZERO)
        after = self.since_mark()
        slack = len(monitors) * self.max_batch
        for name in ("scored", "alerts"):
            low = getattr(before, name) - slack
            high = getattr(after, name)
            value = getattr(counted, name)
            assert low <= value <= high, (
                f"metrics say {name}={value}, Kafka holds {getattr(before, name)}.."
                f"{high} records since the mark (one batch of {self.max_batch} "
                f"per monitor may be in flight)"
            )
        return counted

    def settled(
        self,
        monitors: Sequence[MonitorProcess],
        others: Counts = ZERO,
        quiet_s: float = 1.5,
        timeout_s: float = 30.0,
    ) -> Counts:
        """Wait until ``monitors`` are idle; their counters plus ``others``
        (monitors already gone) must equal the records since the mark."""
        deadline = time.monotonic() + timeout_s
        last: tuple[Counts, Counts] | None = None
        while True:
            state = (
                sum((Counts.of(m.scrape()) for m in monitors), ZERO),
                self.since_mark(),
            )
            if state == last:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"monitors still busy after {timeout_s:g} s")
            last = state
            time.sleep(quiet_s)
        counted, written = state
        assert counted + others == written, (
            f"metrics {counted} plus {others} of stopped monitors != records "
            f"written {written}"
        )
        return counted


STOPPED = re.compile(r"monitor stopped: scored=(\d+) flagged=(\d+) .*? alarms=(\d+)")


def exit_counts(monitor: MonitorProcess) -> Counts:
    """The totals a cleanly stopped monitor logged on its way out."""
    found = STOPPED.findall(monitor.text())
    assert found, f"no 'monitor stopped' line in the log:\n{monitor.text()[-2000:]}"
    scored, flagged, alarms = (int(x) for x in found[-1])
    return Counts(scored, flagged, alarms)


def assigned_partitions(monitor: MonitorProcess, topic: str) -> set[int]:
    """The partitions of ``topic`` in the monitor's latest assignment line."""
    lines = [
        line for line in monitor.text().splitlines() if "partitions assigned:" in line
    ]
    if not lines:
        return set()
    return {int(p) for p in re.findall(re.escape(topic) + r"\[(\d+)\]", lines[-1])}


def wait_for(check: Any, what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``check()`` until it is true."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)
