"""Wire formats of the Kafka messages, versioned.

Every message is one UTF-8 JSON object with a version field ``v``. A reader
refuses a version it does not know rather than guessing. The README lists
the same schemas.

Beat, version 1 (topic ``beatmon.beats``; the key is the patient id, so one
patient's beats stay in order on one partition)::

    {"v": 1, "patient": "p0007", "seq": 42, "produced_at": 1764763200.125,
     "samples": [-0.11, 0.42, ...], "truth": "abnormal"}

- ``patient``: non-empty string, at most 64 characters;
- ``seq``: the beat's number for this patient, an integer from 0 to 2**63 - 1
  (a signed 64-bit integer, which every consumer can hold);
- ``produced_at``: when the beat was produced, Unix time in seconds;
- ``samples``: the beat, a list of finite numbers;
- ``truth``: optional ground truth, ``"normal"`` or ``"abnormal"``.

The text must be UTF-8 throughout and name each field once: a field given
twice is refused, since JSON parsers disagree on which value wins. Fields
not listed here are ignored, so a newer producer can add some.

A producer that sends the same beat many times can render its samples once
with :func:`samples_text` and build each message with
:func:`encode_beat_text`, which gives the same layout as :func:`encode_beat`.

Alert, version 1 (topic ``beatmon.alerts``; key: the patient id)::

    {"v": 1, "alert_id": "3f1c...", "patient": "p0007", "seq": 42,
     "error": 0.912, "threshold": 0.286, "model": "dense",
     "model_version": "dense-20261203T130503Z-f501c00c",
     "beat_time": 1764763200.125, "emitted_at": 1764763200.139,
     "profile": [0.05, 0.07, ...], "truth": "abnormal"}

- ``alert_id``: derived from the model version, patient and seq, so the same
  beat scored by the same model always gives the same id; subscribers drop
  duplicates by it;
- ``error`` and ``threshold``: mean squared reconstruction error of the beat
  and the threshold it exceeded, in the model's scaled units;
- ``profile``: the mean squared error in each of ten equal stretches of the
  beat, first to last, which shows where in the beat the deviation lies;
- ``beat_time``: the beat's ``produced_at``; ``emitted_at``: when the alert
  was built, Unix seconds;
- ``truth``: copied from the beat when it carried one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from beatmon.errors import MessageError

BEAT_VERSION = 1
ALERT_VERSION = 1
MAX_PATIENT_ID = 64
MAX_SEQ = 2**63 - 1
MAX_SAMPLE = 1e6
# Reasons travel in dead-letter headers and log lines: a value from the
# message is shown cut short, and a whole reason never runs longer than this.
MAX_REASON_CHARS = 300
TRUTH_VALUES = ("normal", "abnormal")

Truth = Literal["normal", "abnormal"]


@dataclass(frozen=True)
class Beat:
    """One decoded beat message."""

    patient: str
    seq: int
    produced_at: float
    samples: Sequence[float] | np.ndarray
    truth: Truth | None = None

    def encode(self) -> bytes:
        samples = self.samples
        data: dict[str, Any] = {
            "v": BEAT_VERSION,
            "patient": self.patient,
            "seq": self.seq,
            "produced_at": self.produced_at,
            "samples": samples.tolist() if isinstance(samples, np.ndarray) else samples,
        }
        if self.truth is not None:
            data["truth"] = self.truth
        return json.dumps(data, separators=(",", ":")).encode()


def encode_beat(
    patient: str,
    seq: int,
    produced_at: float,
    samples: Sequence[float] | np.ndarray,
    truth: Truth | None = None,
) -> bytes:
    """Encode one beat message; ``samples`` should already be rounded as wanted."""
    return Beat(patient, seq, produced_at, samples, truth).encode()


def samples_text(values: Sequence[float] | np.ndarray) -> str:
    """The JSON array of ``values`` as float32, each in its shortest exact form.

    Decoding the text and rounding to float32 gives the values back exactly.
    Raises :class:`MessageError` for an empty, non-1-D or non-finite input.
    """
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise MessageError(f"samples must be a non-empty list, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise MessageError("samples must be finite")
    # str() of a NumPy float32 is its shortest round-trip decimal, and valid JSON.
    return "[" + ",".join(map(str, array)) + "]"


@functools.lru_cache(maxsize=65536)
def _json_string(text: str) -> str:
    return json.dumps(text)


_TRUTH_TAIL: dict[str | None, str] = {
    None: "}",
    "normal": ',"truth":"normal"}',
    "abnormal": ',"truth":"abnormal"}',
}


def encode_beat_text(
    patient: str,
    seq: int,
    produced_at: float,
    samples_json: str,
    truth: Truth | None = None,
) -> bytes:
    """Encode one beat message from samples already rendered by :func:`samples_text`.

    Gives the field order and spacing of :func:`encode_beat`; ``produced_at``
    is Unix time in seconds.
    """
    tail = _TRUTH_TAIL.get(truth)
    if tail is None:
        raise MessageError(f"truth {truth!r} is neither 'normal' nor 'abnormal'")
    return (
        f'{{"v":{BEAT_VERSION},"patient":{_json_string(patient)},"seq":{seq:d},'
        f'"produced_at":{float(produced_at)!r},"samples":{samples_json}{tail}'
    ).encode()


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in data:
        raise MessageError(f"field {name!r} is missing")
    value = data[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MessageError(f"field {name!r} has type {type(value).__name__}")
    return value


class _WireBeat(msgspec.Struct, frozen=True):
    """A version 1 beat as it arrives; msgspec checks the types while parsing."""

    v: Literal[1]
    patient: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATIENT_ID)]
    seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
    produced_at: float
    samples: list[float]
    truth: Truth | None = None


_WIRE_BEAT = msgspec.json.Decoder(_WireBeat)
# The top-level members as raw JSON text, to find a field given twice.
_WIRE_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENCODER = msgspec.json.Encoder()

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = _SHOWN.maxlong = 40


def _shown(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters, for an error message."""
    return _SHOWN.repr(value)


