"""Alarm-policy state on a compacted topic, a few messages per beat partition.

A message per patient would cost one Kafka send per changed patient at every
checkpoint: with a thousand patients, tens of milliseconds in which no beat
is scored. Instead each beat partition's patients fall into a fixed number of
buckets, and one message per bucket, keyed ``"<partition>:<bucket>"``,
carries the state of all its patients. A checkpoint rewrites only the
buckets that hold a changed patient, and compaction keeps the latest message
per bucket. Buckets follow partitions, and partitions are what Kafka hands
from one monitor to another.

Message, version 1::

    {"v": 1, "partition": 3, "bucket": 17,
     "patients": [<AlarmPolicy.snapshot of each patient in the bucket>, ...]}
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from collections.abc import Collection, Iterable

from beatmon.errors import MessageError
from monitor.alarms import AlarmPolicy

BUCKETS_PER_PARTITION = 64
STATE_BUCKET_VERSION = 1


def bucket_of(patient: str, buckets: int = BUCKETS_PER_PARTITION) -> int:
    """The patient's bucket: stable across processes and restarts."""
    return zlib.crc32(patient.encode()) % buckets


class StateBuckets:
    """Which patients live in which bucket, and the messages that save them."""

    def __init__(self, buckets: int = BUCKETS_PER_PARTITION) -> None:
        self.buckets = buckets
        self._partition_of: dict[str, int] = {}
        self._members: defaultdict[tuple[int, int], set[str]] = defaultdict(set)

    def note(self, patient: str, partition: int) -> None:
        """Record that the patient's beats come from ``partition``."""
        old = self._partition_of.get(patient)
        if old == partition:
            return
        if old is not None:
            self._members[old, bucket_of(patient, self.buckets)].discard(patient)
        self._partition_of[patient] = partition
        self._members[partition, bucket_of(patient, self.buckets)].add(patient)

    def messages(
        self,
        policy: AlarmPolicy,
        changed: Iterable[str],
        buckets: Iterable[tuple[int, int]] = (),
    ) -> list[tuple[bytes, bytes]]:
        """(key, value) for every bucket that holds one of the ``changed``
        patients, and for the ``(partition, bucket)`` pairs in ``buckets``."""
        keys = {
            (self._partition_of[p], bucket_of(p, self.buckets))
            for p in changed
            if p in self._partition_of
        }
        keys.update(buckets)
        out = []
        for partition, bucket in sorted(keys):
            snapshots = b",".join(
                policy.snapshot(p) for p in sorted(self._members[partition, bucket])
            )
            value = (
                f'{{"v":{STATE_BUCKET_VERSION},"partition":{partition},'
                f'"bucket":{bucket},"patients":['.encode()
                + snapshots
                + b"]}"
            )
            out.append((f"{partition}:{bucket}".encode(), value))
        return out

    def drop(
        self, policy: AlarmPolicy, patients: Iterable[str]
    ) -> set[tuple[int, int]]:
        """Forget ``patients`` in ``policy`` and here; the ``(partition, bucket)``
        pairs that held them, to be written again without them."""
        emptied = set()
        for patient in patients:
            policy.forget(patient)
            partition = self._partition_of.pop(patient, None)
            if partition is not None:
                key = (partition, bucket_of(patient, self.buckets))
                self._members[key].discard(patient)
                emptied.add(key)
        return emptied

    def forget_all_but(self, policy: AlarmPolicy, partitions: Collection[int]) -> None:
        """Drop the patients of partitions this monitor no longer owns."""
        for patient, partition in list(self._partition_of.items()):
            if partition not in partitions:
                policy.forget(patient)
                del self._partition_of[patient]
                self._members[partition, bucket_of(patient, self.buckets)].discard(
                    patient
                )

    def restore(self, policy: AlarmPolicy, value: bytes) -> int:
        """Load one bucket message into ``policy``; returns the patients restored."""
        try:
            data = json.loads(value)
            if data.get("v") != STATE_BUCKET_VERSION:
                raise MessageError(f"unknown state version {data.get('v')!r}")
            partition = int(data["partition"])
            entries = list(data["patients"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise MessageError(f"not a state bucket: {exc}") from None
        for entry in entries:
            patient = entry.get("patient") if isinstance(entry, dict) else None
            if not isinstance(patient, str):
                raise MessageError("a state entry has no patient id")
            policy.restore(patient, json.dumps(entry).encode())
            self.note(patient, partition)
        return len(entries)
