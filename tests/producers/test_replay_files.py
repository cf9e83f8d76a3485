"""The replay producer's file path, fuzzed: whatever the file and the label
settings, the rows it would send are valid beats or the error is a DataError
that names the file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beatmon.errors import DataError
from beatmon.messages import decode_beat, encode_beat_text
from beatmon.settings import ProducerSettings
from producers.cli import load_replay_beats
from producers.replay import PreparedRows

_CELL = st.one_of(
    st.floats(-1e3, 1e3).map(lambda x: f"{x:.4f}"),
    st.floats(-1e3, 1e3).map(lambda x: f"{x:.4f}"),
    st.integers(0, 3).map(str),
    st.sampled_from(
        [
            *("nan", "inf", "-Infinity", "1e400", "1e39", "9" * 400, "1_000"),
            *("0x10", "", " ", "abc", '"1"', '"', "1,5", "+1", "-0", ".5"),
            *("1\x00", "\u0661"),
        ]
    ),
    st.text(max_size=3),
)


@st.composite
def _beat_file(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, or rows of cells that are mostly numbers."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=300))
    columns = draw(st.integers(1, 13))
    separator = draw(st.sampled_from([",", "\t", " "]))
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        width = columns if draw(st.integers(0, 4)) else draw(st.integers(0, 15))
        lines.append(
            separator.join(draw(st.lists(_CELL, min_size=width, max_size=width)))
        )
    if draw(st.booleans()):
        lines.insert(0, ",".join(str(i) for i in range(columns)))
    eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    bom = "\ufeff" if draw(st.booleans()) else ""
    return (bom + eol.join(lines) + eol).encode("utf-8", errors="surrogatepass")


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    data=_beat_file(),
    name=st.sampled_from(["beats.csv", "beats.tsv", "beats.dat", "beats.csv.gz"]),
    layout=st.sampled_from(["auto", "ucr", "binary", "plain"]),
    normal_label=st.sampled_from([None, "1", "0", "1.0", "nan", "", "1e400", "x"]),
    truth=st.booleans(),
    packing=st.sampled_from(["none", "gzip", "truncated gzip"]),
)
def test_fuzz_replay_rows_are_beats_or_a_data_error_naming_the_file(
    tmp_path: Path,
    data: bytes,
    name: str,
    layout: str,
    normal_label: str | None,
    truth: bool,
    packing: str,
) -> None:
    if packing != "none":
        data = gzip.compress(data)
    if packing == "truncated gzip":
        data = data[: len(data) // 2]
    path = tmp_path / name
    path.write_bytes(data)
    settings_ = ProducerSettings(
        data=str(path),
        layout=layout,  # type: ignore[arg-type]
        normal_label=normal_label,
        truth=truth,
    )
    try:
        beats, label = load_replay_beats(settings_)
        rows = PreparedRows.from_beats(beats, label)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert len(rows) == len(beats.beats) > 0
    assert rows.truths[0] in (None, "normal", "abnormal")
    # What the producer would send decodes to the beat, as float32.
    message = decode_beat(encode_beat_text("p0001", 0, 1.0, rows.samples[0]))
    np.testing.assert_array_equal(
        np.asarray(message.samples, dtype=np.float32), beats.beats[0]
    )


@pytest.mark.parametrize("spec", ["x" * 5000, "beats\x00.csv"])
def test_replay_of_a_path_the_system_refuses_is_a_data_error(spec: str) -> None:
    with pytest.raises(DataError):
        load_replay_beats(ProducerSettings(data=spec))
