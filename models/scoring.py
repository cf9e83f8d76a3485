"""Scoring beats: the scaler, reconstruction errors, and the serving path.

Two paths compute the same errors. The lab path runs the Keras model. The
serving path, :class:`Scorer`, runs the same dense layers as plain NumPy
matrix products: one call scores a whole batch in microseconds to
milliseconds, with no TensorFlow graph dispatch per call. A test holds the
two paths equal to 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from beatmon.errors import BundleError

if TYPE_CHECKING:
    import keras

PROFILE_SEGMENTS = 10


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


def error_profile(squared: np.ndarray, segments: int = PROFILE_SEGMENTS) -> np.ndarray:
    """Mean squared error in each of ``segments`` equal stretches of the beat."""
    segments = min(segments, squared.shape[1])
    bounds = np.linspace(0, squared.shape[1], segments + 1).round().astype(int)
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


class Scorer:
    """The serving path: the trained dense layers as NumPy products.

    Build it with :meth:`from_keras`. ``score`` takes beats in their original
    units, shape ``(n, length)``, and returns :class:`Scores`.
    """

    def __init__(
        self,
        layers: list[tuple[np.ndarray, np.ndarray, str]],
        scaler: Standardizer,
        threshold: float,
    ) -> None:
        for kernel, bias, activation in layers:
            if activation not in ("relu", "linear"):
                raise BundleError(
                    f"activation {activation!r} is not served; the serving path "
                    "handles relu and linear"
                )
            if kernel.ndim != 2 or bias.shape != (kernel.shape[1],):
                raise BundleError("serving weights have inconsistent shapes")
        self._layers = layers
        self._scaler = scaler
        self.threshold = threshold
        self.length = int(layers[0][0].shape[0])

    @classmethod
    def from_keras(
        cls, model: keras.Model, scaler: Standardizer, threshold: float
    ) -> Scorer:
        """Copy the weights of a stack of Dense layers out of ``model``."""
        import keras

        layers = []
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if not isinstance(layer, keras.layers.Dense):
                raise BundleError(
                    f"layer {layer.name!r} is a {type(layer).__name__}; the serving "
                    "path handles Dense layers only"
                )
            activation = keras.activations.serialize(layer.activation)
            name = activation if isinstance(activation, str) else str(activation)
            kernel, bias = (
                np.asarray(w, dtype=np.float32) for w in layer.get_weights()
            )
            layers.append((kernel, bias, name))
        return cls(layers, scaler, threshold)

    def save_weights(self, path: Path) -> None:
        """Write the layers to an ``.npz`` file that loads without pickle."""
        arrays: dict[str, np.ndarray] = {
            "activations": np.array([activation for _, _, activation in self._layers])
        }
        for i, (kernel, bias, _) in enumerate(self._layers):
            arrays[f"kernel_{i}"] = kernel
            arrays[f"bias_{i}"] = bias
        with path.open("wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)

    @classmethod
    def load_weights(cls, path: Path, scaler: Standardizer, threshold: float) -> Scorer:
        """Read layers written by :meth:`save_weights`; pickled content is refused."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                activations = [str(a) for a in npz["activations"]]
                layers = [
                    (npz[f"kernel_{i}"], npz[f"bias_{i}"], activation)
                    for i, activation in enumerate(activations)
                ]
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(
                f"{path}: cannot read the serving weights: {exc}"
            ) from exc
        return cls(layers, scaler, threshold)

    def reconstruct_scaled(self, scaled: np.ndarray) -> np.ndarray:
        x = scaled
        for kernel, bias, activation in self._layers:
            x = x @ kernel
            x += bias
            if activation == "relu":
                np.maximum(x, 0.0, out=x)
        return x

    def score(self, beats: np.ndarray) -> Scores:
        scaled = self._scaler.transform(np.asarray(beats, dtype=np.float32))
        squared = squared_errors(scaled, self.reconstruct_scaled(scaled))
        errors = squared.mean(axis=1)
        return Scores(errors, errors > self.threshold, error_profile(squared))
