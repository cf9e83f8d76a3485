"""Training one autoencoder variant on normal beats, and calibrating it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from models.autoencoder import ModelSpec, build
from models.data import BeatSet
from models.metrics import detection_metrics
from models.scoring import Standardizer, keras_errors
from models.splits import DEFAULT_FRACTIONS, Splits, make_splits
from models.threshold import DEFAULT_POLICY, ThresholdPolicy

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters. The defaults are the reference protocol."""

    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 5
    learning_rate: float = 1e-3
    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    policy: ThresholdPolicy = field(
        default_factory=lambda: ThresholdPolicy.parse(DEFAULT_POLICY)
    )


@dataclass(frozen=True)
class Trained:
    """A trained, calibrated model with everything needed to reproduce it."""

    spec: ModelSpec
    config: TrainConfig
    model: keras.Model
    scaler: Standardizer
    threshold: float
    splits: Splits
    normal_label: str
    data: BeatSet
    history: dict[str, list[float]]
    best_epoch: int
    train_seconds: float
    test_metrics: dict[str, Any]

    @property
    def epochs_run(self) -> int:
        return len(self.history.get("loss", []))


EpochReport = Callable[[int, int, dict[str, float]], None]


def _log_epoch(epoch: int, max_epochs: int, logs: dict[str, float]) -> None:
    logger.info(
        "epoch %d/%d: loss %.4f, val_loss %.4f",
        epoch,
        max_epochs,
        logs.get("loss", float("nan")),
        logs.get("val_loss", float("nan")),
    )


def train(
    data: BeatSet,
    normal_label: str,
    spec: ModelSpec,
    config: TrainConfig | None = None,
    on_epoch: EpochReport = _log_epoch,
) -> Trained:
    """Train ``spec`` on the training normals of ``data`` and calibrate it.

    The scaler is fitted on the training normals, early stopping watches the
    validation normals, and the threshold comes from the validation normals
    alone. The test split is scored once, at the end, for the record.
    """
    import keras

    settings = config or TrainConfig()
    normal = data.normal_mask(normal_label)
    splits = make_splits(normal, settings.seed, settings.fractions)
    scaler = Standardizer.fit(data.beats[splits.train])
    x_train = scaler.transform(data.beats[splits.train])
    x_val = scaler.transform(data.beats[splits.val])

    keras.utils.set_random_seed(settings.seed)
    model = build(spec, data.length)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=settings.learning_rate),
        loss="mse",
    )

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(
            self, epoch: int, logs: dict[str, float] | None = None
        ) -> None:
            on_epoch(epoch + 1, settings.max_epochs, dict(logs or {}))

    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=settings.patience, restore_best_weights=True
    )
    started = time.perf_counter()
    fit = model.fit(
        x_train,
        x_train,
        validation_data=(x_val, x_val),
        batch_size=settings.batch_size,
        epochs=settings.max_epochs,
        shuffle=True,
        callbacks=[stopper, Progress()],
        verbose=0,
    )
    train_seconds = time.perf_counter() - started
    history = {key: [float(v) for v in values] for key, values in fit.history.items()}
    best_epoch = int(np.argmin(history["val_loss"])) + 1

    threshold = settings.policy.calibrate(
        keras_errors(model, scaler, data.beats[splits.val])
    )
    test_errors = keras_errors(model, scaler, data.beats[splits.test])
    test_metrics = detection_metrics(test_errors, ~normal[splits.test], threshold)
    return Trained(
        spec=spec,
        config=settings,
        model=model,
        scaler=scaler,
        threshold=threshold,
        splits=splits,
        normal_label=normal_label,
        data=data,
        history=history,
        best_epoch=best_epoch,
        train_seconds=train_seconds,
        test_metrics=test_metrics,
    )


def summary_paragraph(trained: Trained) -> str:
    """One paragraph an operator can read at the end of a training run."""
    sizes = trained.splits.sizes()
    m = trained.test_metrics
    stopped = (
        f"stopped early after {trained.epochs_run} epochs"
        if trained.epochs_run < trained.config.max_epochs
        else f"ran all {trained.epochs_run} epochs"
    )

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    return (
        f"Trained the {trained.spec.name} autoencoder on {sizes['train']} normal beats "
        f"of {trained.data.source} (normal label {trained.normal_label!r}, seed "
        f"{trained.splits.seed}) in {trained.train_seconds:.1f} s; it {stopped} and "
        f"kept the weights of epoch {trained.best_epoch} (validation loss "
        f"{min(trained.history['val_loss']):.4f}). The threshold "
        f"{trained.threshold:.4f} comes from {sizes['val']} validation normals by "
        f"policy {trained.config.policy.name}. On {sizes['test']} test beats it never "
        f"saw ({m['normal_beats']} normal, {m['abnormal_beats']} abnormal): ROC-AUC "
        f"{num(m['roc_auc'])}, PR-AUC {num(m['pr_auc'])}, sensitivity "
        f"{pct(m['sensitivity'])}, false-alarm rate {pct(m['false_alarm_rate'])}, "
        f"F1 {num(m['f1'])}."
    )
