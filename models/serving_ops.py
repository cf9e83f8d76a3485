"""NumPy layer operations for the serving path, each equal to its Keras layer.

Every op takes and returns float32 arrays with the batch first, in Keras's
channels-last layout: ``(n, features)`` for dense layers and ``(n, steps,
channels)`` for 1-D convolutions. Padding and strides follow Keras (and
TensorFlow) exactly: ``"same"`` pads ``max((out - 1) * stride + kernel - in, 0)``
samples, the smaller half on the left. Layers that act only in training
(input noise, dropout) have no op: at serving time they are the identity.

An op is a frozen dataclass; its array fields go to the weights file and its
other fields to a JSON description, so :func:`op_from_parts` rebuilds it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import numpy as np

from beatmon.errors import BundleError

Activation = Literal["linear", "relu", "sigmoid", "tanh"]
Padding = Literal["same", "valid"]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 0.5 * (1 + tanh(x / 2)) is the logistic function without exp overflow.
    x *= 0.5
    np.tanh(x, out=x)
    x += 1.0
    x *= 0.5
    return x


def _tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x, out=x)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
    "linear": None,
    "relu": _relu,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
}


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    function = ACTIVATIONS[activation]
    return x if function is None else function(x)


def _check_activation(kind: str, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise BundleError(
            f"{kind}: activation {activation!r} is not served; the serving path "
            f"handles {', '.join(get_args(Activation))}"
        )


def _check_padding(kind: str, padding: str, strides: int) -> None:
    if padding not in get_args(Padding):
        raise BundleError(f"{kind}: padding {padding!r} is not 'same' or 'valid'")
    if strides < 1:
        raise BundleError(f"{kind}: strides must be at least 1, got {strides}")


@dataclass(frozen=True, eq=False)
class Dense:
    """``activation(x @ kernel + bias)``; kernel ``(in, out)``."""

    kind: ClassVar[str] = "dense"
    kernel: np.ndarray
    bias: np.ndarray
    activation: str = "linear"

    def __post_init__(self) -> None:
        _check_activation(self.kind, self.activation)
        if self.kernel.ndim != 2 or self.bias.shape != (self.kernel.shape[1],):
            raise BundleError("dense: serving weights have inconsistent shapes")

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.kernel
        y += self.bias
        return _activate(y, self.activation)


@dataclass(frozen=True, eq=False)
class Conv1D:
    """Keras ``Conv1D``: kernel ``(width, in_channels, filters)``, no dilation."""

    kind: ClassVar[str] = "conv1d"
    kernel: np.ndarray
    bias: np.ndarray
    activation: str = "linear"
    strides: int = 1
    padding: str = "valid"
    _windows_kernel: np.ndarray = field(init=False, repr=False)
    _taps_kernel: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_activation(self.kind, self.activation)
        _check_padding(self.kind, self.padding, self.strides)
        if self.kernel.ndim != 3 or self.bias.shape != (self.kernel.shape[2],):
            raise BundleError("conv1d: serving weights have inconsistent shapes")
        width, channels, filters = self.kernel.shape
        windows = self.kernel.reshape(width * channels, filters)
        taps = self.kernel.transpose(1, 0, 2).reshape(channels, width * filters)
        object.__setattr__(self, "_windows_kernel", np.ascontiguousarray(windows))
        object.__setattr__(self, "_taps_kernel", np.ascontiguousarray(taps))

    def _geometry(self, steps: int) -> tuple[int, int]:
        """Output steps and the zero samples padded on the left."""
        width = self.kernel.shape[0]
        if self.padding == "valid":
            out_steps = (steps - width) // self.strides + 1
            if out_steps < 1:
                raise BundleError(f"conv1d: {steps} steps are fewer than the kernel")
            return out_steps, 0
        out_steps = -(-steps // self.strides)
        return out_steps, max((out_steps - 1) * self.strides + width - steps, 0) // 2

    def apply(self, x: np.ndarray) -> np.ndarray:
        steps = x.shape[1]
        out_steps, left = self._geometry(steps)
        y = (
            self._by_taps(x, out_steps, left)
            if self.strides == 1
            else self._by_windows(x, out_steps, left)
        )
        y += self.bias
        return _activate(y, self.activation)

    def _by_taps(self, x: np.ndarray, out_steps: int, left: int) -> np.ndarray:
        # Stride 1: one product gives every tap of every step, then k shifted
        # sums; no copy of the input per window.
        width, channels, filters = self.kernel.shape
        n, steps, _ = x.shape
        taps = (x.reshape(n * steps, channels) @ self._taps_kernel).reshape(
            n, steps, width, filters
        )
        y = np.zeros((n, out_steps, filters), np.float32)
        for j in range(width):
            first, last = max(0, left - j), min(out_steps, steps + left - j)
            if first < last:
                y[:, first:last] += taps[:, first + j - left : last + j - left, j]
        return y

    def _by_windows(self, x: np.ndarray, out_steps: int, left: int) -> np.ndarray:
        # Strided: gather each output's window (zero-padded), one product.
        width, channels, filters = self.kernel.shape
        n, steps, _ = x.shape
        padded_steps = max((out_steps - 1) * self.strides + width, steps + left)
        padded = np.zeros((n, padded_steps, channels), np.float32)
        padded[:, left : left + steps] = x
        starts = np.arange(out_steps) * self.strides
        windows = np.take(padded, starts[:, None] + np.arange(width), axis=1)
        y = windows.reshape(n * out_steps, width * channels) @ self._windows_kernel
        return y.reshape(n, out_steps, filters)


@dataclass(frozen=True, eq=False)
class Conv1DTranspose:
    """Keras ``Conv1DTranspose``: kernel ``(width, filters, in_channels)``.

    The output has ``steps * strides`` steps with ``"same"`` padding and
    ``steps * strides + max(width - strides, 0)`` with ``"valid"`` (no output
    padding).
    """

    kind: ClassVar[str] = "conv1d_transpose"
    kernel: np.ndarray
    bias: np.ndarray
    activation: str = "linear"
    strides: int = 1
    padding: str = "valid"
    _phase_kernel: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_activation(self.kind, self.activation)
        _check_padding(self.kind, self.padding, self.strides)
        if self.kernel.ndim != 3 or self.bias.shape != (self.kernel.shape[1],):
            raise BundleError(
                "conv1d_transpose: serving weights have inconsistent shapes"
            )
        # Output step m * strides + r takes input step m - q through kernel
        # tap q * strides + r: one product per input window of `reach` steps
        # gives all `strides` phases at once (taps past the kernel are zero).
        width, filters, channels = self.kernel.shape
        stride = self.strides
        reach = -(-width // stride)
        padded = np.zeros((reach * stride, filters, channels), np.float32)
        padded[:width] = self.kernel
        phase = padded.reshape(reach, stride, filters, channels).transpose(0, 3, 1, 2)
        object.__setattr__(
            self,
            "_phase_kernel",
            np.ascontiguousarray(phase.reshape(reach * channels, stride * filters)),
        )

    def apply(self, x: np.ndarray) -> np.ndarray:
        width, filters, channels = self.kernel.shape
        n, steps, _ = x.shape
        stride = self.strides
        reach = -(-width // stride)

        # Window m holds input steps m, m - 1, ..., m - reach + 1 (zero outside).
        positions = steps + reach - 1
        padded = np.zeros((n, steps + 2 * (reach - 1), channels), np.float32)
        padded[:, reach - 1 : reach - 1 + steps] = x
        picks = np.arange(positions)[:, None] + (reach - 1 - np.arange(reach))
        windows = np.take(padded, picks, axis=1).reshape(
            n * positions, reach * channels
        )
        full = (windows @ self._phase_kernel).reshape(n, positions * stride, filters)

        # "same" keeps steps * strides, dropping the smaller half on the left.
        overhang = max(width - stride, 0)
        if self.padding == "same":
            out_steps, left = steps * stride, overhang // 2
        else:
            out_steps, left = steps * stride + overhang, 0
        y = full[:, left : left + out_steps]
        y += self.bias
        return _activate(y, self.activation)


@dataclass(frozen=True, eq=False)
class UpSampling1D:
    """Keras ``UpSampling1D``: every step repeated ``size`` times."""

    kind: ClassVar[str] = "upsampling1d"
    size: int = 2

    def __post_init__(self) -> None:
        if self.size < 1:
            raise BundleError(f"upsampling1d: size must be at least 1, got {self.size}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.repeat(x, self.size, axis=1)


@dataclass(frozen=True, eq=False)
class Cropping1D:
    """Keras ``Cropping1D``: drop ``start`` steps at the front, ``end`` at the back."""

    kind: ClassVar[str] = "cropping1d"
    start: int = 0
    end: int = 0

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < 0:
            raise BundleError("cropping1d: crop sizes must not be negative")

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x[:, self.start : x.shape[1] - self.end]


@dataclass(frozen=True, eq=False)
class Reshape:
    """Keras ``Reshape`` and ``Flatten``: a new shape per beat, in C order."""

    kind: ClassVar[str] = "reshape"
    shape: tuple[int, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x.reshape((x.shape[0], *self.shape))


ServingOp = Dense | Conv1D | Conv1DTranspose | UpSampling1D | Cropping1D | Reshape
OP_TYPES: dict[str, type[ServingOp]] = {
    cls.kind: cls
    for cls in (Dense, Conv1D, Conv1DTranspose, UpSampling1D, Cropping1D, Reshape)
}


def op_parts(op: ServingOp) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split an op into its JSON description and its arrays."""
    config: dict[str, Any] = {"kind": op.kind}
    arrays: dict[str, np.ndarray] = {}
    for item in dataclasses.fields(op):
        if not item.init:
            continue
        value = getattr(op, item.name)
        if isinstance(value, np.ndarray):
            arrays[item.name] = value
        else:
            config[item.name] = list(value) if isinstance(value, tuple) else value
    return config, arrays


def op_from_parts(config: dict[str, Any], arrays: dict[str, np.ndarray]) -> ServingOp:
    """Rebuild an op from :func:`op_parts` output; unknown kinds are refused."""
    fields = dict(config)
    kind = fields.pop("kind", None)
    cls = OP_TYPES.get(str(kind))
    if cls is None:
        raise BundleError(
            f"serving op {kind!r} is not known to this beatmon; it serves "
            f"{', '.join(OP_TYPES)}"
        )
    names = {item.name for item in dataclasses.fields(cls) if item.init}
    if set(fields) | set(arrays) != names:
        raise BundleError(f"serving op {kind}: expected fields {sorted(names)}")
    if "shape" in fields:
        fields["shape"] = tuple(int(v) for v in fields["shape"])
    values: dict[str, Any] = {
        **fields,
        **{key: value.astype(np.float32) for key, value in arrays.items()},
    }
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"serving op {kind}: {exc}") from exc
