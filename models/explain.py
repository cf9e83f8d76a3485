"""Why a beat scored as it did: the beat, its reconstruction, and where they differ.

The numbers come from the serving path (:meth:`models.scoring.Scorer.reconstruct`),
the same code the monitor scores with, so an explanation agrees with the
alert the monitor published: the same error, and the same ten-stretch error
profile (:func:`models.scoring.segment_bounds`). The stretch with the largest
mean squared error is the one that drove the score; the drawing marks it.

A drawing has two panels over the same sample axis: the beat and its
reconstruction in the units of the data, and the squared error of every
sample in standardised units with each stretch's mean beside the threshold
(a beat is flagged when the mean over all its samples is above it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from beatmon.errors import DataError
from models.scoring import Scorer, segment_bounds

logger = logging.getLogger(__name__)

TOP_SEGMENT_GID = "top-segment"
BEAT_COLOR = "#1f77b4"
RECONSTRUCTION_COLOR = "#ff7f0e"
ERROR_COLOR = "#d62728"
HIGHLIGHT_COLOR = "#ffd54f"


@dataclass(frozen=True)
class Explanation:
    """One beat scored by one model, with everything needed to draw it.

    ``samples`` and ``reconstructed`` are in the units of the data;
    ``squared`` (per sample) and ``profile`` (per stretch) are squared errors
    in standardised units; ``bounds`` are the stretches' sample bounds.
    """

    subject: str
    samples: np.ndarray
    reconstructed: np.ndarray
    squared: np.ndarray
    profile: np.ndarray
    bounds: np.ndarray
    error: float
    threshold: float
    flagged: bool
    model_version: str
    truth: str | None = None

    @property
    def top_segment(self) -> int:
        """Index of the stretch with the largest mean squared error, from 0."""
        return int(np.argmax(self.profile))

    @property
    def top_samples(self) -> tuple[int, int]:
        """First and one-past-last sample of the top stretch."""
        k = self.top_segment
        return int(self.bounds[k]), int(self.bounds[k + 1])

    def verdict(self) -> str:
        return "flagged" if self.flagged else "not flagged"

    def summary(self) -> str:
        """One line for the operator: the score, the verdict and where it came from."""
        start, end = self.top_samples
        truth = f", truth {self.truth}" if self.truth else ""
        return (
            f"{self.subject}{truth}: error {self.error:.6g} vs threshold "
            f"{self.threshold:.6g}, {self.verdict()} by {self.model_version}; "
            f"largest deviation in segment {self.top_segment + 1} of "
            f"{self.profile.size} (samples {start}-{end - 1}, mean squared error "
            f"{self.profile[self.top_segment]:.6g})"
        )


def explain(
    scorer: Scorer,
    beats: np.ndarray,
    subjects: Sequence[str],
    model_version: str,
    truths: Sequence[str | None] | None = None,
) -> list[Explanation]:
    """Score ``beats`` (shape ``(n, length)``) on the serving path and explain each."""
    beats = np.asarray(beats, dtype=np.float64)
    if beats.ndim != 2 or beats.shape[1] != scorer.length:
        got = beats.shape[-1] if beats.ndim else 0
        raise DataError(
            f"the beat has {got} samples; the model {model_version} expects "
            f"{scorer.length}"
        )
    result = scorer.reconstruct(beats)
    bounds = segment_bounds(scorer.length, result.scores.profiles.shape[1])
    truths = truths if truths is not None else [None] * len(beats)
    return [
        Explanation(
            subject=subjects[i],
            samples=beats[i],
            reconstructed=result.reconstructed[i],
            squared=result.squared[i],
            profile=result.scores.profiles[i],
            bounds=bounds,
            error=float(result.scores.errors[i]),
            threshold=float(scorer.threshold),
            flagged=bool(result.scores.flagged[i]),
            model_version=model_version,
            truth=truths[i],
        )
        for i in range(len(beats))
    ]


def draw(
    explanation: Explanation, signal_ax: Any, error_ax: Any, *, compact: bool = False
) -> None:
    """Draw ``explanation`` on two axes that share the sample axis.

    The top stretch is shaded on both; its patch on ``signal_ax`` has the gid
    ``TOP_SEGMENT_GID``. ``compact`` leaves out the axis labels and legends,
    for a grid of beats.
    """
    e = explanation
    x = np.arange(e.samples.size)
    start, end = e.top_samples
    span = (start - 0.5, end - 0.5)
    top = "largest deviation"
    if not compact:
        top = f"segment {e.top_segment + 1} of {e.profile.size}: {top}"

    signal_ax.axvspan(
        *span, color=HIGHLIGHT_COLOR, alpha=0.35, label=top, gid=TOP_SEGMENT_GID
    )
    signal_ax.plot(x, e.samples, color=BEAT_COLOR, lw=1.4, label="beat")
    signal_ax.plot(
        x,
        e.reconstructed,
        color=RECONSTRUCTION_COLOR,
        lw=1.2,
        ls="--",
        label="reconstruction",
    )

    error_ax.axvspan(*span, color=HIGHLIGHT_COLOR, alpha=0.35)
    error_ax.fill_between(
        x, e.squared, color=ERROR_COLOR, alpha=0.25, lw=0, label="squared error"
    )
    error_ax.plot(x, e.squared, color=ERROR_COLOR, lw=0.8)
    for k, mean in enumerate(e.profile):
        error_ax.hlines(
            mean,
            e.bounds[k] - 0.5,
            e.bounds[k + 1] - 0.5,
            color="black",
            lw=1.6,
            label="segment mean" if k == 0 else None,
        )
    for bound in e.bounds[1:-1]:
        error_ax.axvline(bound - 0.5, color="grey", lw=0.4, ls=":")
    error_ax.axhline(
        e.threshold,
        color="black",
        ls="--",
        lw=0.9,
        label=f"threshold {e.threshold:.3g} (on the beat's mean)",
    )
    error_ax.axhline(
        e.error,
        color=ERROR_COLOR,
        ls=":",
        lw=1.2,
        label="the beat's error (the mean)"
        if compact
        else f"this beat's error {e.error:.3g} (the mean)",
    )
    for ax in (signal_ax, error_ax):
        ax.set_xlim(-0.5, e.samples.size - 0.5)
    signal_ax.tick_params(labelbottom=False)

    if compact:
        return
    signal_ax.set_ylabel("amplitude (units of the data)")
    signal_ax.legend(loc="best", fontsize=8)
    error_ax.set_xlabel("sample within the beat")
    error_ax.set_ylabel("squared error\n(standardised units²)")
    error_ax.legend(loc="upper right", fontsize=8)


def title(explanation: Explanation) -> str:
    """The two-line title: what the beat is, then the model's verdict."""
    e = explanation
    truth = f" (truth: {e.truth})" if e.truth else ""
    return (
        f"{e.subject}{truth}\nmodel {e.model_version}: error {e.error:.4g} vs "
        f"threshold {e.threshold:.4g}, {e.verdict().upper()}"
    )


