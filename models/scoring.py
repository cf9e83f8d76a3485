"""Scoring beats: the scaler, reconstruction errors, and the serving path.

Two paths compute the same errors. The lab path runs the Keras model. The
serving path, :class:`Scorer`, runs the same layers as plain NumPy operations
(:mod:`models.serving_ops`: dense, 1-D convolutions, reshapes): one call
scores a whole batch in microseconds to milliseconds, with no TensorFlow
graph dispatch per call. A test holds the two paths equal to 1e-5.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from beatmon.errors import BundleError
from models.serving_ops import (
    Conv1D,
    Conv1DTranspose,
    Cropping1D,
    Dense,
    Reshape,
    ServingOp,
    UpSampling1D,
    op_from_parts,
    op_parts,
)

if TYPE_CHECKING:
    import keras

PROFILE_SEGMENTS = 10
SERVING_FORMAT = 2
# Keras layers that act only in training: the identity at serving time.
TRAINING_ONLY_LAYERS = ("InputLayer", "GaussianNoise", "GaussianDropout", "Dropout")


def limit_blas_threads() -> None:
    """Run BLAS on one thread in this process, as the serving path expects.

    The serving path multiplies small matrices (up to about 1024 x 256). Split
    over threads, they spend more time waking threads than multiplying, and
    when another process holds the second core a batch of 64 beats was seen
    to take 70 ms instead of 0.3 ms.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


