"""The NumPy serving ops against the Keras layers they stand for."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from beatmon.errors import BundleError
from models.scoring import Scorer, Standardizer, serving_op
from models.serving_ops import Cropping1D, Dense, Reshape, op_from_parts, op_parts

LayerCase = tuple[str, Callable[[], Any], tuple[int, ...]]

CONV_CASES: list[LayerCase] = [
    (
        f"{cls.__name__}-k{kernel}-s{stride}-{padding}-len{steps}",
        lambda cls=cls, kernel=kernel, stride=stride, padding=padding: cls(
            5, kernel, strides=stride, padding=padding, activation="relu"
        ),
        (steps, 3),
    )
    for cls in (keras.layers.Conv1D, keras.layers.Conv1DTranspose)
    for kernel, stride in ((1, 1), (3, 1), (4, 2), (7, 2), (2, 3), (5, 3))
    for padding in ("same", "valid")
    for steps in (34, 97)
]
OTHER_CASES: list[LayerCase] = [
    *(
        (
            f"Dense-{activation}",
            lambda activation=activation: keras.layers.Dense(6, activation=activation),
            (9,),
        )
        for activation in ("linear", "relu", "sigmoid", "tanh")
    ),
    ("UpSampling1D", lambda: keras.layers.UpSampling1D(3), (11, 2)),
    ("Cropping1D", lambda: keras.layers.Cropping1D((2, 3)), (11, 2)),
    ("Flatten", lambda: keras.layers.Flatten(), (11, 2)),
    ("Reshape", lambda: keras.layers.Reshape((10, 2)), (20,)),
]


def _randomised(make: Callable[[], Any], shape: tuple[int, ...]) -> Any:
    """A built layer whose weights (biases too) are random."""
    rng = np.random.default_rng(5)
    layer = make()
    layer(keras.Input(shape=shape))
    layer.set_weights(
        [rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()]
    )
    return layer


@pytest.mark.parametrize(
    ("make", "shape"),
    [case[1:] for case in CONV_CASES + OTHER_CASES],
    ids=[case[0] for case in CONV_CASES + OTHER_CASES],
)
def test_op_matches_its_keras_layer(
    make: Callable[[], Any], shape: tuple[int, ...]
) -> None:
    layer = _randomised(make, shape)
    x = np.random.default_rng(9).normal(size=(4, *shape)).astype(np.float32)
    expected = np.asarray(layer(x))
    served = serving_op(layer).apply(x.copy())
    assert served.shape == expected.shape
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        keras.layers.Conv1D(4, 3, dilation_rate=2),
        keras.layers.Conv1D(4, 3, use_bias=False),
        keras.layers.Dense(4, activation="gelu"),
        keras.layers.LSTM(4),
    ],
    ids=["dilated", "no-bias", "gelu", "lstm"],
)
def test_unserved_layers_are_refused_by_name(layer: Any) -> None:
    layer(keras.Input(shape=(12, 2)))
    with pytest.raises(BundleError, match=layer.name):
        serving_op(layer)


def test_op_parts_round_trip() -> None:
    rng = np.random.default_rng(1)
    op = Dense(rng.normal(size=(3, 2)).astype(np.float32), np.ones(2, np.float32))
    config, arrays = op_parts(op)
    assert config == {"kind": "dense", "activation": "linear"}
    again = op_from_parts(json.loads(json.dumps(config)), arrays)
    assert isinstance(again, Dense)
    np.testing.assert_array_equal(again.kernel, op.kernel)
    shaped = op_from_parts(*op_parts(Reshape((7, 1))))
    assert isinstance(shaped, Reshape)
    assert shaped.shape == (7, 1)


def test_unknown_op_kind_is_refused() -> None:
    with pytest.raises(BundleError, match="'lstm' is not known"):
        op_from_parts({"kind": "lstm"}, {})


def _scaler(length: int) -> Standardizer:
    return Standardizer(np.zeros(length, np.float32), np.ones(length, np.float32))


def test_scorer_refuses_ops_that_do_not_return_the_beat() -> None:
    kernel = np.ones((8, 6), np.float32)
    with pytest.raises(BundleError, match="into shape"):
        Scorer([Dense(kernel, np.zeros(6, np.float32))], _scaler(8), 1.0)
    with pytest.raises(BundleError, match="do not fit beats of 9 samples"):
        Scorer([Dense(kernel, np.zeros(6, np.float32))], _scaler(9), 1.0)


def test_first_format_serving_file_still_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    k0, k1 = (rng.normal(size=s).astype(np.float32) for s in ((8, 3), (3, 8)))
    b0, b1 = np.zeros(3, np.float32), np.ones(8, np.float32)
    path = tmp_path / "serving.npz"
    with path.open("wb") as fh:
        np.savez(
            fh,
            activations=np.array(["relu", "linear"]),
            kernel_0=k0,
            bias_0=b0,
            kernel_1=k1,
            bias_1=b1,
        )
    scorer = Scorer.load_weights(path, _scaler(8), 1.0)
    beats = rng.normal(size=(5, 8)).astype(np.float32)
    expected = np.maximum(beats @ k0 + b0, 0) @ k1 + b1
    np.testing.assert_allclose(scorer.reconstruct_scaled(beats), expected, atol=1e-6)


def test_serving_file_round_trip_keeps_every_op(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ops = [
        Reshape((8, 1)),
        serving_op(_randomised(lambda: keras.layers.Conv1D(2, 3, 2, "same"), (8, 1))),
        serving_op(
            _randomised(lambda: keras.layers.Conv1DTranspose(2, 3, 2, "same"), (4, 2))
        ),
        serving_op(_randomised(lambda: keras.layers.UpSampling1D(2), (8, 2))),
        Cropping1D(3, 5),
        Reshape((16,)),
        Dense(rng.normal(size=(16, 8)).astype(np.float32), np.zeros(8, np.float32)),
    ]
    scorer = Scorer(ops, _scaler(8), 0.5)
    path = tmp_path / "serving.npz"
    scorer.save_weights(path)
    again = Scorer.load_weights(path, _scaler(8), 0.5)
    assert [op.kind for op in again.ops] == [op.kind for op in ops]
    beats = rng.normal(size=(6, 8)).astype(np.float32)
    np.testing.assert_array_equal(
        again.reconstruct_scaled(beats), scorer.reconstruct_scaled(beats)
    )
