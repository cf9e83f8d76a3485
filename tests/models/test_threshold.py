"""Threshold policies calibrate on validation-normal errors only."""

import numpy as np
import pytest

from beatmon.errors import BeatmonError
from models.threshold import DEFAULT_POLICY, ThresholdPolicy


def test_default_policy_is_a_five_percent_false_alarm_rate() -> None:
    assert ThresholdPolicy.parse(DEFAULT_POLICY) == ThresholdPolicy(
        "false-alarm-rate", 0.05
    )


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.1, 0.333])
@pytest.mark.parametrize("n", [7, 100, 584, 1001])
def test_false_alarm_rate_flags_at_most_the_target_share(rate: float, n: int) -> None:
    errors = np.random.default_rng(n).gamma(2.0, size=n)
    threshold = ThresholdPolicy("false-alarm-rate", rate).calibrate(errors)
    flagged = (errors > threshold).mean()
    assert flagged <= rate
    # It is the tightest such threshold: one rank lower flags too many.
    lower = np.sort(errors)[np.sort(errors) < threshold]
    if lower.size:
        assert (errors > lower.max()).mean() > rate


def test_percentile_and_mean_std() -> None:
    errors = np.arange(1, 101, dtype=float)
    assert ThresholdPolicy.parse("percentile:50").calibrate(errors) == 50.5
    expected = errors.mean() + 2 * errors.std()
    assert ThresholdPolicy.parse("mean-std:2").calibrate(errors) == pytest.approx(
        expected
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "false-alarm-rate",
        "false-alarm-rate:x",
        "false-alarm-rate:0",
        "false-alarm-rate:1.5",
        "percentile:100",
        "median:3",
        "mean-std:nan",
    ],
)
def test_bad_policies_are_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(BeatmonError) as info:
        ThresholdPolicy.parse(text)
    message = str(info.value)
    assert "false-alarm-rate" in message or "between" in message


def test_no_errors_cannot_be_calibrated() -> None:
    with pytest.raises(BeatmonError, match="zero normal beats"):
        ThresholdPolicy.parse(DEFAULT_POLICY).calibrate(np.array([]))