def write_explanation(explanation: Explanation, path: Path) -> Path:
    """Draw one beat to a PNG at ``path``; returns the path."""
    from models.evaluate import pyplot, save_figure

    plt = pyplot()
    fig, (signal_ax, error_ax) = plt.subplots(
        2, 1, figsize=(9, 6), sharex=True, height_ratios=(3, 2)
    )
    draw(explanation, signal_ax, error_ax)
    fig.suptitle(title(explanation), fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path


def write_gallery(
    rows: Sequence[tuple[str, Sequence[Explanation]]], path: Path, heading: str
) -> Path:
    """Draw rows of beats, each drawn as :func:`write_explanation` draws one.

    ``rows`` holds a caption and the beats of each row; rows may be short.
    """
    from models.evaluate import pyplot, save_figure

    plt = pyplot()
    columns = max((len(beats) for _, beats in rows), default=0)
    if not rows or columns == 0:
        raise DataError(f"no beats to draw in {path}")
    fig = plt.figure(figsize=(4 * columns, 4.6 * len(rows)))
    outer = fig.add_gridspec(len(rows), columns, hspace=0.45, wspace=0.3)
    for r, (caption, beats) in enumerate(rows):
        for c, explanation in enumerate(beats):
            cell = outer[r, c].subgridspec(2, 1, height_ratios=(3, 2), hspace=0.08)
            signal_ax = fig.add_subplot(cell[0])
            error_ax = fig.add_subplot(cell[1], sharex=signal_ax)
            draw(explanation, signal_ax, error_ax, compact=True)
            signal_ax.set_title(
                f"{explanation.subject}\nerror {explanation.error:.3g}, "
                f"{explanation.verdict()}",
                fontsize=8,
            )
            if c == 0:
                signal_ax.set_ylabel(f"{caption}\n\namplitude", fontsize=8)
                error_ax.set_ylabel("squared error\n(std. units²)", fontsize=8)
            if r == len(rows) - 1:
                error_ax.set_xlabel("sample within the beat", fontsize=8)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    more, more_labels = fig.axes[1].get_legend_handles_labels()
    fig.legend(
        handles + more, labels + more_labels, loc="lower center", ncol=6, fontsize=8
    )
    fig.suptitle(heading, fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.12)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, tight=False)
    return path
