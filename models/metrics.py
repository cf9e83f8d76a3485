"""Detection metrics for reconstruction errors, with abnormal beats as positives."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    confusion_matrix,
    roc_auc_score,
)

CLASS_NAMES = ("normal", "abnormal")


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def detection_metrics(
    errors: np.ndarray, abnormal: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Ranking metrics over all thresholds, and counts at ``threshold``.

    ``abnormal`` is the ground truth (True for abnormal beats). A beat is
    predicted abnormal when its error is above ``threshold``. Ratios that are
    undefined for the data (no positives, say) are ``None``.
    """
    abnormal = np.asarray(abnormal, dtype=bool)
    predicted = np.asarray(errors) > threshold
    tn, fp, fn, tp = (
        int(v)
        for v in confusion_matrix(abnormal, predicted, labels=[False, True]).ravel()
    )
    both_classes = 0 < abnormal.sum() < abnormal.size
    sensitivity = _ratio(tp, tp + fn)
    precision = _ratio(tp, tp + fp)
    f1 = (
        2 * precision * sensitivity / (precision + sensitivity)
        if precision and sensitivity
        else (0.0 if precision is not None and sensitivity is not None else None)
    )
    return {
        "beats": int(abnormal.size),
        "normal_beats": int((~abnormal).sum()),
        "abnormal_beats": int(abnormal.sum()),
        "threshold": float(threshold),
        "roc_auc": float(roc_auc_score(abnormal, errors)) if both_classes else None,
        "pr_auc": float(average_precision_score(abnormal, errors))
        if both_classes
        else None,
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "f1": f1,
        "false_alarm_rate": _ratio(fp, fp + tn),
        "accuracy": _ratio(tp + tn, abnormal.size),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def report_text(errors: np.ndarray, abnormal: np.ndarray, threshold: float) -> str:
    """scikit-learn's classification report at ``threshold``."""
    return str(
        classification_report(
            np.asarray(abnormal, dtype=bool),
            np.asarray(errors) > threshold,
            labels=[False, True],
            target_names=list(CLASS_NAMES),
            digits=4,
            zero_division=0,
        )
    )
