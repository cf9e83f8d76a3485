"""Threshold policies: turn validation-normal errors into one alarm threshold.

The threshold is calibrated on reconstruction errors of held-out *normal*
beats only. A beat is flagged when its error is strictly above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from beatmon.errors import BeatmonError

PolicyKind = Literal["false-alarm-rate", "percentile", "mean-std"]

DEFAULT_POLICY = "false-alarm-rate:0.05"


@dataclass(frozen=True)
class ThresholdPolicy:
    """A named way to pick the threshold from validation-normal errors.

    - ``false-alarm-rate:R``: flag at most a share ``R`` of validation normals
      (``R`` in (0, 1)).
    - ``percentile:P``: the ``P``-th percentile of their errors (0 < P < 100).
    - ``mean-std:K``: their mean error plus ``K`` standard deviations.

    >>> errors = np.arange(1, 101, dtype=float)
    >>> ThresholdPolicy.parse("false-alarm-rate:0.05").calibrate(errors)
    95.0
    >>> ThresholdPolicy.parse("mean-std:0").calibrate(errors)
    50.5
    """

    kind: PolicyKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in get_args(PolicyKind):
            kinds = ", ".join(get_args(PolicyKind))
            raise BeatmonError(
                f"unknown threshold policy {self.kind!r}; choose one of: {kinds}"
            )
        bounds = {
            "false-alarm-rate": (0.0, 1.0),
            "percentile": (0.0, 100.0),
            "mean-std": (-np.inf, np.inf),
        }
        low, high = bounds[self.kind]
        if not (low < self.value < high) or not np.isfinite(self.value):
            raise BeatmonError(
                f"threshold policy {self.name!r}: value must lie between "
                f"{low} and {high} (exclusive)"
            )

    @classmethod
    def parse(cls, text: str) -> ThresholdPolicy:
        """Read ``KIND:VALUE``, for example ``false-alarm-rate:0.05``."""
        kind, sep, value = text.partition(":")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or not np.isfinite(number):
            raise BeatmonError(
                f"threshold policy {text!r} is not KIND:VALUE, "
                "for example false-alarm-rate:0.05, percentile:99 or mean-std:3"
            )
        return cls(kind, number)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.value:g}"

    def calibrate(self, normal_errors: np.ndarray) -> float:
        """Return the threshold for these validation-normal errors."""
        errors = np.asarray(normal_errors, dtype=np.float64)
        if errors.size == 0:
            raise BeatmonError("cannot calibrate a threshold on zero normal beats")
        if self.kind == "false-alarm-rate":
            # The smallest observed error that leaves at most the target share
            # of normals strictly above it.
            ranked = np.sort(errors)
            keep = math.ceil(ranked.size * (1.0 - self.value) - 1e-9)
            return float(ranked[max(keep, 1) - 1])
        if self.kind == "percentile":
            return float(np.percentile(errors, self.value))
        return float(errors.mean() + self.value * errors.std())