@dataclass(frozen=True)
class DecodedBatch:
    """The result of :func:`decode_beats`.

    ``beats[k]`` came from ``payloads[positions[k]]``, and its samples are row
    ``k`` of ``samples`` when all rows have one length. ``refused`` lists
    ``(position, reason)`` for every payload that is not a valid beat.
    """

    beats: list[Beat]
    positions: list[int]
    samples: np.ndarray
    refused: list[tuple[int, str]]


def decode_beats(
    payloads: Sequence[bytes | None], length: int | None = None
) -> DecodedBatch:
    """Decode and validate many beat messages at once.

    ``length`` is the number of samples the model expects, when known.
    Parsing and type checks happen in msgspec's C code, and the samples of
    the whole batch become one float64 matrix; a payload that fails is
    decoded again by the plain JSON path, whose errors name what is wrong.
    """
    wire: list[_WireBeat] = []
    positions: list[int] = []
    refused: list[tuple[int, str]] = []
    for i, payload in enumerate(payloads):
        try:
            if payload is None:
                raise MessageError("empty message (tombstone)")
            try:
                beat = _WIRE_BEAT.decode(payload)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                # The plain JSON path names the fault better; when it finds
                # none, a field given twice may be what msgspec tripped on.
                _decode_slowly(payload, length)
                _check_text(payload)
                raise MessageError(str(exc)) from None
            except RecursionError:
                raise MessageError("not JSON: nested too deeply") from None
            _check_text(payload)
            if length is not None and len(beat.samples) != length:
                raise MessageError(
                    f"beat has {len(beat.samples)} samples, the model expects {length}"
                )
            if not beat.samples:
                raise MessageError("beat has no samples")
            if not math.isfinite(beat.produced_at):
                raise MessageError("produced_at is not finite")
        except MessageError as exc:
            refused.append((i, _clip(str(exc))))
            continue
        wire.append(beat)
        positions.append(i)

    # msgspec already refused NaN and infinities; huge values remain to check.
    if wire and len({len(beat.samples) for beat in wire}) == 1:
        matrix = np.array([beat.samples for beat in wire], dtype=np.float64)
        rows = list(matrix)
    else:
        rows = [np.array(beat.samples, dtype=np.float64) for beat in wire]
        matrix = np.empty((0, length or 0))
    if len(matrix):
        too_big = set(
            np.flatnonzero((np.abs(matrix) > MAX_SAMPLE).any(axis=1)).tolist()
        )
    else:
        too_big = {k for k, row in enumerate(rows) if (np.abs(row) > MAX_SAMPLE).any()}
    for k in sorted(too_big):
        j = int(np.argmax(np.abs(rows[k]) > MAX_SAMPLE))
        refused.append(
            (
                positions[k],
                f"sample {j} is {float(rows[k][j])!r}; samples must be finite and "
                f"within ±{MAX_SAMPLE:g}",
            )
        )
    keep = [k for k in range(len(wire)) if k not in too_big]
    refused.sort()
    return DecodedBatch(
        beats=[
            Beat(
                wire[k].patient,
                wire[k].seq,
                wire[k].produced_at,
                rows[k],
                wire[k].truth,
            )
            for k in keep
        ],
        positions=[positions[k] for k in keep],
        samples=matrix[keep] if len(matrix) else np.empty((0, length or 0)),
        refused=refused,
    )


