"""Naming a winner only when it beats the runner-up by more than the seed noise."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from models.compare import paired, results_table, seconds_per_call, winner


def _models(values: dict[str, list[float]], key: str) -> dict[str, dict[str, Any]]:
    return {
        name: {
            key: {"mean": statistics.fmean(v), "std": statistics.stdev(v)},
            "runs": [{key: x} for x in v],
        }
        for name, v in values.items()
    }


def test_clear_lead_over_the_runner_up_wins() -> None:
    models = _models(
        {
            "a": [0.990, 0.991, 0.989, 0.992],
            "b": [0.980, 0.982, 0.979, 0.981],
            "c": [0.950, 0.951, 0.949, 0.952],
        },
        "roc_auc",
    )
    w = winner(models, "roc_auc")
    assert (w["best"], w["runner_up"], w["winner"]) == ("a", "b", "a")
    assert w["mean_difference"] == pytest.approx(0.0100)


def test_lead_within_the_seed_noise_names_no_winner() -> None:
    models = _models(
        {"a": [0.99, 0.96, 0.98, 0.95], "b": [0.97, 0.97, 0.96, 0.97]}, "roc_auc"
    )
    w = winner(models, "roc_auc")
    assert w["best"] == "a"
    assert w["winner"] is None
    assert w["seed_noise"] == pytest.approx(statistics.stdev([0.99, 0.96, 0.98, 0.95]))


def test_costs_rank_lowest_first() -> None:
    key = "us_per_beat_batch_64"
    models = _models({"slow": [9.0, 9.5, 9.2], "fast": [2.0, 2.1, 2.05]}, key)
    assert winner(models, key)["winner"] == "fast"


def test_paired_difference_is_by_seed() -> None:
    # b trails a by exactly 0.01 on every seed: a steady lead, however noisy
    # the seeds themselves are.
    a = [0.90, 0.95, 0.99]
    d = paired(a, [x - 0.01 for x in a], 0.045, 0.045)
    assert d["mean_difference"] == pytest.approx(0.01)
    assert d["std_difference"] == pytest.approx(0.0, abs=1e-12)
    assert d["exceeds_noise"] is False


def test_winner_is_bold_in_the_table() -> None:
    keys = ("roc_auc", "pr_auc", "f1", "sensitivity", "false_alarm_rate")
    costs = ("us_per_beat_batch_64", "us_per_beat_batch_1")
    stats = {"mean": 0.5, "std": 0.1}
    row = {
        **dict.fromkeys((*keys, *costs), stats),
        "parameters": 1234,
        "train_seconds": stats,
    }
    result = {
        "threshold_policy": "false-alarm-rate:0.05",
        "models": {"a": row, "b": row},
        "winners": {"roc_auc": {"winner": "b"}},
    }
    lines = results_table(result)
    assert "false-alarm-rate:0.05" in lines[0]
    assert lines[4].startswith("| a | 0.5000 ± 0.1000 |")
    assert lines[5].startswith("| b | **0.5000 ± 0.1000** | 0.5000 ± 0.1000 |")
    assert "1,234" in lines[5]


def test_seconds_per_call_takes_the_best_round() -> None:
    calls = []
    assert seconds_per_call(lambda: calls.append(1), rounds=3, round_s=0.001) > 0
    assert len(calls) >= 4
