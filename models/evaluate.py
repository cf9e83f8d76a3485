"""Evaluating a bundle: metrics, the classification report, plots and a report."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from beatmon.errors import DataError
from models.bundle import Bundle
from models.data import BeatSet
from models.metrics import detection_metrics, report_text
from models.scoring import keras_errors

logger = logging.getLogger(__name__)

PLOTS = {
    "loss.png": "Training and validation loss",
    "errors.png": "Reconstruction error of normal and abnormal beats",
    "roc.png": "ROC curve",
    "pr.png": "Precision-recall curve",
    "confusion.png": "Confusion matrix at the calibrated threshold",
}


@dataclass(frozen=True)
class EvaluationSet:
    """The beats to evaluate on, their truth, and how they were chosen."""

    beats: np.ndarray
    abnormal: np.ndarray
    description: str


def evaluation_set(bundle: Bundle, data: BeatSet, normal_label: str) -> EvaluationSet:
    """The recorded test split when ``data`` is the training data, else all of it."""
    normal = data.normal_mask(normal_label)
    if data.sha256 == bundle.metadata["data"]["sha256"]:
        rows = bundle.splits.test
        return EvaluationSet(
            data.beats[rows],
            ~normal[rows],
            f"the held-out test split of {data.source} ({rows.size} beats, "
            f"seed {bundle.splits.seed})",
        )
    return EvaluationSet(
        data.beats,
        ~normal,
        f"all {len(data.beats)} beats of {data.source}, none of which the model "
        "was trained or calibrated on",
    )


def evaluate(
    bundle: Bundle, data: BeatSet, normal_label: str, out: Path
) -> dict[str, Any]:
    """Score the evaluation set and write metrics, report text, plots and report.md."""
    if data.length != bundle.beat_length:
        raise DataError(
            f"{data.source} has beats of {data.length} samples; the model in "
            f"{bundle.path} expects {bundle.beat_length}"
        )
    chosen = evaluation_set(bundle, data, normal_label)
    errors = keras_errors(bundle.model, bundle.scaler, chosen.beats)
    metrics = detection_metrics(errors, chosen.abnormal, bundle.threshold)
    metrics["evaluated_on"] = chosen.description
    metrics["model_version"] = bundle.version
    metrics["threshold_policy"] = bundle.policy

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = report_text(errors, chosen.abnormal, bundle.threshold)
    (out / "classification_report.txt").write_text(report)
    _plot_all(bundle, errors, chosen.abnormal, out)
    drawn = [name for name in PLOTS if (out / name).is_file()]
    (out / "report.md").write_text(_report_md(bundle, metrics, report, drawn))
    return metrics


def _plot_all(
    bundle: Bundle, errors: np.ndarray, abnormal: np.ndarray, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import (
        ConfusionMatrixDisplay,
        precision_recall_curve,
        roc_curve,
    )

    threshold = bundle.threshold
    history = bundle.metadata["training"]["history"]

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(history["loss"]) + 1), history["loss"], label="training")
    ax.plot(
        range(1, len(history["val_loss"]) + 1), history["val_loss"], label="validation"
    )
    ax.axvline(
        bundle.metadata["training"]["best_epoch"], color="grey", ls=":", label="kept"
    )
    ax.set(xlabel="epoch", ylabel="loss (MSE, scaled units)", title=PLOTS["loss.png"])
    ax.legend()
    _save(fig, out / "loss.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    positive = errors[errors > 0]
    low = positive.min() if positive.size else 1e-6
    bins = np.geomspace(low, max(errors.max(), threshold) * 1.01, 60).tolist()
    ax.hist(errors[~abnormal], bins=bins, alpha=0.6, label="normal")
    ax.hist(errors[abnormal], bins=bins, alpha=0.6, label="abnormal")
    ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.3g}")
    ax.set_xscale("log")
    ax.set(
        xlabel="reconstruction error (MSE)", ylabel="beats", title=PLOTS["errors.png"]
    )
    ax.legend()
    _save(fig, out / "errors.png")

    if 0 < abnormal.sum() < abnormal.size:
        fpr, tpr, _ = roc_curve(abnormal, errors)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(fpr, tpr)
        ax.plot([0, 1], [0, 1], color="grey", ls=":")
        ax.set(xlabel="false-alarm rate", ylabel="sensitivity", title=PLOTS["roc.png"])
        _save(fig, out / "roc.png")

        precision, recall, _ = precision_recall_curve(abnormal, errors)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(recall, precision)
        ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=PLOTS["pr.png"])
        _save(fig, out / "pr.png")

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(
        abnormal,
        errors > threshold,
        labels=[False, True],
        display_labels=["normal", "abnormal"],
        ax=ax,
        colorbar=False,
    )
    ax.set_title(PLOTS["confusion.png"], fontsize=9)
    _save(fig, out / "confusion.png")


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _report_md(
    bundle: Bundle, metrics: dict[str, Any], report: str, plots: list[str]
) -> str:
    cm = metrics["confusion_matrix"]
    meta = bundle.metadata
    lines = [
        f"# Evaluation of {bundle.version}",
        "",
        f"Model: {meta['model']['summary']}, {meta['model']['parameters']} parameters.",
        f"Data: {meta['data']['source']} (sha256 `{meta['data']['sha256'][:16]}…`), "
        f"normal label `{meta['data']['normal_label']}`.",
        f"Evaluated on {metrics['evaluated_on']}.",
        f"Threshold {bundle.threshold:.5g}, chosen by policy `{bundle.policy}` on "
        f"{bundle.splits.val.size} validation normals; a beat is flagged when its "
        "error is above it.",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    for key in (
        "roc_auc",
        "pr_auc",
        "sensitivity",
        "specificity",
        "precision",
        "f1",
        "false_alarm_rate",
    ):
        lines.append(f"| {key} | {_fmt(metrics[key])} |")
    lines += [
        "",
        "Confusion matrix (rows: truth, columns: prediction):",
        "",
        "| | predicted normal | predicted abnormal |",
        "| --- | --- | --- |",
        f"| normal | {cm['tn']} | {cm['fp']} |",
        f"| abnormal | {cm['fn']} | {cm['tp']} |",
        "",
        "```",
        report.rstrip(),
        "```",
        "",
    ]
    for name in plots:
        lines += [f"## {PLOTS[name]}", "", f"![{PLOTS[name]}]({name})", ""]
    return "\n".join(lines)
