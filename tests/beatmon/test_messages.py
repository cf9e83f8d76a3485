"""Beat messages: the fast batch decoder refuses exactly what the schema forbids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from beatmon.errors import MessageError
from beatmon.messages import decode_beat, decode_beats, encode_beat

GOOD = [0.25] * 8


def beat(**changes: object) -> bytes:
    data: dict[str, object] = {
        "v": 1,
        "patient": "p0001",
        "seq": 3,
        "produced_at": 1.5,
        "samples": GOOD,
    }
    data.update(changes)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "tombstone"),
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (beat(v=2), "unknown beat schema version 2"),
        (beat(v="1"), "unknown beat schema version '1'"),
        (beat(patient=""), "patient id must have 1 to 64 characters"),
        (beat(patient="x" * 65), "patient id must have 1 to 64 characters"),
        (beat(seq=-1), "seq -1 is negative"),
        (beat(seq=1.5), "field 'seq' has type float"),
        (beat(produced_at="now"), "field 'produced_at' has type str"),
        (beat(samples=[*GOOD[:-1], True]), "sample 7 has type bool"),
        (beat(samples=[*GOOD[:-1], "0.1"]), "sample 7 has type str"),
        (beat(samples=[*GOOD[:-1], [0.1]]), "sample 7 has type list"),
        (beat(samples=GOOD[:-1]), "beat has 7 samples, the model expects 8"),
        (beat(samples=[*GOOD[:-1], 1e300]), "sample 7 is 1e+300"),
        (beat(truth="sick"), "truth 'sick' is neither"),
        (beat().replace(b"0.25]", b"NaN]"), "sample 7 is nan"),
        (beat().replace(b"0.25]", b"1e999]"), "sample 7 is inf"),
        (beat(samples=[*GOOD[:-1], 10**400]), "too large"),
    ],
)
def test_every_kind_of_bad_beat_is_refused_with_a_reason(
    payload: bytes | None, reason: str
) -> None:
    decoded = decode_beats([payload], length=8)
    assert decoded.beats == []
    ((position, message),) = decoded.refused
    assert position == 0
    assert reason in message


def test_good_and_bad_beats_keep_their_positions() -> None:
    payloads = [
        beat(seq=0),
        b"junk",
        beat(seq=1, samples=[float(i) for i in range(8)]),
        beat(seq=2, samples=GOOD[:3]),
        beat(seq=3, truth="abnormal"),
    ]
    decoded = decode_beats(payloads, length=8)
    assert decoded.positions == [0, 2, 4]
    assert [b.seq for b in decoded.beats] == [0, 1, 3]
    assert [position for position, _ in decoded.refused] == [1, 3]
    assert decoded.samples.shape == (3, 8)
    np.testing.assert_array_equal(decoded.samples[1], np.arange(8.0))
    assert decoded.beats[2].truth == "abnormal"


def test_unknown_extra_fields_are_accepted_for_forward_compatibility() -> None:
    assert decode_beat(beat(ward="icu-2"), length=8).patient == "p0001"


def test_round_trip_with_the_encoder() -> None:
    payload = encode_beat("p0009", 41, 12.5, GOOD, "normal")
    decoded = decode_beat(payload, length=8)
    assert (decoded.patient, decoded.seq, decoded.produced_at) == ("p0009", 41, 12.5)
    np.testing.assert_array_equal(decoded.samples, GOOD)


def test_decode_beat_raises_the_reason() -> None:
    with pytest.raises(MessageError, match="unknown beat schema version 7"):
        decode_beat(beat(v=7))
