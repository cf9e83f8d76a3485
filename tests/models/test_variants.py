"""Every variant: its architecture, and one contract for all of them.

The contract: a variant trains, its bundle is written (so the serving path
passed the parity check), the serving path matches Keras to 1e-5 on every
bundled beat at any batch size, the Keras model loads back in safe mode, and
the serving bundle loads and scores without TensorFlow. Training is kept to
two epochs on a few hundred beats: the contract is about export, not skill.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from models.autoencoder import VARIANTS, build, get_spec
from models.bundle import load_bundle, load_serving_bundle, save_bundle
from models.data import BeatSet
from models.layers import KLSparsity
from models.scoring import Scorer, Standardizer
from models.train import TrainConfig, Trained, train

QUICK = TrainConfig(max_epochs=2, patience=1, seed=5)


@pytest.fixture(scope="module")
def exported(
    small_ecg: BeatSet, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Trained, Path]]:
    """Every variant trained briefly and written as a bundle."""
    bundles = {}
    for name, spec in VARIANTS.items():
        trained = train(small_ecg, "1", spec, QUICK, on_epoch=lambda *_: None)
        path = save_bundle(trained, tmp_path_factory.mktemp(name) / "bundle")
        bundles[name] = (trained, path)
    return bundles


def _errors(model: keras.Model, scaler: Standardizer, beats: np.ndarray) -> np.ndarray:
    """Keras errors by a direct call, quicker than ``predict`` for one call."""
    scaled = scaler.transform(beats)
    reconstructed = np.asarray(model(scaled, training=False))
    return np.square(scaled.astype(np.float64) - reconstructed).mean(axis=1)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_serving_matches_keras_on_every_bundled_beat(
    name: str, exported: dict[str, tuple[Trained, Path]], ecg5000: BeatSet
) -> None:
    trained, path = exported[name]
    scorer = load_serving_bundle(path).scorer
    reference = _errors(trained.model, trained.scaler, ecg5000.beats)
    np.testing.assert_allclose(
        scorer.score(ecg5000.beats).errors, reference, rtol=0, atol=1e-5
    )
    for size in (1, 64):
        np.testing.assert_allclose(
            scorer.score(ecg5000.beats[:size]).errors,
            reference[:size],
            rtol=0,
            atol=1e-5,
        )


@pytest.mark.parametrize("name", list(VARIANTS))
def test_bundle_loads_back_in_safe_mode(
    name: str, exported: dict[str, tuple[Trained, Path]]
) -> None:
    trained, path = exported[name]
    loaded = load_bundle(path)
    beats = trained.data.beats[:64]
    np.testing.assert_array_equal(
        _errors(loaded.model, loaded.scaler, beats),
        _errors(trained.model, trained.scaler, beats),
    )
    meta = loaded.metadata
    assert meta["model"]["name"] == name
    assert meta["model"]["parameters"] == trained.model.count_params()
    assert 0 <= meta["serving"]["parity_max_abs_error"] <= 1e-5


def _run_python(code: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", code], input=stdin, capture_output=True, check=True
    )


def test_every_serving_bundle_scores_without_tensorflow(
    exported: dict[str, tuple[Trained, Path]],
) -> None:
    paths = [str(path) for _, path in exported.values()]
    code = (
        "import io, sys, numpy as np\n"
        "from models.bundle import load_serving_bundle\n"
        "beats = np.load(io.BytesIO(sys.stdin.buffer.read()))\n"
        f"scorers = [load_serving_bundle(p).scorer for p in {paths}]\n"
        "errors = [scorer.score(beats).errors for scorer in scorers]\n"
        "np.save(sys.stdout.buffer, np.stack(errors))\n"
        "sys.stderr.write(str(sorted(m for m in sys.modules if 'tensorflow' in m "
        "or m == 'keras')))\n"
    )
    beats = next(iter(exported.values()))[0].data.beats[:100]
    buffer = io.BytesIO()
    np.save(buffer, beats)
    result = _run_python(code, buffer.getvalue())
    assert result.stderr.decode().strip() == "[]"
    served = np.load(io.BytesIO(result.stdout))
    for row, (trained, _) in zip(served, exported.values(), strict=True):
        expected = _errors(trained.model, trained.scaler, beats)
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-5)


def test_every_bundle_loads_in_safe_mode_in_a_fresh_process(
    exported: dict[str, tuple[Trained, Path]],
) -> None:
    # A fresh interpreter has not registered beatmon's own Keras objects (the
    # KL penalty); load_bundle must do so before loading in safe mode.
    paths = {name: str(path) for name, (_, path) in exported.items()}
    code = (
        "from models.bundle import load_bundle\n"
        f"for name, path in {paths}.items():\n"
        "    model = load_bundle(path).model\n"
        "    penalty = model.get_layer('encoder_0').activity_regularizer\n"
        "    print(name, type(penalty).__name__)\n"
    )
    lines = _run_python(code).stdout.decode().splitlines()
    assert "kl-sparse KLSparsity" in lines
    assert len(lines) == len(VARIANTS)


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("length", [140, 97])
def test_untrained_variant_exports_at_any_beat_length(name: str, length: int) -> None:
    keras.utils.set_random_seed(1)
    model = build(get_spec(name), length)
    rng = np.random.default_rng(4)
    beats = rng.normal(size=(32, length)).astype(np.float32)
    scaler = Standardizer.fit(beats)
    scorer = Scorer.from_keras(model, scaler, 1.0)
    np.testing.assert_allclose(
        scorer.score(beats).errors,
        _errors(model, scaler, beats),
        rtol=0,
        atol=1e-5,
    )


def _layer_kinds(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_conv_architecture() -> None:
    spec = get_spec("conv")
    model = build(spec, 140)
    assert _layer_kinds(model) == [
        "InputLayer",
        "Reshape",
        "Conv1D",
        "Conv1D",
        "Flatten",
        "Dense",
        "Dense",
        "Reshape",
        "Conv1DTranspose",
        "Conv1DTranspose",
        "Conv1D",
        "Reshape",
    ]
    assert [tuple(layer.output.shape[1:]) for layer in model.layers[1:]] == [
        (140, 1),
        (70, 16),
        (35, 32),
        (1120,),
        (32,),
        (1120,),
        (35, 32),
        (70, 32),
        (140, 16),
        (140, 1),
        (140,),
    ]
    assert model.count_params() == 87_489
    # A length the strides do not divide is cropped back at the end.
    odd = build(spec, 97)
    assert odd.get_layer("crop").cropping == (0, 3)
    assert odd.output.shape[1:] == (97,)


def test_denoising_adds_noise_in_training_only() -> None:
    dense = build(get_spec("dense"), 140)
    model = build(get_spec("denoising"), 140)
    noise = model.layers[1]
    assert isinstance(noise, keras.layers.GaussianNoise)
    assert noise.stddev == pytest.approx(0.2)
    assert model.count_params() == dense.count_params() == 158_764

    x = np.random.default_rng(0).normal(size=(8, 140)).astype(np.float32)
    assert np.array_equal(
        np.asarray(model(x, training=False)), np.asarray(model(x, training=False))
    )
    assert not np.allclose(
        np.asarray(model(x, training=True)), np.asarray(model(x, training=False))
    )
    served = Scorer.from_keras(model, Standardizer.fit(x), 1.0)
    assert [op.kind for op in served.ops] == ["dense"] * 8


def test_kl_sparse_penalises_the_four_encoder_layers() -> None:
    model = build(get_spec("kl-sparse"), 140)
    penalised = {
        layer.name: layer.activity_regularizer
        for layer in model.layers
        if getattr(layer, "activity_regularizer", None) is not None
    }
    assert sorted(penalised) == [f"encoder_{i}" for i in range(4)]
    for penalty in penalised.values():
        assert isinstance(penalty, KLSparsity)
        assert (penalty.target, penalty.weight) == (0.05, pytest.approx(1e-4))
    assert model.count_params() == 158_764
    assert build(get_spec("kl-sparse"), 140, with_penalties=False).losses == []


def test_kl_sparsity_is_the_bernoulli_kl_of_mean_activations() -> None:
    activations = np.array([[0.0, 0.5, 2.0], [0.2, 0.1, 2.0]], np.float32)
    penalty = KLSparsity(target=0.1, weight=0.5)
    rho_hat = np.clip(activations.mean(axis=0), 1e-6, 1 - 1e-6)
    kl = 0.1 * np.log(0.1 / rho_hat) + 0.9 * np.log(0.9 / (1 - rho_hat))
    # Keras divides by the batch size (2 beats); the penalty multiplies it back.
    expected = 0.5 * kl.sum() * 2
    assert float(penalty(activations)) == pytest.approx(expected, rel=1e-5)
    assert float(KLSparsity(target=0.3, weight=1.0)(np.full((4, 2), 0.3))) == (
        pytest.approx(0.0, abs=1e-6)
    )

    config = keras.saving.serialize_keras_object(penalty)
    again = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert isinstance(again, KLSparsity)
    assert again.get_config() == {"target": 0.1, "weight": 0.5}


def test_specs_are_small_changes_of_the_reference() -> None:
    dense = get_spec("dense")
    differences = {
        name: {
            key
            for key, value in spec.describe().items()
            if value != dense.describe()[key]
        }
        for name, spec in VARIANTS.items()
    }
    assert differences["dense"] == set()
    assert differences["sparse"] == {"activity_l1"}
    assert differences["denoising"] == {"input_noise_std"}
    assert differences["kl-sparse"] == {"kl_weight"}
    assert differences["conv"] == {"conv_filters", "encoder_widths"}