@dataclass(frozen=True)
class Standardizer:
    """Per-sample standardisation fitted on training normals only."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, beats: np.ndarray) -> Standardizer:
        mean = beats.mean(axis=0)
        scale = beats.std(axis=0)
        scale = np.where(scale > 1e-8, scale, 1.0)
        return cls(mean.astype(np.float32), scale.astype(np.float32))

    def transform(self, beats: np.ndarray) -> np.ndarray:
        return ((beats - self.mean) / self.scale).astype(np.float32, copy=False)

    def inverse_transform(self, scaled: np.ndarray) -> np.ndarray:
        """Scaled beats back in the units of the data, as float64."""
        return scaled.astype(np.float64) * self.scale + self.mean

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "standard",
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Standardizer:
        if data.get("kind") != "standard":
            raise BundleError(f"unknown scaler kind {data.get('kind')!r}")
        return cls(
            np.asarray(data["mean"], dtype=np.float32),
            np.asarray(data["scale"], dtype=np.float32),
        )


def squared_errors(scaled: np.ndarray, reconstructed: np.ndarray) -> np.ndarray:
    """Squared reconstruction error per sample, in scaled units."""
    return np.square(scaled.astype(np.float64) - reconstructed.astype(np.float64))


def segment_bounds(length: int, segments: int = PROFILE_SEGMENTS) -> np.ndarray:
    """Where each stretch of the error profile starts, then the beat's end.

    ``segments + 1`` sample indices from 0 to ``length`` (fewer stretches when
    the beat has fewer samples than ``segments``); stretch ``k`` is samples
    ``bounds[k]`` up to, not including, ``bounds[k + 1]``.
    """
    segments = min(segments, length)
    return np.linspace(0, length, segments + 1).round().astype(int)


def error_profile(squared: np.ndarray, segments: int = PROFILE_SEGMENTS) -> np.ndarray:
    """Mean squared error in each of ``segments`` equal stretches of the beat."""
    bounds = segment_bounds(squared.shape[1], segments)
    return np.add.reduceat(squared, bounds[:-1], axis=1) / np.diff(bounds)


def keras_errors(
    model: keras.Model, scaler: Standardizer, beats: np.ndarray, batch_size: int = 1024
) -> np.ndarray:
    """Mean squared reconstruction error per beat, computed by the Keras model."""
    scaled = scaler.transform(beats)
    reconstructed = model.predict(scaled, batch_size=batch_size, verbose=0)
    return squared_errors(scaled, reconstructed).mean(axis=1)


@dataclass(frozen=True)
class Scores:
    """What scoring a batch gives: per-beat error, flag and error profile."""

    errors: np.ndarray
    flagged: np.ndarray
    profiles: np.ndarray


@dataclass(frozen=True)
class Reconstruction:
    """Scores of a batch with what they came from, to show why a beat scored so.

    ``reconstructed`` is in the units of the beats; ``squared`` is the squared
    error of each sample in scaled units, whose mean is the beat's error.
    """

    reconstructed: np.ndarray
    squared: np.ndarray
    scores: Scores


def _weights_error(path: Path, exc: Exception) -> str:
    """What is wrong with the serving weights at ``path``, and what to do."""
    # NumPy names allow_pickle when a file holds pickled objects it won't load.
    if "allow_pickle" in str(exc):
        return (
            f"{path}: refused: it holds pickled Python objects, which beatmon "
            "never loads because unpickling can run any code; beatmon train "
            "writes plain number arrays only, so the bundle was changed after "
            "training: retrain with beatmon train, or restore the bundle from a "
            "copy you trust"
        )
    return (
        f"{path}: cannot read the serving weights: {exc}; retrain with beatmon "
        "train or restore the bundle"
    )


class Scorer:
    """The serving path: the trained layers as NumPy operations.

    Build it with :meth:`from_keras` or :meth:`load_weights`. ``score`` takes
    beats in their original units, shape ``(n, length)``, and returns
    :class:`Scores`. The ops must map ``(n, length)`` to ``(n, length)``,
    where ``length`` is the scaler's; that is checked on construction.
    """

    def __init__(
        self, ops: Sequence[ServingOp], scaler: Standardizer, threshold: float
    ) -> None:
        if not ops:
            raise BundleError("the serving path has no layers")
        self._ops = tuple(ops)
        self._scaler = scaler
        self.threshold = threshold
        self.length = int(scaler.mean.shape[0])
        try:
            shape = self.reconstruct_scaled(np.zeros((1, self.length), np.float32))
        except (ValueError, IndexError) as exc:
            raise BundleError(
                f"serving weights do not fit beats of {self.length} samples: {exc}"
            ) from exc
        if shape.shape != (1, self.length):
            raise BundleError(
                f"serving weights turn beats of {self.length} samples into shape "
                f"{shape.shape[1:]}, not ({self.length},)"
            )

    @property
    def ops(self) -> tuple[ServingOp, ...]:
        return self._ops

    @classmethod
    def from_keras(
        cls, model: keras.Model, scaler: Standardizer, threshold: float
    ) -> Scorer:
        """Copy the layers of ``model`` into serving ops."""
        return cls(
            [serving_op(layer) for layer in _inference_layers(model)],
            scaler,
            threshold,
        )

    def save_weights(self, path: Path) -> None:
        """Write the ops to an ``.npz`` file that loads without pickle."""
        described = []
        arrays: dict[str, np.ndarray] = {"format": np.array(SERVING_FORMAT)}
        for i, op in enumerate(self._ops):
            config, op_arrays = op_parts(op)
            described.append(config)
            for key, value in op_arrays.items():
                arrays[f"op{i}_{key}"] = value
        arrays["ops"] = np.array(json.dumps(described))
        with path.open("wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)

    @classmethod
    def load_weights(cls, path: Path, scaler: Standardizer, threshold: float) -> Scorer:
        """Read ops written by :meth:`save_weights`; pickled content is refused.

        Files of the first format, a stack of dense layers, still load.
        """
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "ops" in npz:
                    ops = _read_ops(npz)
                else:
                    activations = [str(a) for a in npz["activations"]]
                    ops = [
                        Dense(npz[f"kernel_{i}"], npz[f"bias_{i}"], activation)
                        for i, activation in enumerate(activations)
                    ]
        except (
            OSError,
            EOFError,
            KeyError,
            ValueError,
            zipfile.BadZipFile,
            zlib.error,
            BundleError,
        ) as exc:
            raise BundleError(_weights_error(path, exc)) from exc
        try:
            return cls(ops, scaler, threshold)
        except BundleError as exc:
            raise BundleError(f"{path}: {exc}") from exc

    def reconstruct_scaled(self, scaled: np.ndarray) -> np.ndarray:
        x = scaled
        for op in self._ops:
            x = op.apply(x)
        return x

    def score(self, beats: np.ndarray) -> Scores:
        scaled = self._scaler.transform(np.asarray(beats, dtype=np.float32))
        squared = squared_errors(scaled, self.reconstruct_scaled(scaled))
        errors = squared.mean(axis=1)
        return Scores(errors, errors > self.threshold, error_profile(squared))

    def reconstruct(self, beats: np.ndarray) -> Reconstruction:
        """Score ``beats`` exactly as :meth:`score` does, keeping the reconstruction."""
        scaled = self._scaler.transform(np.asarray(beats, dtype=np.float32))
        reconstructed = self.reconstruct_scaled(scaled)
        squared = squared_errors(scaled, reconstructed)
        errors = squared.mean(axis=1)
        return Reconstruction(
            reconstructed=self._scaler.inverse_transform(reconstructed),
            squared=squared,
            scores=Scores(errors, errors > self.threshold, error_profile(squared)),
        )


def _read_ops(npz: Any) -> list[ServingOp]:
    if int(npz["format"]) != SERVING_FORMAT:
        raise ValueError(
            f"serving format {int(npz['format'])}; this beatmon reads {SERVING_FORMAT}"
        )
    described = json.loads(str(npz["ops"]))
    ops = []
    for i, config in enumerate(described):
        prefix = f"op{i}_"
        arrays = {
            key.removeprefix(prefix): npz[key]
            for key in npz.files
            if key.startswith(prefix)
        }
        ops.append(op_from_parts(config, arrays))
    return ops


def _inference_layers(model: keras.Model) -> list[Any]:
    return [
        layer
        for layer in model.layers
        if type(layer).__name__ not in TRAINING_ONLY_LAYERS
    ]


def _activation_name(layer: Any) -> str:
    import keras

    name = keras.activations.serialize(layer.activation)
    return name if isinstance(name, str) else str(name)


def _conv_settings(layer: Any, kind: str) -> dict[str, Any]:
    config = layer.get_config()
    if config.get("data_format", "channels_last") != "channels_last":
        raise BundleError(f"layer {layer.name!r}: only channels_last {kind} is served")
    if tuple(config.get("dilation_rate", (1,))) != (1,) or config.get("groups", 1) != 1:
        raise BundleError(
            f"layer {layer.name!r}: dilated or grouped {kind} is not served"
        )
    if config.get("output_padding") is not None:
        raise BundleError(f"layer {layer.name!r}: output padding is not served")
    if not layer.use_bias:
        raise BundleError(f"layer {layer.name!r}: {kind} without bias is not served")
    return {
        "activation": _activation_name(layer),
        "strides": int(config["strides"][0]),
        "padding": str(config["padding"]),
    }


def serving_op(layer: Any) -> ServingOp:
    """The serving op equal to one Keras layer, or a clear refusal."""
    import keras

    layers = keras.layers

    def weights() -> list[np.ndarray]:
        return [np.asarray(w, dtype=np.float32) for w in layer.get_weights()]

    if isinstance(layer, layers.Dense):
        if not layer.use_bias:
            raise BundleError(f"layer {layer.name!r}: Dense without bias is not served")
        kernel, bias = weights()
        return Dense(kernel, bias, _activation_name(layer))
    if isinstance(layer, layers.Conv1DTranspose):
        settings = _conv_settings(layer, "Conv1DTranspose")
        kernel, bias = weights()
        return Conv1DTranspose(kernel, bias, **settings)
    if isinstance(layer, layers.Conv1D):
        settings = _conv_settings(layer, "Conv1D")
        kernel, bias = weights()
        return Conv1D(kernel, bias, **settings)
    if isinstance(layer, layers.UpSampling1D):
        return UpSampling1D(int(layer.size))
    if isinstance(layer, layers.Cropping1D):
        start, end = layer.cropping
        return Cropping1D(int(start), int(end))
    if isinstance(layer, (layers.Reshape, layers.Flatten)):
        shape = tuple(int(d) for d in layer.output.shape[1:])
        return Reshape(shape)
    raise BundleError(
        f"layer {layer.name!r} is a {type(layer).__name__}; the serving path handles "
        "Dense, Conv1D, Conv1DTranspose, UpSampling1D, Cropping1D, Reshape and "
        "Flatten, and skips layers that act only in training"
    )
