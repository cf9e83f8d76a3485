"""Read beat files: the bundled ECG5000 set, UCR text files and comma-separated files.

Every reader returns a :class:`BeatSet`: beats as float32 rows of equal length
(the length comes from the file), canonical label strings when the file has
labels, and the sha256 of the bytes read so a trained model can name its data.
Anything wrong with a file raises :class:`beatmon.errors.DataError` naming the
file, the line and the problem.
"""

import csv
import gzip
import hashlib
import logging
import re
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from beatmon.errors import DataError

logger = logging.getLogger(__name__)

Layout = Literal["auto", "ucr", "binary", "plain"]
BUILTIN = "ecg5000"

MIN_BEAT_SAMPLES = 8
# A ``.csv`` file whose last column holds at most this many distinct whole
# numbers is read as labelled (layout "binary"); otherwise as unlabelled beats.
MAX_AUTO_CLASSES = 20

_BUILTIN_FILES = ("ECG5000_TRAIN.tsv.gz", "ECG5000_TEST.tsv.gz")
_BUILTIN_NORMAL_LABEL = "1"
_GZIP_MAGIC = b"\x1f\x8b"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True, eq=False)
class BeatSet:
    """Beats read from one data spec.

    ``beats`` is float32 with shape (n, length); ``labels`` holds one
    canonical label string per beat ("1", not "1.0"), or is None when the
    file has no labels.
    """

    beats: np.ndarray
    labels: np.ndarray | None
    source: str
    sha256: str
    layout: str
    default_normal_label: str | None = None

    def __post_init__(self) -> None:
        if self.beats.ndim != 2:
            raise ValueError(f"beats must be 2-D, got shape {self.beats.shape}")
        if self.labels is not None and len(self.labels) != len(self.beats):
            raise ValueError(f"{len(self.labels)} labels for {len(self.beats)} beats")

    @property
    def length(self) -> int:
        """Samples per beat."""
        return int(self.beats.shape[1])

    def class_counts(self) -> dict[str, int]:
        """Beats per label, ordered by label; empty when unlabelled."""
        if self.labels is None:
            return {}
        names, counts = np.unique(self.labels.astype(str), return_counts=True)
        pairs = zip(names.tolist(), counts.tolist(), strict=True)
        return dict(sorted(pairs, key=lambda pair: _label_order(pair[0])))

    def normal_mask(self, normal_label: str) -> np.ndarray:
        """Boolean mask of the beats whose label is ``normal_label``.

        "1.0" matches label "1". Raises DataError when the set is unlabelled
        or the label never occurs.
        """
        if self.labels is None:
            raise DataError(_no_labels_message(self.source))
        label = canonical_label(normal_label)
        mask = np.asarray(self.labels == label, dtype=bool)
        if not mask.any():
            raise DataError(
                f"{self.source}: label {label!r} never occurs; labels present: "
                f"{_format_counts(self.class_counts())}"
            )
        return mask


def canonical_label(label: str) -> str:
    """The canonical form of a label given by a user: "1.0" and "1" are "1".

    Anything else comes back with surrounding spaces removed.
    """
    text = label.strip()
    try:
        value = float(text)
    except ValueError:
        return text
    if np.isfinite(value) and value == int(value):
        return str(int(value))
    return text


def load_beats(spec: str, layout: Layout = "auto") -> BeatSet:
    """Read beats from ``spec``: "ecg5000" (the bundled set) or a file path.

    ``layout`` is "ucr" (whitespace-separated, label first), "binary"
    (comma-separated, label last, optional header and index column), "plain"
    (comma-separated, no labels) or "auto" (chosen from the file name and
    content). Files ending in ``.gz`` are decompressed. ``sha256`` covers the
    bytes as stored on disk. Raises DataError for anything unreadable.
    """
    if layout not in get_args(Layout):
        raise DataError(
            f"unknown layout {layout!r}; use one of {', '.join(get_args(Layout))}"
        )
    if spec == BUILTIN:
        return _load_builtin(layout)

    raw = _read_bytes(Path(spec), spec)
    parsed = _parse(_decode(raw, spec), spec, layout)
    beats = BeatSet(
        beats=parsed.beats,
        labels=parsed.labels,
        source=spec,
        sha256=hashlib.sha256(raw).hexdigest(),
        layout=parsed.layout,
        default_normal_label=None,
    )
    _log_loaded(beats)
    return beats


