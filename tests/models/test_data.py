"""Tests of the beat file readers in models.data."""

import gzip
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beatmon.errors import DataError
from models.data import (
    BUILTIN,
    BeatSet,
    canonical_label,
    describe_classes,
    load_beats,
    normal_label_warning,
    resolve_normal_label,
)

BUILTIN_SHA256 = "cd5112f67ef9cc9938e6da68b6618120c72fa7339adbb54a90c23986d89f62e8"
BUILTIN_COUNTS = {"1": 2919, "2": 1767, "3": 96, "4": 194, "5": 24}

Writer = Callable[[str, str], Path]


@pytest.fixture(scope="module")
def ecg5000() -> BeatSet:
    return load_beats(BUILTIN)


@pytest.fixture
def write(tmp_path: Path) -> Writer:
    """Write text to a file under tmp_path, gzip-compressed if the name says so."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        data = text.encode()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        return path

    return _write


def _rng_beats(rows: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, length))


def _ucr_text(labels: list[str], beats: np.ndarray, sep: str = "\t") -> str:
    lines = [
        sep.join([label, *(f"{x:.6f}" for x in beat)])
        for label, beat in zip(labels, beats, strict=True)
    ]
    return "\n".join(lines) + "\n"


def _csv_text(
    beats: np.ndarray,
    labels: list[str] | None = None,
    header: bool = False,
    index: bool = False,
) -> str:
    columns = beats.shape[1] + (labels is not None)
    lines = []
    if header:
        lines.append(",".join([""] * index + [str(i) for i in range(columns)]))
    for row, beat in enumerate(beats):
        cells = [str(row)] * index + [f"{x:.6f}" for x in beat]
        if labels is not None:
            cells.append(labels[row])
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def _load_error(path: Path, layout: str = "auto") -> str:
    with pytest.raises(DataError) as info:
        load_beats(str(path), layout)  # type: ignore[arg-type]
    return str(info.value)


# The bundled set


def test_bundled_set_loads_pooled(ecg5000: BeatSet) -> None:
    assert ecg5000.beats.shape == (5000, 140)
    assert ecg5000.beats.dtype == np.float32
    assert ecg5000.length == 140
    assert ecg5000.class_counts() == BUILTIN_COUNTS
    assert ecg5000.source == "ecg5000"
    assert ecg5000.layout == "ucr"
    assert ecg5000.default_normal_label == "1"
    assert ecg5000.sha256 == BUILTIN_SHA256
    assert ecg5000.labels is not None
    # TRAIN comes first: its first 500 beats hold 292 of class 1.
    assert int(np.sum(ecg5000.labels[:500] == "1")) == 292


def test_bundled_set_rejects_other_layouts() -> None:
    with pytest.raises(DataError, match=r"ecg5000.*'ucr'"):
        load_beats(BUILTIN, "binary")


def test_bundled_describe_marks_class_1_without_warning(ecg5000: BeatSet) -> None:
    lines = describe_classes(ecg5000, None)
    assert lines[0] == "label 1: 2919 beats (58.4%) <- normal"
    assert len(lines) == 5
    assert not any("WARNING" in line for line in lines)


# Readers on small files


@pytest.mark.parametrize("length", [96, 136])
@pytest.mark.parametrize("sep", ["\t", " ", "  "])
def test_ucr_reads_labels_first(write: Writer, length: int, sep: str) -> None:
    beats = _rng_beats(4, length)
    path = write("beats.tsv", _ucr_text(["1", "2.0", "1.00", "3"], beats, sep))
    result = load_beats(str(path))
    assert result.layout == "ucr"
    assert result.length == length
    np.testing.assert_allclose(result.beats, beats, atol=1e-6)
    assert result.labels is not None
    assert result.labels.tolist() == ["1", "2", "1", "3"]
    assert result.default_normal_label is None
    assert result.source == str(path)
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_ucr_skips_blank_lines_and_crlf(write: Writer) -> None:
    text = _ucr_text(["1", "2"], _rng_beats(2, 10)).replace("\n", "\r\n\r\n")
    result = load_beats(str(write("beats.txt", text)))
    assert result.beats.shape == (2, 10)


@pytest.mark.parametrize(("header", "index"), [(1, 1), (1, 0), (0, 1), (0, 0)])
@pytest.mark.parametrize("length", [96, 136])
def test_binary_with_and_without_header_and_index(
    write: Writer, header: bool, index: bool, length: int
) -> None:
    beats = _rng_beats(5, length)
    labels = ["1.0", "0.0", "1.0", "1.0", "0.0"]
    path = write("ecg.csv", _csv_text(beats, labels, header=header, index=index))
    result = load_beats(str(path))
    assert result.layout == "binary"
    assert result.length == length
    np.testing.assert_allclose(result.beats, beats, atol=1e-6)
    assert result.class_counts() == {"0": 2, "1": 3}


def test_binary_named_index_column_is_kept(write: Writer) -> None:
    beats = _rng_beats(3, 9)
    text = _csv_text(beats, ["1", "0", "1"], header=True, index=True)
    path = write("ecg.csv", "idx" + text)
    assert load_beats(str(path), "binary").length == 10


@pytest.mark.parametrize("header", [True, False])
def test_plain_reads_unlabelled_beats(write: Writer, header: bool) -> None:
    beats = _rng_beats(3, 96)
    text = _csv_text(beats)
    if header:
        text = ",".join(f"s{i}" for i in range(96)) + "\n" + text
    result = load_beats(str(write("beats.csv", text)))
    assert result.layout == "plain"
    assert result.labels is None
    assert result.class_counts() == {}
    np.testing.assert_allclose(result.beats, beats, atol=1e-6)


def test_plain_drops_pandas_index(write: Writer) -> None:
    beats = _rng_beats(3, 20)
    text = _csv_text(beats, header=True, index=True)
    result = load_beats(str(write("beats.csv", text)), "plain")
    np.testing.assert_allclose(result.beats, beats, atol=1e-6)


def test_explicit_plain_keeps_label_column_as_sample(write: Writer) -> None:
    path = write("ecg.csv", _csv_text(_rng_beats(3, 10), ["1", "0", "1"]))
    result = load_beats(str(path), "plain")
    assert result.length == 11
    assert result.labels is None


def test_auto_csv_with_many_whole_values_is_plain(write: Writer) -> None:
    beats = np.arange(30 * 12, dtype=float).reshape(30, 12)
    text = "\n".join(",".join(f"{x:g}" for x in row) for row in beats)
    result = load_beats(str(write("counts.csv", text)))
    assert result.layout == "plain"


def test_auto_logs_the_detected_layout(
    write: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    path = write("ecg.csv", _csv_text(_rng_beats(3, 10), ["1", "0", "1"]))
    with caplog.at_level(logging.INFO, logger="models.data"):
        load_beats(str(path))
    assert "layout=binary" in caplog.text
    assert "2 distinct whole numbers" in caplog.text


@pytest.mark.parametrize(
    ("name", "layout"), [("beats.dat", "ucr"), ("beats", "binary")]
)
def test_auto_sniffs_unknown_suffix(write: Writer, name: str, layout: str) -> None:
    beats = _rng_beats(2, 10)
    if layout == "ucr":
        text = _ucr_text(["1", "2"], beats)
    else:
        text = _csv_text(beats, ["1", "2"])
    assert load_beats(str(write(name, text))).layout == layout


@pytest.mark.parametrize("name", ["beats.tsv.gz", "beats.csv.gz", "beats.gz"])
def test_gzip_files_load(write: Writer, name: str) -> None:
    beats = _rng_beats(3, 16)
    if name.startswith("beats.tsv"):
        text = _ucr_text(["1", "2", "1"], beats)
    else:
        text = _csv_text(beats, ["1", "2", "1"], header=True, index=True)
    path = write(name, text)
    result = load_beats(str(path))
    np.testing.assert_allclose(result.beats, beats, atol=1e-6)
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_gzip_without_suffix_is_recognised(write: Writer, tmp_path: Path) -> None:
    plain = write("beats.tsv", _ucr_text(["1", "2"], _rng_beats(2, 12)))
    packed = tmp_path / "packed.tsv"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(
        load_beats(str(packed)).beats, load_beats(str(plain)).beats
    )


# Labels


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("1", "1"), ("1.0", "1"), ("1.00", "1"), ("0.0", "0"), ("-0.0", "0"),
     ("2e0", "2"), ("+3", "3"), ("-1", "-1"), (" 4 ", "4"), ("N", "N")],
)  # fmt: skip
def test_canonical_label(raw: str, canonical: str) -> None:
    assert canonical_label(raw) == canonical


def test_file_labels_are_canonical(write: Writer) -> None:
    labels = ["1", "1.0", "1.00", "0.0", "-0.0", "2e0", "10"]
    path = write("ecg.tsv", _ucr_text(labels, _rng_beats(7, 8)))
    result = load_beats(str(path))
    assert result.labels is not None
    assert result.labels.tolist() == ["1", "1", "1", "0", "0", "2", "10"]
    assert list(result.class_counts()) == ["0", "1", "2", "10"]


def test_non_integer_label_is_an_error(write: Writer) -> None:
    path = write("ecg.tsv", _ucr_text(["1", "2", "1.5"], _rng_beats(3, 8)))
    message = _load_error(path)
    assert f"{path}:3:" in message
    assert "1.5" in message
    assert "not a whole number" in message


def test_normal_mask(write: Writer) -> None:
    path = write("ecg.tsv", _ucr_text(["1", "2", "1.0"], _rng_beats(3, 8)))
    result = load_beats(str(path))
    assert result.normal_mask("1.0").tolist() == [True, False, True]
    with pytest.raises(DataError, match="'7' never occurs"):
        result.normal_mask("7")


def test_normal_mask_needs_labels(write: Writer) -> None:
    path = write("beats.csv", _csv_text(_rng_beats(2, 8)))
    with pytest.raises(DataError, match="has no labels"):
        load_beats(str(path)).normal_mask("1")


# Errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    assert _load_error(path) == f"no such file: {path}"


def test_directory(tmp_path: Path) -> None:
    message = _load_error(tmp_path)
    assert str(tmp_path) in message
    assert "directory" in message


@pytest.mark.parametrize("text", ["", "\n\n", "   \n"])
def test_empty_file(write: Writer, text: str) -> None:
    path = write("beats.csv", text)
    assert _load_error(path) == f"{path} is empty"


def test_header_only(write: Writer) -> None:
    path = write("beats.csv", "a,b,c\n")
    message = _load_error(path)
    assert str(path) in message
    assert "only a header" in message


def test_ragged_rows(write: Writer) -> None:
    lines = _csv_text(_rng_beats(3, 140), header=True).splitlines()
    lines[3] = lines[3].rsplit(",", 2)[0]
    path = write("beats.csv", "\n".join(lines))
    message = _load_error(path, "plain")
    assert message == f"{path}:4: row has 138 values, expected 140 as on line 2"


def test_ragged_ucr_rows(write: Writer) -> None:
    lines = _ucr_text(["1", "2", "3"], _rng_beats(3, 140)).splitlines()
    lines[2] = lines[2].rsplit("\t", 2)[0]
    path = write("beats.tsv", "\n".join(lines))
    message = _load_error(path)
    assert message == f"{path}:3: row has 139 values, expected 141 as on line 1"


def test_non_numeric_value(write: Writer) -> None:
    lines = _ucr_text(["1", "2"], _rng_beats(2, 20)).splitlines()
    cells = lines[1].split("\t")
    cells[16] = "abc"
    lines[1] = "\t".join(cells)
    path = write("beats.tsv", "\n".join(lines))
    assert _load_error(path) == f"{path}:2: column 17 is 'abc', not a number"


def test_empty_cell(write: Writer) -> None:
    path = write("beats.csv", "1,2,3,4,5,6,7,8\n1,2,,4,5,6,7,8\n")
    assert _load_error(path) == f"{path}:2: column 3 is empty, not a number"


def test_non_numeric_label(write: Writer) -> None:
    path = write("ecg.csv", "1,2,3,4,5,6,7,8,N\n1,2,3,4,5,6,7,8,V\n")
    message = _load_error(path, "binary")
    # The first row is taken as a header, so the error is on line 2.
    assert message.startswith(f"{path}:2: column 9 is 'V'")


def test_comma_file_read_as_ucr_gets_a_hint(write: Writer) -> None:
    path = write("ecg.csv", _csv_text(_rng_beats(2, 8), ["1", "0"]))
    message = _load_error(path, "ucr")
    assert f"{path}:1: column 1" in message
    assert "try layout 'binary'" in message


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity", "1e999"])
def test_non_finite_value(write: Writer, bad: str) -> None:
    lines = _csv_text(_rng_beats(3, 10)).splitlines()
    cells = lines[2].split(",")
    cells[4] = bad
    lines[2] = ",".join(cells)
    path = write("beats.csv", "\n".join(lines))
    message = _load_error(path)
    assert message.startswith(f"{path}:3: column 5 is ")
    assert message.endswith("; beats must be finite")


def test_value_too_large_for_float32(write: Writer) -> None:
    path = write("beats.csv", "1,2,3,4,5,6,7,8.5\n1,2,3,4,5e300,6,7,8.5\n")
    message = _load_error(path)
    assert message.startswith(f"{path}:2: column 5 is 5e+300")


def test_short_beat(write: Writer) -> None:
    path = write("beats.tsv", _ucr_text(["1", "2"], _rng_beats(2, 7)))
    message = _load_error(path)
    assert str(path) in message
    assert "7 samples; at least 8" in message


def test_bad_gzip(write: Writer, tmp_path: Path) -> None:
    path = tmp_path / "beats.csv.gz"
    path.write_bytes(gzip.compress(b"1,2,3,4,5,6,7,8\n" * 50)[:40])
    message = _load_error(path)
    assert str(path) in message
    assert "not a valid gzip file" in message


def test_not_gzip_at_all(tmp_path: Path) -> None:
    path = tmp_path / "beats.tsv.gz"
    path.write_text("1 2 3 4 5 6 7 8 9\n")
    assert "not a valid gzip file" in _load_error(path)


def test_undecodable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "beats.csv"
    path.write_bytes(b"1,2,3,4,5,6,7,8\n1,2,\xff\xfe,4,5,6,7,8\n")
    message = _load_error(path)
    assert message.startswith(f"{path}:2: byte 0xff is not UTF-8 text")


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "beats.csv"
    path.write_bytes(b"\xef\xbb\xbf1,2,3,4,5,6,7,8.5\n")
    assert load_beats(str(path)).length == 8


def test_unknown_layout(write: Writer) -> None:
    path = write("beats.csv", "1,2,3,4,5,6,7,8\n")
    assert "unknown layout 'json'" in _load_error(path, "json")


# Which label is normal


@pytest.fixture(scope="module")
def ecg_csv(ecg5000: BeatSet, tmp_path_factory: pytest.TempPathFactory) -> BeatSet:
    """Every fifth bundled beat in the ecg.csv layout: 1.0 normal, 0.0 abnormal."""
    assert ecg5000.labels is not None
    beats = ecg5000.beats[::5].astype(np.float64)
    labels = ["1.0" if label == "1" else "0.0" for label in ecg5000.labels[::5]]
    path = tmp_path_factory.mktemp("ecg") / "ecg.csv"
    path.write_text(_csv_text(beats, labels, header=True, index=True))
    return load_beats(str(path))


def test_ecg_csv_copy_reads_as_binary(ecg_csv: BeatSet) -> None:
    assert ecg_csv.layout == "binary"
    assert ecg_csv.length == 140
    counts = ecg_csv.class_counts()
    assert list(counts) == ["0", "1"]
    assert counts["1"] > counts["0"]


def test_warning_fires_for_normal_label_0(ecg_csv: BeatSet) -> None:
    counts = ecg_csv.class_counts()
    total = counts["0"] + counts["1"]
    warning = normal_label_warning(ecg_csv, "0.0")
    assert warning == (
        f"WARNING: label '0' is called normal but covers only {counts['0']} of "
        f"{total} beats ({100 * counts['0'] / total:.1f}%), fewer than label "
        f"'1' ({counts['1']}). In the common ecg.csv layout 1 means normal. "
        "If that is wrong, pass --normal-label."
    )
    lines = describe_classes(ecg_csv, "0")
    assert lines[0].endswith("<- normal")
    assert lines[-1] == warning


def test_warning_silent_for_normal_label_1(ecg_csv: BeatSet) -> None:
    assert normal_label_warning(ecg_csv, "1") is None
    lines = describe_classes(ecg_csv, "1.0")
    assert len(lines) == 2
    assert lines[1].endswith("<- normal")


def test_warning_for_largest_class_under_half(write: Writer) -> None:
    labels = ["1"] * 4 + ["2"] * 3 + ["3"] * 3
    path = write("ecg.tsv", _ucr_text(labels, _rng_beats(10, 8)))
    warning = normal_label_warning(load_beats(str(path)), "1")
    assert warning is not None
    assert "covers only 4 of 10 beats (40.0%), under half" in warning


def test_resolve_uses_default_of_bundled_set(ecg5000: BeatSet) -> None:
    assert resolve_normal_label(ecg5000, None) == "1"
    assert resolve_normal_label(ecg5000, "2.0") == "2"


def test_resolve_without_default_asks_for_flag(ecg_csv: BeatSet) -> None:
    with pytest.raises(DataError) as info:
        resolve_normal_label(ecg_csv, None)
    message = str(info.value)
    assert ecg_csv.source in message
    assert "--normal-label" in message
    assert "0 (" in message
    assert "1 (" in message


def test_resolve_canonicalises(ecg_csv: BeatSet) -> None:
    assert resolve_normal_label(ecg_csv, "1.0") == "1"
    assert resolve_normal_label(ecg_csv, " 0 ") == "0"


def test_resolve_rejects_absent_label(ecg_csv: BeatSet) -> None:
    with pytest.raises(DataError) as info:
        resolve_normal_label(ecg_csv, "5")
    message = str(info.value)
    assert ecg_csv.source in message
    assert "'5' never occurs" in message
    assert "labels present: 0 (" in message


def test_resolve_needs_labels(write: Writer) -> None:
    path = write("beats.csv", _csv_text(_rng_beats(2, 8)))
    beats = load_beats(str(path))
    with pytest.raises(DataError, match=f"{path} has no labels"):
        resolve_normal_label(beats, "1")
    assert describe_classes(beats, None) == ["no labels: 2 beats of 8 samples"]


def test_describe_rejects_absent_label(ecg5000: BeatSet) -> None:
    with pytest.raises(DataError, match="'9' never occurs"):
        describe_classes(ecg5000, "9")


# Fuzz: whatever the bytes, load or raise DataError


_CELL = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-3, 30).map(str),
    st.sampled_from(["", " ", "nan", "abc", '"1.0"', '"', "1e999", "\t", "1,5"]),
    st.text(max_size=4),
)
_ROW = st.lists(_CELL, min_size=0, max_size=12)
_SEPARATOR = st.sampled_from([",", "\t", " "])


@st.composite
def _file_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    sep = draw(_SEPARATOR)
    rows = draw(st.lists(_ROW, max_size=8))
    text = "\n".join(sep.join(row) for row in rows)
    return text.encode("utf-8", errors="surrogatepass")


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    data=_file_bytes(),
    name=st.sampled_from(["f.csv", "f.tsv", "f.txt", "f.dat", "f.csv.gz"]),
    layout=st.sampled_from(["auto", "ucr", "binary", "plain"]),
    compress=st.booleans(),
)
def test_fuzz_loads_or_raises_data_error(
    tmp_path: Path, data: bytes, name: str, layout: str, compress: bool
) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if compress else data)
    try:
        result = load_beats(str(path), layout)  # type: ignore[arg-type]
    except DataError:
        return
    assert result.beats.dtype == np.float32
    assert result.length >= 8
    assert np.isfinite(result.beats).all()


# Regressions: a damaged first row and unusable paths


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (
            "0.5,0.1x,0.2,0.3,0.4,0.5,0.6,0.7,0.8",
            ":1: column 2 is '0.1x', not a number",
        ),
        ("0.5,,0.2,0.3,0.4,0.5,0.6,0.7,0.8", ":1: column 2 is empty, not a number"),
        ("0.5,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,", ":2: row has 9 values, expected 10"),
        ("a,b,c,d,e,f,g,h", ":1: the header row has 8 names but line 2 has 9"),
    ],
)
def test_a_damaged_first_row_is_reported_not_taken_for_a_header(
    write: Writer, first: str, expected: str
) -> None:
    path = write("beats.csv", first + "\n" + "0.5,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8\n")
    assert _load_error(path, "plain").startswith(f"{path}{expected}")


@pytest.mark.parametrize(
    "header",
    [
        ",".join(str(i) for i in range(9)),
        "," + ",".join(str(i) for i in range(8)),
        ",".join(f"att{i}" for i in range(8)) + ",target",
        "id," + ",".join(str(i) for i in range(1, 9)),
    ],
)
def test_headers_are_still_recognised(write: Writer, header: str) -> None:
    path = write("beats.csv", f"{header}\n0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8\n")
    assert load_beats(str(path), "plain").beats.shape[0] == 1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("x" * 5000, "cannot read xxx"),
        ("beats\x00.csv", "cannot hold a NUL character"),
        ("", "the path is empty"),
    ],
)
def test_paths_the_system_refuses_give_a_data_error(spec: str, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        load_beats(spec)


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "trailing", "empty"])
def test_damaged_gzip_names_the_file(tmp_path: Path, damage: str) -> None:
    packed = gzip.compress(_csv_text(_rng_beats(40, 20)).encode())
    data = {
        "truncated": packed[: len(packed) // 2],
        "corrupt": packed[:30] + bytes(b ^ 0xFF for b in packed[30:40]) + packed[40:],
        "trailing": packed + b"\x1f\x8bnot gzip",
        "empty": packed[:10],
    }[damage]
    path = tmp_path / "beats.csv.gz"
    path.write_bytes(data)
    message = _load_error(path)
    assert message.startswith(f"{path}: not a valid gzip file")


# Fuzz: a fault put in a row is reported at that row's line, whatever the
# decoration (BOM, CRLF, blank lines, a header, an index, gzip); without a
# fault the decoration changes nothing.

_FAULTS = [
    "text",
    "empty",
    "nan",
    "inf",
    "1e400",
    "float32",
    "ragged-short",
    "ragged-long",
    "label-fraction",
    "label-text",
]


@st.composite
def _decorated_file(draw: st.DrawFn, fault: bool) -> tuple[str, str, bytes, int, str]:
    """(layout, kind of fault, file bytes, line of the fault, name)."""
    layout = draw(st.sampled_from(["ucr", "binary", "plain"]))
    rows, samples = draw(st.integers(2, 5)), draw(st.integers(8, 11))
    header = layout != "ucr" and draw(st.booleans())
    index = layout != "ucr" and draw(st.booleans())
    table = []
    for row in range(rows):
        cells = [f"{draw(st.floats(-5, 5)):.5f}" for _ in range(samples)]
        if layout == "ucr":
            cells.insert(0, str(draw(st.integers(1, 3))))
        if layout == "binary":
            cells.append(draw(st.sampled_from(["0", "1", "1.0"])))
        table.append([str(row)] * index + cells)

    kind = draw(st.sampled_from(_FAULTS)) if fault else "none"
    if layout == "plain" and kind.startswith("label"):
        kind = "text"
    # A ragged row is measured against the first one, so never the first.
    at = draw(st.integers(1 if kind.startswith("ragged") else 0, rows - 1))
    first = int(layout == "ucr") + int(index)
    column = draw(st.integers(first, first + samples - 1))
    label = 0 if layout == "ucr" else len(table[at]) - 1
    replacement = {
        "text": "0.1x",
        "empty": "",
        "nan": "nan",
        "inf": "-inf",
        "1e400": "1e400",
        "float32": "1e39",
    }
    if kind in replacement:
        table[at][column] = replacement[kind]
    elif kind == "ragged-short":
        del table[at][column]
    elif kind == "ragged-long":
        table[at].insert(column, "0.5")
    elif kind == "label-fraction":
        table[at][label] = "1.5"
    elif kind == "label-text":
        table[at][label] = "normal"

    separator = "\t" if layout == "ucr" else ","
    lines = [separator.join(cells) for cells in table]
    if header:
        names = [str(i) for i in range(len(table[0]) - index)]
        lines.insert(0, ",".join([""] * index + names))
    blank = draw(st.integers(0, 2))
    lines = [""] * blank + lines
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    bom = "\ufeff" if draw(st.booleans()) else ""
    data = (bom + eol.join(lines) + eol).encode()
    name = "beats.csv"
    if draw(st.booleans()):
        data, name = gzip.compress(data), "beats.csv.gz"
    return layout, kind, data, blank + header + at + 1, name


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=_decorated_file(fault=True))
def test_fuzz_a_fault_is_reported_at_its_line(
    tmp_path: Path, case: tuple[str, str, bytes, int, str]
) -> None:
    layout, kind, data, line, name = case
    path = tmp_path / name
    path.write_bytes(data)
    message = _load_error(path, layout)
    if layout == "ucr" and kind == "empty":
        # Runs of tabs are one separator in this layout: the row comes out short.
        assert f"as on line {line}" in message or f"{path}:{line}:" in message
    else:
        assert message.startswith(f"{path}:{line}: "), (kind, message)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=_decorated_file(fault=False))
def test_fuzz_decoration_changes_nothing(
    tmp_path: Path, case: tuple[str, str, bytes, int, str]
) -> None:
    layout, _, data, _, name = case
    path = tmp_path / name
    path.write_bytes(data)
    decorated = load_beats(str(path), layout)  # type: ignore[arg-type]
    text = (gzip.decompress(data) if name.endswith(".gz") else data).decode()
    lines = [line for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(lines) + "\n")
    expected = load_beats(str(plain), layout)  # type: ignore[arg-type]
    np.testing.assert_array_equal(decorated.beats, expected.beats)
    assert decorated.length >= 8 and np.isfinite(decorated.beats).all()
    if expected.labels is None:
        assert decorated.labels is None
    else:
        assert decorated.labels is not None
        assert decorated.labels.tolist() == expected.labels.tolist()
