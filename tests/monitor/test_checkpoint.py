"""Alarm state grouped into buckets per partition, saved and restored."""

from __future__ import annotations

import json

import pytest

from beatmon.errors import MessageError
from beatmon.messages import Beat
from monitor.alarms import AlarmPolicy
from monitor.checkpoint import StateBuckets, bucket_of


def policy_with(patients: dict[str, int]) -> tuple[AlarmPolicy, StateBuckets]:
    policy, buckets = AlarmPolicy(), StateBuckets(buckets=4)
    beats = [Beat(p, 0, 100.0, ()) for p in patients]
    policy.apply(beats, [True] * len(beats))
    for patient, partition in patients.items():
        buckets.note(patient, partition)
    return policy, buckets


def test_one_message_per_changed_bucket_holding_all_its_patients() -> None:
    patients = {f"p{i:03d}": i % 2 for i in range(40)}
    policy, buckets = policy_with(patients)
    messages = buckets.messages(policy, ["p000", "p002"])
    keys = {f"0:{bucket_of('p000', 4)}", f"0:{bucket_of('p002', 4)}"}
    assert {key.decode() for key, _ in messages} == keys
    for key, value in messages:
        data = json.loads(value)
        partition, bucket = map(int, key.decode().split(":"))
        members = {p for p, part in patients.items() if part == partition}
        expected = {p for p in members if bucket_of(p, 4) == bucket}
        assert {entry["patient"] for entry in data["patients"]} == expected


def test_restore_round_trip_into_a_fresh_policy() -> None:
    patients = {f"p{i}": 0 for i in range(10)}
    policy, buckets = policy_with(patients)
    messages = buckets.messages(policy, list(patients))
    fresh, fresh_buckets = AlarmPolicy(), StateBuckets(buckets=4)
    restored = sum(fresh_buckets.restore(fresh, value) for _, value in messages)
    assert restored == 10
    for patient in patients:
        assert fresh.snapshot(patient) == policy.snapshot(patient)


def test_patients_of_lost_partitions_are_forgotten_and_not_written() -> None:
    policy, buckets = policy_with({"a": 0, "b": 1})
    buckets.forget_all_but(policy, {0})
    assert [key.decode() for key, _ in buckets.messages(policy, ["a", "b"])] == [
        f"0:{bucket_of('a', 4)}"
    ]
    assert policy.state("b").last_seq == -1


def test_a_patient_moving_partition_leaves_its_old_bucket() -> None:
    policy, buckets = policy_with({"a": 0})
    buckets.note("a", 3)
    ((key, _),) = buckets.messages(policy, ["a"])
    assert key.decode() == f"3:{bucket_of('a', 4)}"


@pytest.mark.parametrize(
    "value",
    [
        b"junk",
        b"[]",
        b'{"v": 9, "partition": 0, "patients": []}',
        b'{"v": 1, "partition": 0, "patients": [{"no": "patient"}]}',
    ],
)
def test_a_malformed_bucket_is_refused(value: bytes) -> None:
    with pytest.raises(MessageError):
        StateBuckets().restore(AlarmPolicy(), value)


def test_dropped_patients_leave_their_buckets_which_are_written_again() -> None:
    patients = {f"p{i:03d}": 0 for i in range(20)}
    policy, buckets = policy_with(patients)
    gone = ["p003", "p011"]
    emptied = buckets.drop(policy, gone)
    assert emptied == {(0, bucket_of(p, 4)) for p in gone}
    messages = buckets.messages(policy, [], emptied)
    assert {key.decode() for key, _ in messages} == {f"0:{b}" for _, b in emptied}
    written = {
        entry["patient"]
        for _, value in messages
        for entry in json.loads(value)["patients"]
    }
    assert written.isdisjoint(gone)
    assert written == {p for p in patients if (0, bucket_of(p, 4)) in emptied} - set(
        gone
    )
    assert policy.state("p003").last_seq == -1
