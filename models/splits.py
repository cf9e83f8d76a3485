"""Seeded splits: normal beats to train, validation and test; abnormal to test only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from beatmon.errors import DataError

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)
MIN_NORMALS_PER_SPLIT = 4


@dataclass(frozen=True)
class Splits:
    """Row indices into one beat set.

    ``train`` and ``val`` hold normal beats only; ``test`` holds the remaining
    normals and every abnormal beat. The three never overlap.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int

    def sizes(self) -> dict[str, int]:
        return {"train": self.train.size, "val": self.val.size, "test": self.test.size}

    def to_json(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "train": self.train.tolist(),
            "val": self.val.tolist(),
            "test": self.test.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Splits:
        def indices(key: str) -> np.ndarray:
            return np.asarray(data[key], dtype=np.int64)

        return cls(indices("train"), indices("val"), indices("test"), int(data["seed"]))  # type: ignore[call-overload]


def make_splits(
    normal: np.ndarray,
    seed: int,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> Splits:
    """Split rows given a boolean ``normal`` mask, reproducibly for ``seed``.

    ``fractions`` shares the normal beats between train, validation and test.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9:
        raise DataError(
            f"split fractions {fractions} must be three positive shares summing to 1"
        )
    normal = np.asarray(normal, dtype=bool)
    normal_rows = np.flatnonzero(normal)
    if normal_rows.size < MIN_NORMALS_PER_SPLIT * 3:
        raise DataError(
            f"only {normal_rows.size} normal beats; at least "
            f"{MIN_NORMALS_PER_SPLIT * 3} are needed to train, calibrate and test"
        )

    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(normal_rows)
    n_train = round(fractions[0] * shuffled.size)
    n_val = round(fractions[1] * shuffled.size)
    train = np.sort(shuffled[:n_train])
    val = np.sort(shuffled[n_train : n_train + n_val])
    test = np.sort(
        np.concatenate([shuffled[n_train + n_val :], np.flatnonzero(~normal)])
    )
    return Splits(train, val, test, seed)
