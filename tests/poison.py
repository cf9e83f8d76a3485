"""Poison for the monitor: seeded streams of malformed beat messages mixed with
valid ones, and a monitor process that reports its progress batch by batch.

:func:`mixed_stream` gives every message with the kind of damage done to it
and a pattern its dead-letter reason must match (``None`` for a valid beat).
``python -m tests.poison ...`` runs the real monitor, built from settings as
``beatmon monitor`` builds it, and writes one JSON line per batch (records,
beats scored, dead letters, seconds, resident memory) to a progress file.
Used by tests/integration/test_poison_fuzz.py and bench/poison.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from monitor.batch import ScoredBatch

REPO = Path(__file__).resolve().parents[1]
BEAT_LENGTH = 140
# Kafka's defaults: the producer's max_request_size and, with a little record
# overhead on top, the broker's message.max.bytes. A beat topic made with a
# larger max.message.bytes (and a producer allowed as much) lets the 2 MiB
# messages reach the monitor; on a topic with the defaults they are refused
# by the producer and can never be consumed.
KAFKA_DEFAULT_MAX_BYTES = 1_048_576
LARGE_TOPIC_MAX_BYTES = 4 * 1024 * 1024

ANY = r"."
NOT_JSON = r"not JSON|JSON is malformed|truncated"

Built = tuple[bytes | None, bytes | None, str]
T = TypeVar("T")


@dataclass(frozen=True)
class Message:
    """One message for the beat topic; ``reason`` is ``None`` for a valid beat."""

    key: bytes | None
    value: bytes | None
    kind: str
    reason: str | None

    @property
    def good(self) -> bool:
        return self.reason is None


def dump(data: Any, *, spaced: bool = False) -> bytes:
    """JSON text of ``data``, compact as the replay producer writes it."""
    separators = (", ", ": ") if spaced else (",", ":")
    return json.dumps(data, separators=separators).encode()


class Ward:
    """Valid beats of a few patients, each counting its own ``seq`` up from 0."""

    def __init__(
        self, rng: np.random.Generator, samples: np.ndarray, patients: int
    ) -> None:
        self.rng = rng
        self.samples = samples.astype(np.float32)
        # One id outside ASCII: keys are the UTF-8 bytes of the id.
        self.ids = [f"p{i:04d}" for i in range(patients - 1)] + ["p-\u00e9\u00fc"]
        self.next_seq = dict.fromkeys(self.ids, 0)
        self.current = self.ids[0]

    def beat(self) -> dict[str, Any]:
        patient = self.ids[int(self.rng.integers(len(self.ids)))]
        seq = self.next_seq[patient]
        self.next_seq[patient] += 1
        self.current = patient
        row = self.samples[int(self.rng.integers(len(self.samples)))]
        data: dict[str, Any] = {
            "v": 1,
            "patient": patient,
            "seq": seq,
            "produced_at": 1_764_763_200.0 + seq * 0.8,
            "samples": [float(x) for x in row],
        }
        truth = ("normal", "abnormal", None)[int(self.rng.integers(3))]
        if truth is not None:
            data["truth"] = truth
        return data

    def key(self, data: dict[str, Any]) -> bytes:
        return str(data["patient"]).encode()

    def bad_key(self, data: dict[str, Any]) -> bytes | None:
        """The key a bad message carries: mostly its patient's, sometimes none."""
        draw = self.rng.random()
        if draw < 0.85:
            return self.current.encode()
        if draw < 0.95:
            return None
        return self.rng.bytes(int(self.rng.integers(1, 40)))

    def pick(self, options: list[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]


# --- valid beats -----------------------------------------------------------


def _good(ward: Ward) -> Built:
    data = ward.beat()
    return ward.key(data), dump(data), "good"


def _good_spaced(ward: Ward) -> Built:
    data = ward.beat()
    return ward.key(data), dump(data, spaced=True), "good-spaced"


def _good_extra_fields(ward: Ward) -> Built:
    data = ward.beat()
    data["ward"] = "icu-2"
    data["device"] = {"lead": "II", "v": 7, "gain": [1, 2, {"v": 3}]}
    return ward.key(data), dump(data), "good-extra-fields"


def _good_nested_extra(ward: Ward) -> Built:
    data = ward.beat()
    text = dump(data)[:-1] + b',"deep":' + b"[" * 200 + b"]" * 200 + b"}"
    return ward.key(data), text, "good-nested-extra"


def _good_escaped_names(ward: Ward) -> Built:
    data = ward.beat()
    text = dump(data).replace(b'"seq":', b'"\\u0073eq":')
    return ward.key(data), text, "good-escaped-names"


def _good_without_key(ward: Ward) -> Built:
    data = ward.beat()
    return None, dump(data), "good-without-key"


GOOD_KINDS: list[tuple[Callable[[Ward], Built], float]] = [
    (_good, 0.8),
    (_good_spaced, 0.04),
    (_good_extra_fields, 0.04),
    (_good_nested_extra, 0.04),
    (_good_escaped_names, 0.04),
    (_good_without_key, 0.04),
]


# --- malformed messages: each builder gives (key, value, reason pattern) ----


def _random_bytes(ward: Ward) -> Built:
    data = ward.beat()
    return ward.bad_key(data), ward.rng.bytes(int(ward.rng.integers(0, 2000))), ANY


def _truncated(ward: Ward) -> Built:
    data = ward.beat()
    text = dump(data)
    return ward.bad_key(data), text[: int(ward.rng.integers(0, len(text)))], NOT_JSON


def _wrong_type(field: str, values: list[Any], reason: str) -> Callable[[Ward], Built]:
    def build(ward: Ward) -> Built:
        data = ward.beat()
        data[field] = ward.pick(values)
        return ward.bad_key(data), dump(data), reason

    build.__name__ = f"wrong-type-{field}"
    return build


def _wrong_sample_type(ward: Ward) -> Built:
    data = ward.beat()
    data["samples"][int(ward.rng.integers(BEAT_LENGTH))] = ward.pick(
        [None, True, False, "0.1", [0.1], {}, {"x": 1}]
    )
    return ward.bad_key(data), dump(data), r"sample \d+ has type"


def _token(field: str, token: bytes, reason: str) -> Callable[[Ward], Built]:
    """A JSON text with ``token`` written in place of a number of ``field``."""

    def build(ward: Ward) -> Built:
        data = ward.beat()
        marker = 123456.789
        if field == "samples":
            data["samples"][int(ward.rng.integers(BEAT_LENGTH))] = marker
        else:
            data[field] = marker
        text = dump(data).replace(b"123456.789", token, 1)
        return ward.bad_key(data), text, reason

    build.__name__ = f"token-{field}-{token[:12].decode(errors='replace')}"
    return build


def _sample_count(ward: Ward) -> Built:
    data = ward.beat()
    count = ward.pick([0, 1, BEAT_LENGTH - 1, BEAT_LENGTH + 1, 2 * BEAT_LENGTH, 1400])
    data["samples"] = (data["samples"] * 10)[:count]
    return ward.bad_key(data), dump(data), rf"samples, the model expects {BEAT_LENGTH}"


def _huge_sample(ward: Ward) -> Built:
    data = ward.beat()
    data["samples"][int(ward.rng.integers(BEAT_LENGTH))] = ward.pick(
        [1e308, -1e308, 1.7976931348623157e308, 1e6 + 1, 10**30, -(10**30)]
    )
    return ward.bad_key(data), dump(data), r"sample \d+ is .*within"


def _version(ward: Ward) -> Built:
    data = ward.beat()
    data["v"] = ward.pick([0, 2, 99, -1, 10**30, "1", "v1", 1.0, None, [1], [[[1]]]])
    return ward.bad_key(data), dump(data), r"unknown beat schema version"


def _missing(ward: Ward) -> Built:
    data = ward.beat()
    field = ward.pick(["v", "patient", "seq", "produced_at", "samples"])
    del data[field]
    reason = "unknown beat schema version" if field == "v" else f"'{field}' is missing"
    return ward.bad_key(data), dump(data), reason


def _bad_value(ward: Ward) -> Built:
    data = ward.beat()
    field, value, reason = ward.pick(
        [
            ("patient", "", "patient id must have"),
            ("patient", "p" * 65, "patient id must have"),
            ("seq", -1, "is negative"),
            ("seq", -(10**30), "is negative"),
            ("seq", 2**63, r"above 2\*\*63"),
            ("seq", 10**30, r"above 2\*\*63"),
            ("truth", "Normal", "is neither"),
            ("truth", "sick", "is neither"),
            ("truth", "x" * 5000, "is neither"),
        ]
    )
    data[field] = value
    return ward.bad_key(data), dump(data), reason


def _invalid_utf8(ward: Ward) -> Built:
    data = ward.beat()
    junk = ward.pick([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"])
    text = dump(data)
    where = ward.pick(["patient", "extra-value", "extra-name", "end", "latin-1"])
    if where == "patient":
        text = text.replace(b'"patient":"', b'"patient":"' + junk, 1)
    elif where == "extra-value":
        text = text[:-1] + b',"note":"caf' + junk + b'"}'
    elif where == "extra-name":
        text = text[:-1] + b',"n' + junk + b'":1}'
    elif where == "end":
        text = text + junk
    else:
        data["note"] = "caf\u00e9"
        text = json.dumps(data, ensure_ascii=False).encode("latin-1")
    return ward.bad_key(data), text, r"(?i)utf-8|not JSON|malformed"


def _empty(ward: Ward) -> Built:
    data = ward.beat()
    return ward.bad_key(data), ward.pick([b"", b" ", b"\n\t \r\n"]), NOT_JSON


def _tombstone(ward: Ward) -> Built:
    data = ward.beat()
    return ward.key(data), None, "tombstone"


def _key_mismatch(ward: Ward) -> Built:
    data = ward.beat()
    own = ward.key(data)
    key = ward.pick(
        [b"", own + b"\x00", own.upper(), b"someone-else", b"\xff" * 70, own + b" "]
    )
    return key, dump(data), r"message key .* is not the patient id"


def _deep_nesting(ward: Ward) -> Built:
    data = ward.beat()
    text = dump(data)
    depth = int(ward.rng.integers(1_100, 20_000))
    shape = ward.pick(["array", "object", "extra", "extra-object"])
    if shape == "array":
        text = b"[" * depth + b"]" * depth
    elif shape == "object":
        text = b'{"a":' * depth + b"1" + b"}" * depth
    elif shape == "extra":
        text = text[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"
    else:
        text = text[:-1] + b',"x":' + b'{"a":' * depth + b"1" + b"}" * (depth + 1)
    return ward.bad_key(data), text, r"nested too deeply"


def _nested_samples(ward: Ward) -> Built:
    data = ward.beat()
    data["samples"] = [[x] for x in data["samples"]]
    return ward.bad_key(data), dump(data), r"sample \d+ has type list"


def _duplicate_field(ward: Ward) -> Built:
    """A field given twice, the valid value last (which most parsers keep)."""
    data = ward.beat()
    field = ward.pick(["v", "patient", "seq", "produced_at", "samples", "truth"])
    decoy = {
        "v": 2,
        "patient": "p9999",
        "seq": 0,
        "produced_at": 0.5,
        "samples": [0.0] * BEAT_LENGTH,
        "truth": "normal",
    }[field]
    spaced = bool(ward.rng.integers(2))
    name = json.dumps(field).encode()
    if ward.rng.integers(2):
        name = b'"\\u00' + field[0].encode().hex().encode() + field[1:].encode() + b'"'
    separator = b": " if spaced else b":"
    head = b"{" + name + separator + dump(decoy) + (b", " if spaced else b",")
    data.setdefault("truth", "abnormal")
    text = head + dump(data, spaced=spaced)[1:]
    return ward.bad_key(data), text, r"given more than once"


def _not_an_object(ward: Ward) -> Built:
    data = ward.beat()
    text = ward.pick([b"1", b"null", b'"beat"', b"[1,2,3]", b"true", b"{}", b"[{}]"])
    return ward.bad_key(data), text, r"JSON object|unknown beat schema version"


def _trailing(ward: Ward) -> Built:
    data = ward.beat()
    tail = ward.pick([b"x", b"{}", b"\x00", b",", b" ]", b"\n{}\n"])
    return ward.bad_key(data), dump(data) + tail, NOT_JSON


def _foreign_encoding(ward: Ward) -> Built:
    data = ward.beat()
    encoding = ward.pick(["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
    text = json.dumps(data).encode(encoding)
    return ward.bad_key(data), text, r"not UTF-8|not JSON|JSON is malformed"


def _bad_json_text(ward: Ward) -> Built:
    data = ward.beat()
    text = dump(data)
    seq = f'"seq":{data["seq"]}'.encode()
    text = ward.pick(
        [
            str(data).encode(),
            text.replace(seq, b'"seq":0' + seq[6:], 1),
            text.replace(seq, b'"seq":+' + seq[6:], 1),
            text.replace(seq, b'"seq":0x10', 1),
            text.replace(b'"patient":"', b'"patient":"\x01', 1),
            text.replace(b'"patient":"', b'"patient":"\\ud800', 1),
            text.replace(b'"patient":"', b'"patient":"\\x41', 1),
            text.replace(b",", b",,", 1),
            text.replace(b":", b"=", 1),
            text[:-1] + b",}",
        ]
    )
    return ward.bad_key(data), text, NOT_JSON


def _number_beyond_parsers(ward: Ward) -> Built:
    """Numbers too big for a float, or with more digits than Python reads."""
    data = ward.beat()
    field, digits, reason = ward.pick(
        [
            ("samples", b"1" + b"0" * 400, "too large for a float"),
            ("produced_at", b"1" + b"0" * 400, "too large for a float"),
            ("samples", b"1" + b"0" * 5000, NOT_JSON),
            ("seq", b"9" * 5000, NOT_JSON),
            ("produced_at", b"-" + b"9" * 5000, NOT_JSON),
        ]
    )
    marker = 987654.321
    if field == "samples":
        data["samples"][int(ward.rng.integers(BEAT_LENGTH))] = marker
    else:
        data[field] = marker
    text = dump(data).replace(b"987654.321", digits, 1)
    return ward.bad_key(data), text, reason


def _oversized(size: int) -> Callable[[Ward], Built]:
    """About ``size`` bytes: garbage, a giant patient id or a giant sample list."""

    def build(ward: Ward) -> Built:
        data = ward.beat()
        shape = ward.pick(["garbage", "patient", "samples"])
        if shape == "garbage":
            return ward.bad_key(data), ward.rng.bytes(size), ANY
        if shape == "patient":
            data["patient"] = "p" * (size - 3000)
            return ward.key(data)[:64], dump(data), "patient id must have"
        data["samples"] = [0.25] * (size // 5)
        text = dump(data)
        return ward.bad_key(data), text, rf"the model expects {BEAT_LENGTH}"

    build.__name__ = f"oversized-{size}"
    return build


TYPE_ERRORS = [
    _wrong_type(
        "v", [None, True, False, "1", 1.0, [], {}], r"unknown beat schema version"
    ),
    _wrong_type(
        "patient",
        [None, True, 1, 1.5, [], {}, ["p0001"]],
        r"field 'patient' has type",
    ),
    _wrong_type("seq", [None, True, 1.5, "1", [], {}], r"field 'seq' has type"),
    _wrong_type(
        "produced_at",
        [None, True, "1", "2026-12-03T13:05:03Z", [], {}],
        r"field 'produced_at' has type",
    ),
    _wrong_type(
        "samples", [None, True, 1, "0.1,0.2", {}, {"0": 0.1}], r"'samples' has type"
    ),
    _wrong_type("truth", [True, 0, 1, "", [], {}], r"truth .* is neither"),
]

NON_FINITE = [
    _token(field, token, reason)
    for token in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400")
    for field, reason in (
        ("samples", r"sample \d+ is -?(nan|inf)"),
        ("produced_at", r"produced_at is not finite"),
    )
] + [
    _token(field, token, reason)
    for token in (b'"NaN"', b'"inf"', b'"-inf"', b'"Infinity"')
    for field, reason in (
        ("samples", r"sample \d+ has type str"),
        ("produced_at", r"field 'produced_at' has type str"),
    )
]

BAD_KINDS: list[Callable[[Ward], Built]] = [
    _random_bytes,
    _truncated,
    *TYPE_ERRORS,
    _wrong_sample_type,
    *NON_FINITE,
    _sample_count,
    _huge_sample,
    _version,
    _missing,
    _bad_value,
    _invalid_utf8,
    _empty,
    _tombstone,
    _key_mismatch,
    _deep_nesting,
    _nested_samples,
    _duplicate_field,
    _not_an_object,
    _trailing,
    _foreign_encoding,
    _bad_json_text,
    _number_beyond_parsers,
]

# Oversized messages, a fixed few: just under the default limit (so that the
# dead letter, with its headers, would be over it) and 2 MiB, above it.
OVERSIZED: list[tuple[Callable[[Ward], Built], int]] = [
    (_oversized(KAFKA_DEFAULT_MAX_BYTES - 200), 6),
    (_oversized(2 * 1024 * 1024), 6),
]


def _kind_name(build: Callable[..., Any]) -> str:
    return build.__name__.lstrip("_").replace("_", "-")


def mixed_stream(
    seed: int,
    samples: np.ndarray,
    bad: int,
    good: int,
    patients: int = 20,
    oversized: bool = True,
) -> list[Message]:
    """``bad`` malformed and ``good`` valid messages, shuffled together.

    ``samples`` holds real beats (rows of ``BEAT_LENGTH``) for the valid
    messages and the bases of the damaged ones. With ``oversized``, twelve of
    the malformed messages are about 1 MiB or 2 MiB (see ``OVERSIZED``), half
    of each size within the first fifth of the stream, so that a warm-up over
    that fifth has met every kind of message.
    """
    rng = np.random.default_rng(seed)
    ward = Ward(rng, samples, patients)
    plan = [BAD_KINDS[int(k)] for k in rng.integers(len(BAD_KINDS), size=bad)]
    weights = np.array([w for _, w in GOOD_KINDS])
    choices = rng.choice(len(GOOD_KINDS), size=good, p=weights / weights.sum())
    slots = rng.permutation(bad + good)
    if oversized:
        fifth = len(slots) // 5
        early = [i for i in range(fifth) if slots[i] < bad]
        late = [i for i in range(fifth, len(slots)) if slots[i] < bad]
        for build, count in OVERSIZED:
            for pool, n in ((early, count // 2), (late, count - count // 2)):
                for i in sorted(rng.choice(len(pool), size=n, replace=False))[::-1]:
                    plan[slots[pool.pop(int(i))]] = build

    messages: list[Message] = []
    for slot in slots:
        if slot < bad:
            key, value, reason = plan[slot](ward)
            messages.append(Message(key, value, _kind_name(plan[slot]), reason))
        else:
            key, value, kind = GOOD_KINDS[choices[slot - bad]][0](ward)
            messages.append(Message(key, value, kind, None))
    return messages


# --- on a broker: topics, producing, and a monitor with a progress file ----


def create_topics(bootstrap: str, base: str, partitions: int = 2) -> None:
    """``<base>.beats`` taking messages up to 4 MiB, with ``partitions``, and
    the output topics ``<base>.alerts``, ``.dlq``, ``.scores``, ``.alarms``
    with one partition and Kafka's default limits."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="beatmon-poison")
    try:
        admin.create_topics(
            [
                NewTopic(
                    f"{base}.beats",
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs={"max.message.bytes": str(LARGE_TOPIC_MAX_BYTES)},
                ),
                *(
                    NewTopic(f"{base}.{name}", num_partitions=1, replication_factor=1)
                    for name in ("alerts", "dlq", "scores", "alarms")
                ),
            ]
        )
    finally:
        admin.close()


def delete_topics(bootstrap: str, base: str) -> None:
    """Delete the topics ``<base>.*`` that exist; their data is tens of MB."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="beatmon-poison")
    try:
        names = [t for t in admin.list_topics() if t.startswith(f"{base}.")]
        if names:
            admin.delete_topics(names)
    finally:
        admin.close()


def produce(
    bootstrap: str, topic: str, messages: Sequence[Message]
) -> list[tuple[int, int]]:
    """Send every message, waiting for the broker; the (partition, offset) of each."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        max_request_size=LARGE_TOPIC_MAX_BYTES,
        linger_ms=5,
        batch_size=256 * 1024,
    )
    try:
        futures = [producer.send(topic, key=m.key, value=m.value) for m in messages]
        producer.flush(timeout=120)
        metadata = [future.get(timeout=120) for future in futures]
    finally:
        producer.close()
    return [(m.partition, m.offset) for m in metadata]


@dataclass
class Progress:
    """One line of a monitor's progress file, written after each batch."""

    records: int
    scored: int
    dead: int
    seconds: float
    rss_mb: float


def rss_mb(pid: int | str = "self") -> float:
    """The resident set size of process ``pid`` now, in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def read_progress(path: Path) -> list[Progress]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [Progress(**json.loads(line)) for line in lines if line.endswith("}")]


def rates(lines: list[Progress]) -> tuple[float, float]:
    """(records/s, valid beats/s) from the end of the first batch to the last."""
    first, last = lines[0], lines[-1]
    seconds = max(last.seconds - first.seconds, 1e-9)
    return (last.records - first.records) / seconds, (
        last.scored - first.scored
    ) / seconds


class MonitorChild:
    """The real monitor in a child process (``python -m tests.poison``) on the
    topics ``<base>.*``, writing a progress line after each batch."""

    def __init__(
        self,
        bundle: Path,
        bootstrap: str,
        base: str,
        folder: Path,
        name: str,
        *,
        scores: bool = True,
    ) -> None:
        self.progress = folder / f"{name}.progress"
        self.log = folder / f"{name}.log"
        self.handle = self.log.open("ab")
        command = [
            sys.executable,
            "-m",
            "tests.poison",
            "--bundle",
            str(bundle),
            "--bootstrap",
            bootstrap,
            "--base",
            base,
            "--progress",
            str(self.progress),
            *([] if scores else ["--no-scores"]),
        ]
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, records: int, timeout_s: float) -> list[Progress]:
        """Progress lines once ``records`` records went through; fails if the
        monitor exits first or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            lines = read_progress(self.progress)
            if lines and lines[-1].records >= records:
                return lines
            done = lines[-1].records if lines else 0
            if not self.alive():
                why = f"the monitor exited after {done} of {records} records"
            elif time.monotonic() > deadline:
                why = f"the monitor took {done} of {records} records"
            else:
                time.sleep(0.1)
                continue
            raise AssertionError(f"{why}; its log ends:\n{self.text()[-5000:]}")

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, then its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.handle.close()

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self.handle.close()


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive runs of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _ProgressFile:
    def __init__(self, path: Path) -> None:
        self.handle = path.open("a", buffering=1)
        self.records = self.scored = self.dead = 0

    def on_batch(self, batch: ScoredBatch) -> None:
        self.records += batch.records
        self.scored += len(batch.beats)
        self.dead += len(batch.dead_letters)
        line = {
            "records": self.records,
            "scored": self.scored,
            "dead": self.dead,
            "seconds": time.perf_counter(),
            "rss_mb": rss_mb(),
        }
        self.handle.write(json.dumps(line) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the monitor until SIGTERM, writing a progress line after each batch."""
    from beatmon.settings import load_monitor_settings
    from beatmon.shutdown import stop_on_signals
    from monitor.cli import serve

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--base", required=True, help="topic prefix")
    parser.add_argument("--progress", type=Path, required=True)
    parser.add_argument(
        "--no-scores", action="store_true", help="publish no per-beat scores"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    base = args.base
    settings = load_monitor_settings(
        env={},
        overrides={
            "monitor.bundle": args.bundle,
            "monitor.group_id": f"{base}.monitors",
            "monitor.report_every_s": 1.0,
            "kafka.bootstrap_servers": args.bootstrap,
            "topics.beats": f"{base}.beats",
            "topics.alerts": f"{base}.alerts",
            "topics.dead_letters": f"{base}.dlq",
            "topics.scores": None if args.no_scores else f"{base}.scores",
            "topics.alarms": f"{base}.alarms",
            "topics.alarm_state": f"{base}.alarm-state",
            "mqtt.enabled": False,
            "metrics.enabled": False,
        },
    )
    stopping = threading.Event()
    with stop_on_signals(stopping):
        serve(settings, stopping, observers=[_ProgressFile(args.progress)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
