"""Comparing variants over several seeds, paired by seed."""

from __future__ import annotations

import itertools
import json
import logging
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.autoencoder import ModelSpec
from models.data import BeatSet
from models.train import TrainConfig, train

logger = logging.getLogger(__name__)

METRICS = ("roc_auc", "pr_auc", "f1", "sensitivity", "false_alarm_rate")

PROTOCOL = (
    "Each model is trained once per seed. A seed fixes both the split of the "
    "normal beats (60% train, 20% validation, 20% test) and the initial weights, "
    "so for a given seed every model sees exactly the same beats. Abnormal beats "
    "are never trained on; they all go to the test split. The scaler is fitted on "
    "the training normals, early stopping watches the validation normals, and the "
    "threshold is calibrated on the validation normals alone by policy {policy}. "
    "The test split is scored once per run. For each metric we report the mean "
    "and the sample standard deviation over seeds. Two models are compared "
    "seed by seed: the paired difference is a minus b on the same split, and it "
    "counts as larger than the noise when its mean exceeds the larger of the two "
    "models' seed-to-seed standard deviations."
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


def compare(
    data: BeatSet,
    normal_label: str,
    specs: list[ModelSpec],
    seeds: int,
    config: TrainConfig,
    out: Path,
) -> dict[str, Any]:
    """Train every spec for seeds 0..seeds-1 and write compare.json and compare.md."""
    runs: dict[str, list[dict[str, Any]]] = {spec.name: [] for spec in specs}
    for seed in range(seeds):
        for spec in specs:
            trained = train(data, normal_label, spec, replace(config, seed=seed))
            m = trained.test_metrics
            logger.info(
                "model=%s seed=%d roc_auc=%.4f pr_auc=%.4f f1=%.4f seconds=%.1f",
                spec.name,
                seed,
                m["roc_auc"],
                m["pr_auc"],
                m["f1"],
                trained.train_seconds,
            )
            runs[spec.name].append(
                {
                    "seed": seed,
                    "epochs": trained.epochs_run,
                    "train_seconds": trained.train_seconds,
                    "threshold": trained.threshold,
                    **{key: m[key] for key in METRICS},
                }
            )

    models: dict[str, dict[str, Any]] = {
        name: {
            **{key: _mean_std([run[key] for run in rows]) for key in METRICS},
            "train_seconds": _mean_std([run["train_seconds"] for run in rows]),
            "runs": rows,
        }
        for name, rows in runs.items()
    }
    pairs = {}
    for a, b in itertools.combinations(runs, 2):
        pairs[f"{a} - {b}"] = {
            key: paired(
                [run[key] for run in runs[a]],
                [run[key] for run in runs[b]],
                models[a][key]["std"],
                models[b][key]["std"],
            )
            for key in METRICS
        }
    result = {
        "protocol": PROTOCOL.format(policy=config.policy.name),
        "data": {
            "source": data.source,
            "sha256": data.sha256,
            "normal_label": normal_label,
        },
        "seeds": list(range(seeds)),
        "models": models,
        "paired": pairs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "compare.md").write_text(compare_markdown(result))
    return result


def compare_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Comparison of autoencoder variants",
        "",
        f"Data: {result['data']['source']}, normal label "
        f"`{result['data']['normal_label']}`, seeds {result['seeds']}.",
        "",
        "## Protocol",
        "",
        result["protocol"],
        "",
        "## Test metrics, mean ± std over seeds",
        "",
        "| model | " + " | ".join(METRICS) + " | training s |",
        "| --- |" + " --- |" * (len(METRICS) + 1),
    ]
    for name, stats in result["models"].items():
        cells = [f"{stats[k]['mean']:.4f} ± {stats[k]['std']:.4f}" for k in METRICS]
        seconds = stats["train_seconds"]
        cells.append(f"{seconds['mean']:.1f} ± {seconds['std']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for pair, by_metric in result["paired"].items():
        lines += [
            "",
            f"## Paired difference {pair}",
            "",
            "| metric | mean difference | std of difference | seed noise | verdict |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, d in by_metric.items():
            verdict = (
                "larger than the noise" if d["exceeds_noise"] else "within the noise"
            )
            lines.append(
                f"| {key} | {d['mean_difference']:+.4f} | {d['std_difference']:.4f} | "
                f"{d['seed_noise']:.4f} | {verdict} |"
            )
    return "\n".join(lines) + "\n"