def resolve_normal_label(beats: BeatSet, normal_label: str | None) -> str:
    """The label to treat as normal: ``normal_label`` or the set's default.

    Raises DataError when the set has no labels, when no label was given and
    the set has no default, or when the label never occurs.
    """
    if beats.labels is None:
        raise DataError(_no_labels_message(beats.source))
    counts = beats.class_counts()
    if normal_label is None:
        if beats.default_normal_label is None:
            raise DataError(
                f"{beats.source}: which label marks normal beats is not known; "
                f"pass --normal-label. Labels found: {_format_counts(counts)}"
            )
        normal_label = beats.default_normal_label
    label = canonical_label(normal_label)
    if label not in counts:
        raise DataError(
            f"{beats.source}: normal label {label!r} never occurs; labels "
            f"present: {_format_counts(counts)}. Pass one of them as "
            "--normal-label."
        )
    return label


def normal_label_warning(beats: BeatSet, normal_label: str) -> str | None:
    """A warning when the class called normal looks implausible, else None.

    Implausible means it is not the largest class or covers under half of
    the beats. Raises DataError as :func:`resolve_normal_label` does.
    """
    label = resolve_normal_label(beats, normal_label)
    counts = beats.class_counts()
    total = sum(counts.values())
    normal_count = counts[label]
    largest, largest_count = max(counts.items(), key=lambda pair: pair[1])
    is_smaller = normal_count < largest_count
    if not is_smaller and normal_count * 2 >= total:
        return None

    text = (
        f"WARNING: label {label!r} is called normal but covers only "
        f"{normal_count} of {total} beats ({100 * normal_count / total:.1f}%)"
    )
    if is_smaller:
        text += f", fewer than label {largest!r} ({largest_count})."
    else:
        text += ", under half of the beats."
    if label == "0" and set(counts) == {"0", "1"}:
        text += " In the common ecg.csv layout 1 means normal."
    else:
        text += " An autoencoder of normal beats expects them to be the bulk."
    return text + " If that is wrong, pass --normal-label."


def describe_classes(beats: BeatSet, normal_label: str | None) -> list[str]:
    """Printable lines: beats per class, the normal one marked, then a warning.

    With ``normal_label`` None the set's default normal label is marked, if
    it has one. Raises DataError when a given label never occurs.
    """
    if beats.labels is None:
        return [f"no labels: {len(beats.beats)} beats of {beats.length} samples"]
    if normal_label is None:
        normal_label = beats.default_normal_label
    label = None
    if normal_label is not None:
        label = resolve_normal_label(beats, normal_label)

    counts = beats.class_counts()
    total = sum(counts.values())
    lines = []
    for name, count in counts.items():
        line = f"label {name}: {count} beats ({100 * count / total:.1f}%)"
        lines.append(line + (" <- normal" if name == label else ""))
    if label is not None:
        warning = normal_label_warning(beats, label)
        if warning is not None:
            lines.append(warning)
    return lines


# Reading bytes


def _load_builtin(layout: Layout) -> BeatSet:
    if layout not in ("auto", "ucr"):
        raise DataError(
            f"{BUILTIN}: the bundled set is in layout 'ucr', not {layout!r}; "
            "leave the layout as 'auto'"
        )
    folder = resources.files("models") / "datasets" / BUILTIN
    digest = hashlib.sha256()
    parts = []
    for name in _BUILTIN_FILES:
        resource = folder / name
        try:
            raw = resource.read_bytes()
        except OSError as exc:
            raise DataError(
                f"bundled file missing or unreadable: {resource} ({exc}); "
                "reinstall beatmon"
            ) from exc
        digest.update(raw)
        parts.append(_parse(_decode(raw, str(resource)), str(resource), "ucr"))

    lengths = {part.beats.shape[1] for part in parts}
    if len(lengths) != 1:
        raise DataError(f"{BUILTIN}: bundled files disagree on beat length")
    labels = [part.labels for part in parts if part.labels is not None]
    beats = BeatSet(
        beats=np.concatenate([part.beats for part in parts]),
        labels=np.concatenate(labels),
        source=BUILTIN,
        sha256=digest.hexdigest(),
        layout="ucr",
        default_normal_label=_BUILTIN_NORMAL_LABEL,
    )
    _log_loaded(beats)
    return beats


def _read_bytes(path: Path, name: str) -> bytes:
    if not name.strip():
        raise DataError("no beat file given: the path is empty")
    if "\x00" in name:
        raise DataError(f"{name!r}: a file name cannot hold a NUL character")
    try:
        if path.is_dir():
            raise DataError(f"{name} is a directory; give the path of a beat file")
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"no such file: {name}") from exc
    except OSError as exc:
        raise DataError(f"cannot read {name}: {exc.strerror or exc}") from exc

    return raw


