"""Turning records into beats and dead letters: every kind of poison gets a
fitting reason, and a dead letter always fits Kafka's default size limits."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from models.data import BeatSet
from monitor.batch import (
    DEAD_LETTER_HEADERS,
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_MAX_KEY_BYTES,
    DeadLetter,
    decode_records,
)
from tests.poison import BEAT_LENGTH, chunks, mixed_stream


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def test_a_small_dead_letter_keeps_key_and_value_byte_for_byte() -> None:
    dead = DeadLetter(Record("beats", 2, 41, b"p0001", b"\x00junk"), "not JSON")
    assert (dead.key(), dead.value()) == (b"p0001", b"\x00junk")
    assert dict(dead.headers()) == {
        "beatmon.dlq.reason": b"not JSON",
        "beatmon.dlq.topic": b"beats",
        "beatmon.dlq.partition": b"2",
        "beatmon.dlq.offset": b"41",
    }
    tombstone = DeadLetter(Record("beats", 0, 0, None, None), "empty message")
    assert (tombstone.key(), tombstone.value()) == (None, None)
    assert [name for name, _ in tombstone.headers()] == list(DEAD_LETTER_HEADERS)


@pytest.mark.parametrize(
    ("key_bytes", "value_bytes"),
    [
        (5, DEAD_LETTER_MAX_BYTES),
        (0, 2 * 1024 * 1024),
        (600_000, 600_000),
        (2 * 1024 * 1024, 10),
    ],
)
def test_a_dead_letter_too_big_for_kafka_is_cut_and_says_so(
    key_bytes: int, value_bytes: int
) -> None:
    key, value = b"k" * key_bytes, bytes(range(256)) * (value_bytes // 256 + 1)
    value = value[:value_bytes]
    dead = DeadLetter(Record("beats", 0, 7, key, value), "too big")
    kept_key, kept_value = dead.key() or b"", dead.value() or b""
    assert len(kept_key) + len(kept_value) <= DEAD_LETTER_MAX_BYTES
    assert len(kept_key) <= DEAD_LETTER_MAX_KEY_BYTES
    assert key.startswith(kept_key) and value.startswith(kept_value)
    headers = dict(dead.headers())
    assert headers["beatmon.dlq.original_key_bytes"] == str(key_bytes).encode()
    assert headers["beatmon.dlq.original_value_bytes"] == str(value_bytes).encode()
    assert headers["beatmon.dlq.offset"] == b"7"


def test_every_kind_of_poison_is_refused_with_a_fitting_reason(
    ecg5000: BeatSet,
) -> None:
    messages = mixed_stream(11, ecg5000.beats, bad=3000, good=1000)
    records = [
        Record("beats", 0, offset, m.key, m.value) for offset, m in enumerate(messages)
    ]
    wrong: list[str] = []
    accepted: set[int] = set()
    for batch in chunks(records, 512):
        decoded, partitions, dead = decode_records(batch, BEAT_LENGTH)
        assert partitions == [0] * len(decoded.beats)
        accepted.update(batch[i].offset for i in decoded.positions)
        for letter in dead:
            message = messages[letter.record.offset]
            if message.reason is None:
                wrong.append(f"{message.kind} refused: {letter.reason}")
            elif not re.search(message.reason, letter.reason):
                wrong.append(f"{message.kind}: {letter.reason!r}")
    assert not wrong, "\n".join(wrong[:20])
    assert accepted == {i for i, m in enumerate(messages) if m.good}
    kinds = {m.kind for m in messages}
    assert len(kinds) > 50, sorted(kinds)