def decode_beat(payload: bytes | None, length: int | None = None) -> Beat:
    """Decode and validate one beat message.

    ``length`` is the number of samples the model expects, when known. Raises
    :class:`MessageError` with a reason for anything that is not a valid beat.
    """
    decoded = decode_beats([payload], length)
    if decoded.refused:
        raise MessageError(decoded.refused[0][1])
    return decoded.beats[0]


def _clip(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 1] + "…"


def _check_text(payload: bytes) -> None:
    """Refuse what msgspec lets through: bytes that are not UTF-8 in a field
    it skips, and a top-level field given twice (msgspec keeps the last)."""
    if not payload.isascii():
        try:
            payload.decode()
        except UnicodeDecodeError as exc:
            raise MessageError(f"not UTF-8: {exc}") from None
    try:
        members = _WIRE_MEMBERS.decode(payload)
    except RecursionError:
        raise MessageError("not JSON: nested too deeply") from None
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MessageError(str(exc)) from None
    # Written again without spaces and with the shortest escapes, the members
    # give the same length only if none was dropped as a repeat; spaces or
    # long escapes in the original make the lengths differ, and then the
    # plain JSON parser lists the members to compare.
    if len(_ENCODER.encode(members)) == len(payload):
        return
    names: list[str] = []

    def collect(pairs: list[tuple[str, Any]]) -> None:
        # Inner objects finish first, so the top-level object comes last.
        names[:] = [name for name, _ in pairs]

    try:
        json.loads(
            payload,
            object_pairs_hook=collect,
            parse_int=len,
            parse_float=len,
            parse_constant=len,
        )
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"not JSON: {exc}") from None
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise MessageError(
                f"field {_shown(name)} is given more than once; JSON readers "
                "disagree on which value counts"
            )
        seen.add(name)


def _decode_slowly(payload: bytes, length: int | None) -> Beat:
    """The plain JSON path: slower, but its errors say exactly what is wrong."""
    try:
        data = json.loads(payload)
    except RecursionError:
        raise MessageError("not JSON: nested too deeply") from None
    except ValueError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    may_hold_bools = b"true" in payload or b"false" in payload
    return beat_from_json(data, length, may_hold_bools=may_hold_bools)


