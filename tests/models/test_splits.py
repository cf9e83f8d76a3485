"""Splits keep abnormal beats out of training and calibration."""

import numpy as np
import pytest

from beatmon.errors import DataError
from models.data import BeatSet
from models.splits import Splits, make_splits


def test_splits_are_disjoint_and_cover_every_beat(ecg5000: BeatSet) -> None:
    normal = ecg5000.normal_mask("1")
    splits = make_splits(normal, seed=3)
    train, val, test = (
        set(part.tolist()) for part in (splits.train, splits.val, splits.test)
    )
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(range(len(normal)))


def test_abnormal_beats_go_to_test_only(ecg5000: BeatSet) -> None:
    normal = ecg5000.normal_mask("1")
    splits = make_splits(normal, seed=3)
    assert normal[splits.train].all() and normal[splits.val].all()
    assert (~normal[splits.test]).sum() == (~normal).sum()
    assert splits.sizes() == {"train": 1751, "val": 584, "test": 584 + 2081}


def test_same_seed_same_split_other_seed_other_split(ecg5000: BeatSet) -> None:
    normal = ecg5000.normal_mask("1")
    a, b, c = make_splits(normal, 1), make_splits(normal, 1), make_splits(normal, 2)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert not np.array_equal(a.train, c.train)


def test_split_json_round_trip(ecg5000: BeatSet) -> None:
    splits = make_splits(ecg5000.normal_mask("1"), seed=5)
    again = Splits.from_json(splits.to_json())
    assert again.seed == 5
    for name in ("train", "val", "test"):
        assert np.array_equal(getattr(again, name), getattr(splits, name))


def test_too_few_normals_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="only 5 normal beats"):
        make_splits(np.array([True] * 5 + [False] * 20), seed=0)
