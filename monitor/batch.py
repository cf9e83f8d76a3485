"""Turning one micro-batch of Kafka records into scores, alerts and dead letters.

This part knows nothing of Kafka clients: it takes records, returns what to
publish. :mod:`monitor.service` moves the bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from beatmon.errors import MessageError
from beatmon.messages import Alert, Beat, alert_id, decode_beat
from models.scoring import Scorer

DEAD_LETTER_HEADERS = (
    "beatmon.dlq.reason",
    "beatmon.dlq.topic",
    "beatmon.dlq.partition",
    "beatmon.dlq.offset",
)


class Record(Protocol):
    """The fields of a consumed Kafka record that the monitor reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class DeadLetter:
    """A message that could not be scored, with why and where it came from."""

    record: Record
    reason: str

    def headers(self) -> list[tuple[str, bytes]]:
        values = (
            self.reason,
            self.record.topic,
            str(self.record.partition),
            str(self.record.offset),
        )
        return [
            (name, value.encode())
            for name, value in zip(DEAD_LETTER_HEADERS, values, strict=True)
        ]


@dataclass
class ScoredBatch:
    """What one batch gave: the valid beats with their scores, and the rejects."""

    beats: list[Beat]
    partitions: list[int]
    errors: np.ndarray
    flagged: np.ndarray
    profiles: np.ndarray
    dead_letters: list[DeadLetter]
    alerts: list[Alert]
    inference_s: float
    records: int
    acked_at: float = field(default=0.0)

    @property
    def latencies_s(self) -> np.ndarray:
        """Seconds from each valid beat's production to its batch's acknowledgement."""
        return self.acked_at - np.array([beat.produced_at for beat in self.beats])


def decode_records(
    records: Sequence[Record], length: int
) -> tuple[list[Beat], list[int], list[DeadLetter]]:
    """Decode every record; the ones that are not valid beats become dead letters.

    Returns the beats, the partition each came from, and the dead letters.
    """
    beats: list[Beat] = []
    partitions: list[int] = []
    dead: list[DeadLetter] = []
    for record in records:
        try:
            beat = decode_beat(record.value, length)
            if record.key is not None and record.key != beat.patient.encode():
                raise MessageError(
                    f"message key {record.key[:64]!r} is not the patient id "
                    f"{beat.patient!r}"
                )
        except MessageError as exc:
            dead.append(DeadLetter(record, str(exc)))
            continue
        beats.append(beat)
        partitions.append(record.partition)
    return beats, partitions, dead


def score_records(
    records: Sequence[Record],
    scorer: Scorer,
    model_name: str,
    model_version: str,
    clock: Callable[[], float] = time.time,
) -> ScoredBatch:
    """Decode and score a batch in one call to the scorer, and build its alerts."""
    beats, partitions, dead = decode_records(records, scorer.length)
    started = time.perf_counter()
    if beats:
        scores = scorer.score(np.stack([beat.samples for beat in beats]))
        errors, flagged, profiles = scores.errors, scores.flagged, scores.profiles
    else:
        errors = np.empty(0)
        flagged = np.empty(0, dtype=bool)
        profiles = np.empty((0, 0))
    inference_s = time.perf_counter() - started

    emitted_at = clock()
    alerts = [
        Alert(
            alert_id=alert_id(model_version, beats[i].patient, beats[i].seq),
            patient=beats[i].patient,
            seq=beats[i].seq,
            error=round(float(errors[i]), 6),
            threshold=scorer.threshold,
            model=model_name,
            model_version=model_version,
            beat_time=beats[i].produced_at,
            emitted_at=emitted_at,
            profile=[round(float(x), 6) for x in profiles[i]],
            truth=beats[i].truth,
        )
        for i in np.flatnonzero(flagged)
    ]
    return ScoredBatch(
        beats=beats,
        partitions=partitions,
        errors=errors,
        flagged=flagged,
        profiles=profiles,
        dead_letters=dead,
        alerts=alerts,
        inference_s=inference_s,
        records=len(records),
    )


def score_message(beat: Beat, error: float, flagged: bool, model_version: str) -> bytes:
    """The optional per-beat score record: one for every beat scored."""
    data: dict[str, Any] = {
        "v": 1,
        "patient": beat.patient,
        "seq": beat.seq,
        "error": round(error, 6),
        "flagged": flagged,
        "model_version": model_version,
        "beat_time": beat.produced_at,
    }
    if beat.truth is not None:
        data["truth"] = beat.truth
    return json.dumps(data, separators=(",", ":")).encode()