def beat_from_json(
    data: Any, length: int | None = None, *, may_hold_bools: bool = True
) -> Beat:
    """Validate an already parsed beat message; see :func:`decode_beat`.

    ``may_hold_bools=False`` promises that the JSON text had no ``true`` or
    ``false`` in it, which lets the samples be checked in one NumPy call.
    """
    if not isinstance(data, dict):
        raise MessageError(f"a beat must be a JSON object, not {type(data).__name__}")
    version = data.get("v")
    if type(version) is not int or version != BEAT_VERSION:
        raise MessageError(f"unknown beat schema version {_shown(version)}")
    patient = _field(data, "patient", str)
    if not patient or len(patient) > MAX_PATIENT_ID:
        raise MessageError(f"patient id must have 1 to {MAX_PATIENT_ID} characters")
    seq = _field(data, "seq", int)
    if seq < 0:
        raise MessageError(f"seq {_shown(seq)} is negative")
    if seq > MAX_SEQ:
        raise MessageError(f"seq {_shown(seq)} is above 2**63 - 1")
    try:
        produced_at = float(_field(data, "produced_at", (int, float)))
    except OverflowError:
        raise MessageError("produced_at is too large for a float") from None
    if not math.isfinite(produced_at):
        raise MessageError("produced_at is not finite")
    samples = _field(data, "samples", list)
    if length is not None and len(samples) != length:
        raise MessageError(
            f"beat has {len(samples)} samples, the model expects {length}"
        )
    if not samples:
        raise MessageError("beat has no samples")
    truth = data.get("truth")
    if truth is not None and truth not in TRUTH_VALUES:
        raise MessageError(f"truth {_shown(truth)} is neither 'normal' nor 'abnormal'")
    values = _sample_array(samples, may_hold_bools)
    return Beat(patient, seq, produced_at, values, truth)


def _sample_array(samples: list[Any], may_hold_bools: bool) -> np.ndarray:
    """The samples as float64, or a MessageError naming the first bad one."""
    # NumPy would quietly turn booleans into 0 and 1, so each sample's type is
    # checked in Python when the payload may hold one, or conversion fails.
    fast: np.ndarray | None = None
    if not may_hold_bools:
        try:
            fast = np.array(samples)
        except (TypeError, ValueError, OverflowError):
            fast = None
    if fast is not None and fast.ndim == 1 and fast.dtype.kind in "if":
        values = fast.astype(np.float64, copy=False)
    else:
        for i, x in enumerate(samples):
            if not isinstance(x, (int, float)) or isinstance(x, bool):
                raise MessageError(f"sample {i} has type {type(x).__name__}")
        try:
            values = np.array(samples, dtype=np.float64)
        except OverflowError:
            raise MessageError("a sample is too large for a float") from None
    bad = ~np.isfinite(values) | (np.abs(values) > MAX_SAMPLE)
    if bad.any():
        i = int(np.argmax(bad))
        raise MessageError(
            f"sample {i} is {_shown(samples[i])}; samples must be finite and within "
            f"±{MAX_SAMPLE:g}"
        )
    return values


def alert_id(model_version: str, patient: str, seq: int) -> str:
    """The deterministic id of the alert for one beat scored by one model."""
    text = f"{model_version}\x1f{patient}\x1f{seq}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Alert:
    """One flagged beat, as published on the alert topic."""

    alert_id: str
    patient: str
    seq: int
    error: float
    threshold: float
    model: str
    model_version: str
    beat_time: float
    emitted_at: float
    profile: list[float]
    truth: Truth | None = None

    def encode(self) -> bytes:
        data: dict[str, Any] = {"v": ALERT_VERSION, **self.__dict__}
        if self.truth is None:
            del data["truth"]
        return _ENCODER.encode(data)


def decode_alert(payload: bytes) -> Alert:
    """Decode an alert message, for subscribers and tests."""
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != ALERT_VERSION:
        raise MessageError("not a version 1 alert")
    data = dict(data)
    del data["v"]
    data.setdefault("truth", None)
    try:
        return Alert(**data)
    except TypeError as exc:
        raise MessageError(f"alert fields do not match the schema: {exc}") from None
