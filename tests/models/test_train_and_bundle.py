"""Training, calibration, the bundle round trip, and the serving path."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from beatmon.errors import BundleError
from models import bundle as bundle_module
from models.autoencoder import VARIANTS, build, get_spec
from models.bundle import load_bundle, save_bundle, verify_bundle
from models.data import BeatSet
from models.scoring import Scorer, keras_errors
from models.train import TrainConfig, Trained, summary_paragraph, train

QUICK = TrainConfig(max_epochs=4, patience=2, seed=11)


@pytest.fixture(scope="module")
def trained(small_ecg: BeatSet) -> Trained:
    return train(small_ecg, "1", VARIANTS["dense"], QUICK, on_epoch=lambda *_: None)


@pytest.fixture
def saved(trained: Trained, tmp_path: Path) -> Path:
    return save_bundle(trained, tmp_path / "bundle")


def test_reference_architecture_is_exact() -> None:
    model = build(get_spec("dense"), 140)
    widths = [layer.units for layer in model.layers[1:]]
    assert widths == [256, 128, 64, 32, 64, 128, 256, 140]
    activations = [layer.activation.__name__ for layer in model.layers[1:]]
    assert activations == ["relu"] * 7 + ["linear"]
    assert model.count_params() == 158_764


def test_sparse_variant_penalises_only_the_four_encoder_layers() -> None:
    model = build(get_spec("sparse"), 96)
    penalised = [
        layer.name
        for layer in model.layers[1:]
        if layer.activity_regularizer is not None
    ]
    assert penalised == ["encoder_0", "encoder_1", "encoder_2", "encoder_3"]
    assert all(
        float(layer.activity_regularizer.l1) == pytest.approx(1e-4)
        for layer in model.layers[1:5]
    )
    assert model.layers[-1].units == 96


def test_training_calibrates_on_validation_normals(trained: Trained) -> None:
    val_errors = keras_errors(
        trained.model, trained.scaler, trained.data.beats[trained.splits.val]
    )
    assert trained.config.policy.calibrate(val_errors) == trained.threshold
    assert (val_errors > trained.threshold).mean() <= 0.05
    assert 1 <= trained.epochs_run <= QUICK.max_epochs
    assert set(trained.test_metrics) >= {"roc_auc", "pr_auc", "f1", "confusion_matrix"}
    assert "never saw" in summary_paragraph(trained)


def test_test_beats_never_influence_training_or_threshold(
    small_ecg: BeatSet, trained: Trained
) -> None:
    # Replace every test beat by noise: weights, scaler and threshold must not move.
    beats = small_ecg.beats.copy()
    rows = trained.splits.test
    beats[rows] = np.random.default_rng(0).normal(
        0, 50, size=(rows.size, beats.shape[1])
    )
    other = replace(small_ecg, beats=beats)
    again = train(other, "1", VARIANTS["dense"], QUICK, on_epoch=lambda *_: None)

    assert np.array_equal(again.splits.test, rows)
    assert again.threshold == trained.threshold
    assert np.array_equal(again.scaler.mean, trained.scaler.mean)
    for a, b in zip(
        again.model.get_weights(), trained.model.get_weights(), strict=True
    ):
        assert np.array_equal(a, b)
    assert again.test_metrics != trained.test_metrics


def test_bundle_round_trip(trained: Trained, saved: Path) -> None:
    loaded = load_bundle(saved)
    assert loaded.threshold == trained.threshold
    assert loaded.normal_label == "1"
    assert loaded.beat_length == 140
    assert np.array_equal(loaded.splits.test, trained.splits.test)
    beats = trained.data.beats[:50]
    assert np.allclose(
        keras_errors(loaded.model, loaded.scaler, beats),
        keras_errors(trained.model, trained.scaler, beats),
        atol=1e-7,
    )
    meta = loaded.metadata
    assert meta["data"]["sha256"] == trained.data.sha256
    assert meta["splits"]["seed"] == 11
    assert meta["splits"]["sizes"] == trained.splits.sizes()
    assert set(meta["libraries"]) >= {"tensorflow", "keras", "numpy", "python"}
    assert meta["model"]["version"].startswith("dense-")
    assert meta["training"]["history"]["loss"] == trained.history["loss"]
    assert meta["test_metrics"]["roc_auc"] == trained.test_metrics["roc_auc"]


def test_serving_path_matches_keras_to_1e_5(trained: Trained, ecg5000: BeatSet) -> None:
    scorer = Scorer.from_keras(trained.model, trained.scaler, trained.threshold)
    reference = keras_errors(trained.model, trained.scaler, ecg5000.beats)
    for size in (1, 64, 1024, len(ecg5000.beats)):
        scores = scorer.score(ecg5000.beats[:size])
        np.testing.assert_allclose(scores.errors, reference[:size], rtol=0, atol=1e-5)
        assert np.array_equal(scores.flagged, scores.errors > trained.threshold)
    profile = scorer.score(ecg5000.beats[:8]).profiles
    assert profile.shape == (8, 10)
    np.testing.assert_allclose(profile.mean(axis=1), reference[:8], rtol=1e-4)


def test_tampered_bundle_is_refused(saved: Path) -> None:
    scaler = saved / "scaler.json"
    data = json.loads(scaler.read_text())
    data["mean"][0] += 0.5
    scaler.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"scaler\.json does not match the hash"):
        load_bundle(saved)


def test_tampered_threshold_is_refused(saved: Path) -> None:
    path = saved / "threshold.json"
    path.write_text(path.read_text().replace('"threshold": ', '"threshold": 9'))
    with pytest.raises(BundleError, match="changed after it was written"):
        verify_bundle(saved)


@pytest.mark.parametrize("missing", ["model.keras", "metadata.json", "manifest.json"])
def test_incomplete_bundle_is_refused(saved: Path, missing: str) -> None:
    (saved / missing).unlink()
    with pytest.raises(BundleError, match=missing.replace(".", r"\.")):
        load_bundle(saved)


def test_missing_bundle_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no model bundle at"):
        load_bundle(tmp_path / "nowhere")


def test_crash_while_writing_leaves_the_old_bundle_whole(
    trained: Trained, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.read_bytes() for p in saved.iterdir()}

    def crash(path: Path, data: object) -> None:
        if path.name == "metadata.json":
            raise OSError("disk full")
        path.write_text(json.dumps(data))

    monkeypatch.setattr(bundle_module, "_write_json", crash)
    with pytest.raises(BundleError, match=r"disk full.*already there is unchanged"):
        save_bundle(trained, saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert [p.name for p in saved.parent.iterdir()] == ["bundle"]
    verify_bundle(saved)


def test_save_replaces_a_bundle_but_not_a_foreign_folder(
    trained: Trained, saved: Path, tmp_path: Path
) -> None:
    save_bundle(trained, saved)
    verify_bundle(saved)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(BundleError, match="is not a model bundle"):
        save_bundle(trained, foreign)
    assert (foreign / "cat.jpg").read_bytes() == b"meow"


def test_copied_bundle_still_loads(saved: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    assert load_bundle(copy).version == load_bundle(saved).version


def test_serving_bundle_loads_without_tensorflow_and_matches_keras(
    saved: Path, trained: Trained
) -> None:
    code = (
        "import io, sys, numpy as np\n"
        "from models.bundle import load_serving_bundle\n"
        f"b = load_serving_bundle({str(saved)!r})\n"
        "beats = np.load(io.BytesIO(sys.stdin.buffer.read()))\n"
        "np.save(sys.stdout.buffer, b.scorer.score(beats).errors)\n"
        "sys.stderr.write(str(sorted(m for m in sys.modules if 'tensorflow' in m "
        "or m == 'keras')))\n"
    )
    beats = trained.data.beats[:300]
    buffer = io.BytesIO()
    np.save(buffer, beats)
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=buffer.getvalue(),
        capture_output=True,
        check=True,
    )
    assert result.stderr.decode().strip() == "[]"
    served = np.load(io.BytesIO(result.stdout))
    expected = keras_errors(trained.model, trained.scaler, beats)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
    parity = load_bundle(saved).metadata["serving"]["parity_max_abs_error"]
    assert 0 <= parity <= 1e-5
