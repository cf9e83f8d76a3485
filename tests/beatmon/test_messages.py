"""Beat messages: the fast batch decoder refuses exactly what the schema forbids."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beatmon.errors import MessageError
from beatmon.messages import (
    MAX_REASON_CHARS,
    _decode_slowly,
    decode_beat,
    decode_beats,
    encode_beat,
)

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


def with_extra(payload: bytes, text: bytes) -> bytes:
    """``payload`` with ``text`` (``"name":value``) added as its last member."""
    return payload[:-1] + b"," + text + b"}"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        # msgspec raised RecursionError, which stopped the monitor.
        (with_extra(beat(), b'"x":' + b"[" * 5000 + b"]" * 5000), "nested too deeply"),
        (with_extra(beat(), b'"x":' + b'{"a":' * 5000 + b"1" + b"}" * 5000), "deeply"),
        # Bytes that are not UTF-8 in a field nobody reads were let through.
        (with_extra(beat(), b'"note":"caf\xe9"'), "not UTF-8"),
        (with_extra(beat(), b'"n\xff":1'), "not UTF-8"),
        # A field given twice was read as its last value.
        (beat().replace(b'{"v": 1', b'{"v": 2, "v": 1'), "'v' is given more than once"),
        (b'{"v":2,' + beat().replace(b", ", b",").replace(b": ", b":")[1:], "'v' is"),
        (beat().replace(b'{"v": 1', b'{"seq": 0, "v": 1'), "'seq' is given more"),
        (beat().replace(b'{"v": 1', b'{"\\u0076": 1, "v": 1'), "'v' is given more"),
        # seq beyond a signed 64-bit integer was accepted.
        (beat(seq=2**63), "above 2**63 - 1"),
        (beat(seq=10**30), "above 2**63 - 1"),
        # An integer too large for a float raised OverflowError.
        (
            beat().replace(b'"produced_at": 1.5', b'"produced_at": 1' + b"0" * 400),
            "too",
        ),
        # A boolean version passed the plain path's check (True == 1).
        (beat(v=True), "unknown beat schema version True"),
    ],
)
def test_regressions_found_by_fuzzing_are_refused_with_a_reason(
    payload: bytes, reason: str
) -> None:
    decoded = decode_beats([payload], length=8)
    assert decoded.beats == []
    ((_, message),) = decoded.refused
    assert reason in message


@pytest.mark.parametrize(
    "payload",
    [
        beat(seq=2**63 - 1),
        beat(patient="p-\u00e9\u00fc\u2603"),
        json.dumps({**json.loads(beat()), "v": 1}, separators=(",", ":")).encode(),
        beat().replace(b'"seq":', b'"\\u0073eq":'),
        with_extra(beat(), b'"device": {"v": 2, "a": 1, "a": 2}'),
        with_extra(beat(), b'"deep":' + b"[" * 200 + b"]" * 200),
        b"  \n" + beat() + b"\r\n\t ",
    ],
)
def test_valid_beats_in_unusual_but_correct_json_are_accepted(payload: bytes) -> None:
    decoded = decode_beat(payload, length=8)
    assert decoded.seq in (3, 2**63 - 1)
    np.testing.assert_array_equal(decoded.samples, GOOD)


@pytest.mark.parametrize(
    "payload",
    [
        beat(truth="x" * 1_000_000),
        beat(v="x" * 1_000_000),
        beat(v=[[[[[[[[[["deep"]]]]]]]]]]),
        beat(seq=-(10**4000)),
        beat(samples=[*GOOD[:-1], 10**300]),
        with_extra(beat(), b'"' + b"k" * 100_000 + b'": 1').replace(
            b'{"v"', b'{"v":0,"v"'
        ),
    ],
)
def test_reasons_stay_short_whatever_the_message_holds(payload: bytes) -> None:
    ((_, reason),) = decode_beats([payload], length=8).refused
    assert 0 < len(reason) <= MAX_REASON_CHARS


# --- fuzzing: the decoder gives a verdict for anything, and agrees with the
# plain JSON path on everything it accepts -----------------------------------

FIELDS = ["v", "patient", "seq", "produced_at", "samples", "truth", "extra"]
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from([1, 0.25, "p0001", "normal", "abnormal", 2**63 - 1, 1e6, 10**400]),
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=9),
        st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4),
    ),
    max_leaves=12,
)


def verdicts_once(payloads: list[bytes | None], length: int = 8) -> Any:
    decoded = decode_beats(payloads, length)
    accepted = set(decoded.positions)
    refused = {position for position, _ in decoded.refused}
    assert accepted.isdisjoint(refused)
    assert accepted | refused == set(range(len(payloads)))
    assert all(reason for _, reason in decoded.refused)
    return decoded


def agrees_with_the_plain_path(payload: bytes) -> None:
    decoded = verdicts_once([payload])
    for beat_ in decoded.beats:
        slow = _decode_slowly(payload, 8)
        assert (slow.patient, slow.seq, slow.produced_at, slow.truth) == (
            beat_.patient,
            beat_.seq,
            beat_.produced_at,
            beat_.truth,
        )
        np.testing.assert_array_equal(slow.samples, beat_.samples)


FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_get_a_verdict(payload: bytes) -> None:
    verdicts_once([payload, beat(), payload])


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), VALUES), st.booleans(), st.booleans())
def test_arbitrary_json_objects_get_a_verdict(
    changes: dict[str, Any], start_valid: bool, spaced: bool
) -> None:
    data = {**json.loads(beat()), **changes} if start_valid else changes
    separators = (", ", ": ") if spaced else (",", ":")
    agrees_with_the_plain_path(json.dumps(data, separators=separators).encode())


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["insert", "delete", "replace"]),
            st.integers(min_value=0),
            st.binary(min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_damaged_beats_get_a_verdict(edits: list[tuple[str, int, bytes]]) -> None:
    payload = bytearray(beat(truth="normal"))
    for action, where, text in edits:
        at = where % (len(payload) + 1)
        if action == "insert":
            payload[at:at] = text
        elif action == "delete":
            del payload[at : at + len(text)]
        else:
            payload[at : at + len(text)] = text
    agrees_with_the_plain_path(bytes(payload))
