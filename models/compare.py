"""Comparing variants over several seeds, paired by seed."""

from __future__ import annotations

import itertools
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from models.autoencoder import ModelSpec
from models.bundle import check_parity
from models.data import BeatSet
from models.scoring import Scorer
from models.train import TrainConfig, train

logger = logging.getLogger(__name__)

QUALITY = ("roc_auc", "pr_auc", "f1", "sensitivity")
METRICS = (*QUALITY, "false_alarm_rate")
COST_BATCHES = (64, 1)
COSTS = tuple(f"us_per_beat_batch_{batch}" for batch in COST_BATCHES)
# Metrics a winner is named for; for the costs, lower is better.
RANKED = (*QUALITY, *COSTS)
LOWER_IS_BETTER = frozenset(COSTS)
COST_ROUNDS = 5
COST_ROUND_S = 0.05

LABELS = {
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "f1": "F1",
    "sensitivity": "sensitivity",
    "false_alarm_rate": "false-alarm rate (test normals)",
    "us_per_beat_batch_64": "µs/beat, batch 64",
    "us_per_beat_batch_1": "µs/beat, batch 1",
}

PROTOCOL = (
    "Each model is trained once per seed. A seed fixes both the split of the "
    "normal beats (60% train, 20% validation, 20% test) and the initial weights, "
    "so for a given seed every model sees exactly the same beats. Abnormal beats "
    "are never trained on; they all go to the test split. The scaler is fitted on "
    "the training normals, early stopping watches the validation normals, and the "
    "threshold is calibrated on the validation normals alone by policy {policy}. "
    "The test split is scored once per run; sensitivity, F1 and the false-alarm "
    "rate (the share of test normals flagged) are taken at that threshold. Each "
    "run is exported to the serving path (NumPy, no TensorFlow), checked against "
    "Keras to 1e-5 on the validation beats, and timed right away on one BLAS "
    "thread: microseconds per beat at batch 64 and batch 1, the best of "
    f"{COST_ROUNDS} rounds. For each metric we report the mean and the sample "
    "standard deviation over seeds. Two models are compared seed by seed: the "
    "paired difference is a minus b on the same split, and it counts as larger "
    "than the noise when its mean exceeds the larger of the two models' "
    "seed-to-seed standard deviations. The best model on a metric is marked the "
    "winner (in bold) only when its paired difference to the runner-up is larger "
    "than the noise."
)


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def paired(
    a: list[float], b: list[float], noise_a: float, noise_b: float
) -> dict[str, Any]:
    """Paired difference a - b over seeds, and whether it stands above the noise."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(diffs)
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    noise = max(noise_a, noise_b)
    return {
        "mean_difference": mean,
        "std_difference": std,
        "t_statistic": mean / (std / math.sqrt(len(diffs))) if std > 0 else None,
        "seed_noise": noise,
        "exceeds_noise": abs(mean) > noise,
    }


def seconds_per_call(
    call: Callable[[], object],
    rounds: int = COST_ROUNDS,
    round_s: float = COST_ROUND_S,
) -> float:
    """Best time of one call over ``rounds`` rounds of about ``round_s`` each."""
    call()
    best = math.inf
    for _ in range(rounds):
        calls = 0
        started = time.perf_counter()
        while True:
            call()
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= round_s:
                break
        best = min(best, elapsed / calls)
    return best


def serving_cost_us(scorer: Scorer, beats: np.ndarray) -> dict[str, float]:
    """Serving-path microseconds per beat at each of :data:`COST_BATCHES`."""
    from threadpoolctl import threadpool_limits

    def scoring(chunk: np.ndarray) -> Callable[[], object]:
        return lambda: scorer.score(chunk)

    costs = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for batch, key in zip(COST_BATCHES, COSTS, strict=True):
            chunk = np.ascontiguousarray(beats[:batch])
            costs[key] = 1e6 * seconds_per_call(scoring(chunk)) / batch
    return costs


def compare(
    data: BeatSet,
    normal_label: str,
    specs: list[ModelSpec],
    seeds: int,
    config: TrainConfig,
    out: Path,
) -> dict[str, Any]:
    """Train every spec for seeds 0..seeds-1 and write compare.json and compare.md."""
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {spec.name: [] for spec in specs}
    parameters: dict[str, int] = {}
    for seed in range(seeds):
        for spec in specs:
            trained = train(data, normal_label, spec, replace(config, seed=seed))
            scorer = Scorer.from_keras(trained.model, trained.scaler, trained.threshold)
            parity = check_parity(trained, scorer)
            costs = serving_cost_us(scorer, data.beats)
            parameters[spec.name] = int(trained.model.count_params())
            m = trained.test_metrics
            logger.info(
                "model=%s seed=%d roc_auc=%.4f pr_auc=%.4f f1=%.4f sensitivity=%.4f "
                "false_alarm_rate=%.4f us_per_beat_64=%.2f seconds=%.1f",
                spec.name,
                seed,
                m["roc_auc"],
                m["pr_auc"],
                m["f1"],
                m["sensitivity"],
                m["false_alarm_rate"],
                costs[COSTS[0]],
                trained.train_seconds,
            )
            runs[spec.name].append(
                {
                    "seed": seed,
                    "epochs": trained.epochs_run,
                    "train_seconds": trained.train_seconds,
                    "threshold": trained.threshold,
                    "parity_max_abs_error": parity,
                    **{key: m[key] for key in METRICS},
                    **costs,
                }
            )

    models: dict[str, dict[str, Any]] = {
        name: {
            **{
                key: _mean_std([run[key] for run in rows]) for key in (*METRICS, *COSTS)
            },
            "parameters": parameters[name],
            "train_seconds": _mean_std([run["train_seconds"] for run in rows]),
            "runs": rows,
        }
        for name, rows in runs.items()
    }
    pairs = {
        f"{a} - {b}": {key: _paired_on(models, a, b, key) for key in (*METRICS, *COSTS)}
        for a, b in itertools.combinations(runs, 2)
    }
    result = {
        "protocol": PROTOCOL.format(policy=config.policy.name),
        "data": {
            "source": data.source,
            "sha256": data.sha256,
            "normal_label": normal_label,
        },
        "seeds": list(range(seeds)),
        "threshold_policy": config.policy.name,
        "models": models,
        "winners": {key: winner(models, key) for key in RANKED},
        "paired": pairs,
        "wall_seconds": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "compare.md").write_text(compare_markdown(result))
    return result


def _paired_on(
    models: dict[str, dict[str, Any]], a: str, b: str, key: str
) -> dict[str, Any]:
    return paired(
        [run[key] for run in models[a]["runs"]],
        [run[key] for run in models[b]["runs"]],
        models[a][key]["std"],
        models[b][key]["std"],
    )


def winner(models: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    """The best model on ``key`` against the runner-up, paired by seed.

    ``winner`` is the best model's name when the paired difference exceeds the
    seed-to-seed noise, else None.
    """
    ranked = sorted(
        models,
        key=lambda name: models[name][key]["mean"],
        reverse=key not in LOWER_IS_BETTER,
    )
    if len(ranked) < 2:
        return {"best": ranked[0], "runner_up": None, "winner": None}
    best, runner_up = ranked[:2]
    difference = _paired_on(models, best, runner_up, key)
    return {
        "best": best,
        "runner_up": runner_up,
        **difference,
        "winner": best if difference["exceeds_noise"] else None,
    }


def _cell(stats: dict[str, float], key: str, bold: bool) -> str:
    digits = 2 if key in COSTS else 4
    text = f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return f"**{text}**" if bold else text


def results_table(result: dict[str, Any]) -> list[str]:
    """The mean ± std table, one row per model, winners in bold."""
    columns = (*METRICS, *COSTS)
    lines = [
        f"Sensitivity, F1 and the false-alarm rate are at the threshold of policy "
        f"{result['threshold_policy']}, calibrated on validation normals; winners "
        "(larger than the seed noise against the runner-up) in bold.",
        "",
        "| model | "
        + " | ".join(LABELS[key] for key in columns)
        + " | parameters | training s |",
        "| --- |" + " --- |" * (len(columns) + 2),
    ]
    winners = result["winners"]
    for name, stats in result["models"].items():
        cells = [
            _cell(stats[key], key, winners.get(key, {}).get("winner") == name)
            for key in columns
        ]
        seconds = stats["train_seconds"]
        cells += [
            f"{stats['parameters']:,}",
            f"{seconds['mean']:.1f} ± {seconds['std']:.1f}",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def winners_table(result: dict[str, Any]) -> list[str]:
    """Best against runner-up on every ranked metric, paired by seed."""
    lines = [
        "| metric | best | runner-up | mean difference | std of difference "
        "| seed noise | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, w in result["winners"].items():
        if w["runner_up"] is None:
            continue
        verdict = f"{w['best']} wins" if w["winner"] else "within the noise: no winner"
        lines.append(
            f"| {LABELS[key]} | {w['best']} | {w['runner_up']} | "
            f"{w['mean_difference']:+.4f} | {w['std_difference']:.4f} | "
            f"{w['seed_noise']:.4f} | {verdict} |"
        )
    return lines


def compare_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Comparison of autoencoder variants",
        "",
        f"Data: {result['data']['source']}, normal label "
        f"`{result['data']['normal_label']}`, seeds {result['seeds']}; "
        f"the comparison took {result['wall_seconds']:.0f} s.",
        "",
        "## Protocol",
        "",
        result["protocol"],
        "",
        "## Test metrics and serving cost, mean ± std over seeds",
        "",
        *results_table(result),
        "",
        "## Best against runner-up, paired by seed",
        "",
        *winners_table(result),
        "",
        "Every pair of models, on every metric, is in compare.json under `paired`.",
    ]
    return "\n".join(lines) + "\n"