def _decode(raw: bytes, name: str) -> str:
    content = raw
    if name.endswith(".gz") or raw.startswith(_GZIP_MAGIC):
        content = _gunzip(raw, name)
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{name}:{line}: byte 0x{content[exc.start]:02x} is not UTF-8 text; "
            "a beat file must be plain text (optionally gzip-compressed)"
        ) from exc


def _gunzip(raw: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{name}: not a valid gzip file ({exc}); decompress it or check "
            "that the download is complete"
        ) from exc


# Parsing text


@dataclass(frozen=True, eq=False)
class _Parsed:
    beats: np.ndarray
    labels: np.ndarray | None
    layout: str


def _parse(text: str, name: str, layout: Layout) -> _Parsed:
    if layout == "auto":
        comma_separated, reason = _guess_separator(text, name)
        if not comma_separated:
            logger.info("beat file layout: path=%s layout=ucr reason=%s", name, reason)
    else:
        comma_separated = layout != "ucr"

    line_nos, rows = _split_rows(text, name, comma_separated)
    header = None
    if comma_separated and rows and _is_header(rows[0]):
        header = [cell.strip() for cell in rows[0]]
        if len(rows) > 1 and len(rows[1]) != len(header):
            raise DataError(
                f"{name}:{line_nos[0]}: the header row has {len(header)} names but "
                f"line {line_nos[1]} has {len(rows[1])} values; if line "
                f"{line_nos[0]} is a beat, a value in it is not a number"
            )
        line_nos, rows = line_nos[1:], rows[1:]
    if not rows:
        problem = "has only a header row, no beats" if header else "is empty"
        raise DataError(f"{name} {problem}")
    matrix = _to_matrix(rows, line_nos, name, comma_separated)

    if not comma_separated:
        labels = _canonical_labels(matrix[:, 0], line_nos, 1, name, "ucr")
        return _Parsed(_beats32(matrix, 1, None, line_nos, name), labels, "ucr")

    first = 1 if _has_index_column(header, matrix) else 0
    if first:
        logger.debug("dropping index column: path=%s", name)
    if layout == "auto":
        layout, reason = _guess_labelled(matrix[:, first:])
        logger.info(
            "beat file layout: path=%s layout=%s reason=%s", name, layout, reason
        )
    if layout == "plain":
        return _Parsed(_beats32(matrix, first, None, line_nos, name), None, "plain")
    width = matrix.shape[1]
    labels = _canonical_labels(matrix[:, -1], line_nos, width, name, "binary")
    beats = _beats32(matrix, first, width - 1, line_nos, name)
    return _Parsed(beats, labels, "binary")


def _guess_separator(text: str, name: str) -> tuple[bool, str]:
    """Whether an auto-layout file is comma-separated, and why."""
    stem = name.removesuffix(".gz").lower()
    if stem.endswith((".tsv", ".txt")):
        return False, f"name ends in {Path(stem).suffix}"
    if stem.endswith(".csv"):
        return True, "name ends in .csv"
    first_line = next((line for line in text.split("\n") if line.strip()), "")
    if "," in first_line:
        return True, "first line has commas"
    return False, "no commas on the first line"


def _guess_labelled(matrix: np.ndarray) -> tuple[Layout, str]:
    """Whether the last column of a comma-separated file holds class labels."""
    if matrix.shape[1] < 2:
        return "plain", "only one column"
    last = matrix[:, -1]
    if not np.all(last == np.round(last)):
        return "plain", "last column has values that are not whole numbers"
    distinct = len(np.unique(last))
    if distinct > MAX_AUTO_CLASSES:
        return "plain", (
            f"last column holds {distinct} distinct values, "
            f"more than {MAX_AUTO_CLASSES} classes"
        )
    return "binary", f"last column holds {distinct} distinct whole numbers"


def _split_rows(
    text: str, name: str, comma_separated: bool
) -> tuple[list[int], list[list[str]]]:
    """Cells of each non-blank line, with 1-based line numbers."""
    line_nos = []
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if not comma_separated:
            cells = line.split()
        elif '"' in line:
            cells = _quoted_cells(line, name, number)
        else:
            cells = line.split(",")
        line_nos.append(number)
        rows.append(cells)
    return line_nos, rows


def _quoted_cells(line: str, name: str, number: int) -> list[str]:
    try:
        return next(csv.reader([line]), [])
    except csv.Error as exc:
        raise DataError(f"{name}:{number}: cannot split the row: {exc}") from exc


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _is_header(cells: list[str]) -> bool:
    """A first row of column names: 0, 1, 2, ... (after an empty cell when
    pandas wrote an index), or text among numbers written as integers.

    A row with a number such as ``0.25`` or ``1e-3`` is a beat even with a bad
    cell in it, so a damaged first row is reported, not dropped as a header.
    """
    names = [cell.strip() for cell in cells]
    counting = [str(i) for i in range(len(names))]
    if names in (counting, ["", *counting[:-1]]):
        return True
    numbers = [name for name in names if _is_number(name)]
    if len(numbers) == len(names):
        return False
    return all(_INTEGER.fullmatch(name) for name in numbers)


