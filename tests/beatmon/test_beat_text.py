"""Beats encoded from cached samples text: the same messages as encode_beat."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from beatmon.errors import MessageError
from beatmon.messages import (
    Truth,
    decode_beat,
    encode_beat,
    encode_beat_text,
    samples_text,
)
from models.data import BeatSet

finite_float32 = st.floats(
    allow_nan=False, allow_infinity=False, width=32, min_value=-1e6, max_value=1e6
)


def test_every_bundled_beat_decodes_back_to_its_float32_values(
    ecg5000: BeatSet,
) -> None:
    for row in ecg5000.beats:
        beat = decode_beat(encode_beat_text("p0001", 0, 1.0, samples_text(row)))
        assert np.array_equal(np.float32(beat.samples), row)


@given(st.lists(finite_float32, min_size=1, max_size=200))
def test_any_finite_float32_survives_the_round_trip(values: list[float]) -> None:
    array = np.array(values, dtype=np.float32)
    beat = decode_beat(encode_beat_text("p1", 3, 2.5, samples_text(array)))
    assert np.array_equal(np.float32(beat.samples), array)


@pytest.mark.parametrize("truth", [None, "normal", "abnormal"])
@pytest.mark.parametrize(
    ("patient", "produced_at"),
    [("p0007", 1764763200.125), ('odd "id" é\\', 0.1), ("p2", 1764763200)],
)
def test_same_message_as_encode_beat(
    patient: str, produced_at: float, truth: Truth | None, ecg5000: BeatSet
) -> None:
    row = ecg5000.beats[17]
    fast = encode_beat_text(patient, 42, produced_at, samples_text(row), truth)
    reference = encode_beat(
        patient, 42, produced_at, [float(str(x)) for x in row], truth
    )
    assert json.loads(fast) == json.loads(reference)
    if isinstance(produced_at, float):
        assert fast == reference
    beat = decode_beat(fast)
    assert (beat.patient, beat.seq, beat.produced_at, beat.truth) == (
        patient,
        42,
        produced_at,
        truth,
    )


def test_samples_text_is_the_shortest_form() -> None:
    values = np.array([0.1, -0.0, 1.0, 1e-7, 3e20, -2.5], dtype=np.float32)
    assert samples_text(values) == "[0.1,-0.0,1.0,1e-07,3e+20,-2.5]"


@pytest.mark.parametrize(
    "values", [[], [[1.0, 2.0]], [1.0, float("nan")], [float("inf")], [1e39]]
)
def test_samples_text_refuses_what_is_not_a_beat(values: list[float]) -> None:
    with pytest.raises(MessageError), np.errstate(over="ignore"):
        samples_text(np.array(values))


def test_unknown_truth_is_refused() -> None:
    with pytest.raises(MessageError, match="neither"):
        encode_beat_text("p1", 0, 1.0, "[1.0]", "maybe")  # type: ignore[arg-type]
