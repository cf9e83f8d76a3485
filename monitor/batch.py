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

from beatmon.messages import Alert, Beat, DecodedBatch, alert_id, decode_beats
from models.scoring import Scorer

DEAD_LETTER_HEADERS = (
    "beatmon.dlq.reason",
    "beatmon.dlq.topic",
    "beatmon.dlq.partition",
    "beatmon.dlq.offset",
)
# A dead letter keeps at most this many bytes of key and value together, so
# that with its headers it fits Kafka's default limits (the producer's
# max_request_size of 1,048,576 bytes and the broker's message.max.bytes of
# 1,048,588): a beat topic that allows bigger messages must not let one stop
# the monitor. A letter that was cut carries its original sizes in the headers
# beatmon.dlq.original_key_bytes and beatmon.dlq.original_value_bytes.
DEAD_LETTER_MAX_BYTES = 1_000_000
DEAD_LETTER_MAX_KEY_BYTES = 1024


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

    def _too_big(self) -> bool:
        key, value = self.record.key or b"", self.record.value or b""
        return len(key) + len(value) > DEAD_LETTER_MAX_BYTES

    def key(self) -> bytes | None:
        """The original key, cut to its first 1024 bytes in a letter too big."""
        key = self.record.key
        if key is None or not self._too_big():
            return key
        return key[:DEAD_LETTER_MAX_KEY_BYTES]

    def value(self) -> bytes | None:
        """The original value, byte for byte unless key and value together are
        over ``DEAD_LETTER_MAX_BYTES``; then as many first bytes as fit."""
        value = self.record.value
        if value is None or not self._too_big():
            return value
        return value[: DEAD_LETTER_MAX_BYTES - len(self.key() or b"")]

    def headers(self) -> list[tuple[str, bytes]]:
        values = (
            self.reason,
            self.record.topic,
            str(self.record.partition),
            str(self.record.offset),
        )
        headers = [
            (name, value.encode())
            for name, value in zip(DEAD_LETTER_HEADERS, values, strict=True)
        ]
        if self._too_big():
            headers += [
                ("beatmon.dlq.original_key_bytes", b"%d" % len(self.record.key or b"")),
                (
                    "beatmon.dlq.original_value_bytes",
                    b"%d" % len(self.record.value or b""),
                ),
            ]
        return headers


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
) -> tuple[DecodedBatch, list[int], list[DeadLetter]]:
    """Decode every record; the ones that are not valid beats become dead letters.

    Returns the decoded beats, the partition each came from, and the dead
    letters. A beat whose message key is not its patient id is refused too.
    """
    decoded = decode_beats([record.value for record in records], length)
    refused = list(decoded.refused)
    mismatched = [
        k
        for k, (beat, i) in enumerate(
            zip(decoded.beats, decoded.positions, strict=True)
        )
        if records[i].key is not None and records[i].key != beat.patient.encode()
    ]
    if mismatched:
        for k in mismatched:
            i = decoded.positions[k]
            key = records[i].key or b""
            refused.append(
                (
                    i,
                    f"message key {key[:64]!r} is not the patient id "
                    f"{decoded.beats[k].patient!r}",
                )
            )
        keep = [k for k in range(len(decoded.beats)) if k not in set(mismatched)]
        decoded = DecodedBatch(
            beats=[decoded.beats[k] for k in keep],
            positions=[decoded.positions[k] for k in keep],
            samples=decoded.samples[keep],
            refused=decoded.refused,
        )
    dead = [DeadLetter(records[i], reason) for i, reason in sorted(refused)]
    partitions = [records[i].partition for i in decoded.positions]
    return decoded, partitions, dead


def score_records(
    records: Sequence[Record],
    scorer: Scorer,
    model_name: str,
    model_version: str,
    clock: Callable[[], float] = time.time,
) -> ScoredBatch:
    """Decode and score a batch in one call to the scorer, and build its alerts."""
    decoded, partitions, dead = decode_records(records, scorer.length)
    beats = decoded.beats
    started = time.perf_counter()
    if beats:
        scores = scorer.score(decoded.samples)
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
            profile=[round(x, 6) for x in profiles[i].tolist()],
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
