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
    "worst.png": "Worst false alarms and worst misses",
}
WORST_PER_ROW = 4
WORST_NOTE = (
    f"Top row: the {WORST_PER_ROW} normal beats of the evaluation set with the "
    "highest error, the worst false alarms when above the threshold. Bottom row: "
    f"the {WORST_PER_ROW} abnormal beats with the lowest error, the worst misses "
    "when below it. Each shows the beat and its reconstruction, the squared "
    "error of every sample with the mean of each tenth of the beat, and shaded, "
    "the tenth that deviates most (as `beatmon explain` draws one beat)."
)


@dataclass(frozen=True)
class EvaluationSet:
    """The beats to evaluate on, their truth, and how they were chosen."""

    beats: np.ndarray
    abnormal: np.ndarray
    description: str
    rows: np.ndarray


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
            rows,
        )
    return EvaluationSet(
        data.beats,
        ~normal,
        f"all {len(data.beats)} beats of {data.source}, none of which the model "
        "was trained or calibrated on",
        np.arange(len(data.beats)),
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
    _plot_worst(bundle, chosen, errors, data.source, out)
    drawn = [name for name in PLOTS if (out / name).is_file()]
    (out / "report.md").write_text(_report_md(bundle, metrics, report, drawn))
    return metrics


def _plot_all(
    bundle: Bundle, errors: np.ndarray, abnormal: np.ndarray, out: Path
) -> None:
    from sklearn.metrics import (
        ConfusionMatrixDisplay,
        precision_recall_curve,
        roc_curve,
    )

    plt = pyplot()
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
    save_figure(fig, out / "loss.png")

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
    save_figure(fig, out / "errors.png")

    if 0 < abnormal.sum() < abnormal.size:
        fpr, tpr, _ = roc_curve(abnormal, errors)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(fpr, tpr)
        ax.plot([0, 1], [0, 1], color="grey", ls=":")
        ax.set(xlabel="false-alarm rate", ylabel="sensitivity", title=PLOTS["roc.png"])
        save_figure(fig, out / "roc.png")

        precision, recall, _ = precision_recall_curve(abnormal, errors)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(recall, precision)
        ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=PLOTS["pr.png"])
        save_figure(fig, out / "pr.png")

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
    save_figure(fig, out / "confusion.png")


def _plot_worst(
    bundle: Bundle, chosen: EvaluationSet, errors: np.ndarray, source: str, out: Path
) -> None:
    """The normal beats with the highest error and the abnormal ones with the lowest.

    They are ranked by the evaluation's errors and drawn from the serving path,
    as ``beatmon explain`` draws a beat.
    """
    from models.bundle import load_serving_bundle
    from models.explain import explain, write_gallery

    scorer = load_serving_bundle(bundle.path).scorer
    normal = np.flatnonzero(~chosen.abnormal)
    abnormal = np.flatnonzero(chosen.abnormal)
    picks = [
        (
            "false alarms",
            "normal beats, highest error",
            normal[np.argsort(-errors[normal], kind="stable")][:WORST_PER_ROW],
            "normal",
        ),
        (
            "misses",
            "abnormal beats, lowest error",
            abnormal[np.argsort(errors[abnormal], kind="stable")][:WORST_PER_ROW],
            "abnormal",
        ),
    ]
    rows = []
    for name, caption, picked, truth in picks:
        if picked.size == 0:
            continue
        subjects = [f"row {chosen.rows[i]} of {source}" for i in picked]
        beats = explain(
            scorer,
            chosen.beats[picked],
            subjects,
            bundle.version,
            [truth] * picked.size,
        )
        rows.append((f"{name}:\n{caption}", beats))
    write_gallery(
        rows,
        out / "worst.png",
        f"{PLOTS['worst.png']} of {bundle.version} (threshold {bundle.threshold:.4g})",
    )


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, which draws to files without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, *, tight: bool = True) -> None:
    """Write ``fig`` as a PNG at ``path`` and free it."""
    plt = pyplot()
    if tight:
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
        lines += [f"## {PLOTS[name]}", ""]
        if name == "worst.png":
            lines += [WORST_NOTE, ""]
        lines += [f"![{PLOTS[name]}]({name})", ""]
    return "\n".join(lines)