def _has_index_column(header: list[str] | None, matrix: np.ndarray) -> bool:
    """Whether column 1 is a row index as pandas writes it."""
    if matrix.shape[1] < 2:
        return False
    if header is not None:
        return header[0] == ""
    rows = matrix.shape[0]
    return rows >= 2 and bool(np.array_equal(matrix[:, 0], np.arange(rows)))


def _to_matrix(
    rows: list[list[str]], line_nos: list[int], name: str, comma_separated: bool
) -> np.ndarray:
    """All cells as float64, finite; raises DataError at the first bad cell."""
    expected = len(rows[0])
    for number, cells in zip(line_nos, rows, strict=True):
        if len(cells) != expected:
            raise DataError(
                f"{name}:{number}: row has {len(cells)} values, expected "
                f"{expected} as on line {line_nos[0]}"
            )
    try:
        matrix = np.array(rows, dtype=np.float64)
    except ValueError:
        _raise_first_bad_cell(rows, line_nos, name, comma_separated)
        raise DataError(f"{name}: cannot read the values as numbers") from None

    bad = ~np.isfinite(matrix)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{name}:{line_nos[row]}: column {column + 1} is "
            f"{matrix[row, column]}; beats must be finite"
        )
    return matrix


def _raise_first_bad_cell(
    rows: list[list[str]], line_nos: list[int], name: str, comma_separated: bool
) -> None:
    for number, cells in zip(line_nos, rows, strict=True):
        for column, cell in enumerate(cells, start=1):
            try:
                np.array([cell], dtype=np.float64)
            except ValueError:
                shown = "empty" if not cell.strip() else repr(_shorten(cell))
                hint = ""
                if not comma_separated and "," in cell:
                    hint = " (the file looks comma-separated: try layout 'binary')"
                raise DataError(
                    f"{name}:{number}: column {column} is {shown}, not a number{hint}"
                ) from None


def _shorten(cell: str, limit: int = 40) -> str:
    return cell if len(cell) <= limit else cell[: limit - 3] + "..."


def _canonical_labels(
    values: np.ndarray, line_nos: list[int], column: int, name: str, layout: str
) -> np.ndarray:
    """Whole-number label values as canonical strings: 1.0 becomes "1"."""
    whole = values == np.round(values)
    if not whole.all():
        row = int(np.argmin(whole))
        hint = (
            "is the first column really the label?"
            if layout == "ucr"
            else "if the file has no labels, use layout 'plain'"
        )
        raise DataError(
            f"{name}:{line_nos[row]}: label {values[row]:g} in column {column} "
            f"is not a whole number; a label must be a class ({hint})"
        )
    uniques, inverse = np.unique(values, return_inverse=True)
    names = np.array([str(int(value)) for value in uniques], dtype=object)
    return names[inverse.reshape(-1)]


def _beats32(
    matrix: np.ndarray, start: int, stop: int | None, line_nos: list[int], name: str
) -> np.ndarray:
    """Columns ``start:stop`` as float32 beats of at least MIN_BEAT_SAMPLES."""
    beats = matrix[:, start:stop]
    if beats.shape[1] < MIN_BEAT_SAMPLES:
        raise DataError(
            f"{name}: beats have {beats.shape[1]} samples; at least "
            f"{MIN_BEAT_SAMPLES} are needed (is the layout right?)"
        )
    too_large = np.abs(beats) > _FLOAT32_MAX
    if too_large.any():
        row, column = (int(i) for i in np.argwhere(too_large)[0])
        raise DataError(
            f"{name}:{line_nos[row]}: column {start + column + 1} is "
            f"{beats[row, column]:g}, too large for a float32 sample"
        )
    return beats.astype(np.float32)


# Messages


def _label_order(label: str) -> tuple[int, int, str]:
    try:
        return (0, int(label), "")
    except ValueError:
        return (1, 0, label)


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{label} ({count} beats)" for label, count in counts.items())


def _no_labels_message(source: str) -> str:
    return (
        f"{source} has no labels; a labelled file is needed to tell normal beats "
        "from the rest (layout 'ucr' or 'binary')"
    )


def _log_loaded(beats: BeatSet) -> None:
    logger.info(
        "loaded beats: source=%s beats=%s length=%s layout=%s labelled=%s",
        beats.source,
        len(beats.beats),
        beats.length,
        beats.layout,
        beats.labels is not None,
    )
