"""Hostile bundles: files that would run code when loaded are refused unexecuted.

Each payload touches a marker file when it runs. A control test first shows
that the payload is live (an unsafe load does touch the marker); the real
tests then load the same files the way beatmon does and check that the
marker is still absent. Every hostile bundle has its manifest re-hashed, so
the sha256 check passes and only the loaders themselves stand in the way.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from beatmon.cli import main
from beatmon.errors import BundleError
from models.autoencoder import VARIANTS
from models.bundle import (
    CONTENT_FILES,
    MANIFEST_FILE,
    MODEL_FILE,
    SERVING_FILE,
    load_bundle,
    load_serving_bundle,
    save_bundle,
)
from models.data import BeatSet
from models.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("beatmon", "models", "monitor", "producers", "bench")


@pytest.fixture(scope="module")
def clean_bundle(small_ecg: BeatSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    trained = train(
        small_ecg,
        "1",
        VARIANTS["dense"],
        TrainConfig(max_epochs=1, patience=1, seed=3),
        on_epoch=lambda *_: None,
    )
    return save_bundle(trained, tmp_path_factory.mktemp("hostile") / "clean")


@pytest.fixture
def bundle(clean_bundle: Path, tmp_path: Path) -> Path:
    """A fresh copy of a real bundle, for one test to make hostile."""
    return Path(shutil.copytree(clean_bundle, tmp_path / "bundle"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload-ran"


def rehash(bundle: Path) -> None:
    """Rewrite the manifest so every file's sha256 matches again."""
    manifest_path = bundle / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = {
        name: hashlib.sha256((bundle / name).read_bytes()).hexdigest()
        for name in CONTENT_FILES
    }
    manifest_path.write_text(json.dumps(manifest))


def touching_lambda(marker: Path) -> Callable[[Any], Any]:
    """A lambda that touches ``marker`` and passes its input through.

    The path is a constant in its code, because Keras stores a lambda as its
    bytecode (and mishandles default arguments when it loads them back).
    """
    source = f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]"
    function: Callable[[Any], Any] = eval(source)
    return function


def save_lambda_model(path: Path, marker: Path, beat_length: int) -> None:
    """A real Keras 3 model whose Lambda layer touches ``marker`` when it runs."""
    import keras

    inputs = keras.Input((beat_length,))
    hidden = keras.layers.Lambda(touching_lambda(marker), output_shape=(beat_length,))(
        inputs
    )
    keras.Model(inputs, keras.layers.Dense(beat_length)(hidden)).save(path)


def beat_length(bundle: Path) -> int:
    return int(
        json.loads((bundle / "metadata.json").read_text())["data"]["beat_length"]
    )


class TouchOnUnpickle:
    """Unpickling this touches the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def write_pickled_weights(path: Path, marker: Path) -> None:
    """Replace every number array of a serving file by a pickled payload."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    payload = np.empty(1, dtype=object)
    payload[0] = TouchOnUnpickle(marker)
    for key, value in arrays.items():
        if value.dtype.kind == "f":
            arrays[key] = payload
    with path.open("wb") as fh:
        np.savez(fh, allow_pickle=True, **arrays)


# --- the payloads are live -------------------------------------------------------


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_the_lambda_payload_runs_when_loaded_unsafely(
    tmp_path: Path, marker: Path, suffix: str
) -> None:
    import keras

    path = tmp_path / f"hostile{suffix}"
    save_lambda_model(path, marker, 140)
    assert not marker.exists()
    model = keras.saving.load_model(path, compile=False, safe_mode=False)
    model(np.zeros((1, 140), dtype=np.float32))
    assert marker.exists()


def test_the_pickle_payload_runs_when_loaded_unsafely(
    bundle: Path, marker: Path
) -> None:
    write_pickled_weights(bundle / SERVING_FILE, marker)
    with np.load(bundle / SERVING_FILE, allow_pickle=True) as npz:
        for key in npz.files:
            npz[key]
    assert marker.exists()


# --- beatmon refuses them --------------------------------------------------------


def test_the_lab_refuses_a_model_with_a_lambda_layer(
    bundle: Path, marker: Path
) -> None:
    save_lambda_model(bundle / MODEL_FILE, marker, beat_length(bundle))
    rehash(bundle)

    with pytest.raises(BundleError) as refused:
        load_bundle(bundle)
    message = str(refused.value)
    assert message.startswith(f"{bundle / MODEL_FILE}: refused: ")
    assert "Python code" in message and "safe mode" in message
    assert "retrain with beatmon train" in message
    assert "safe_mode=False" not in message
    assert not marker.exists()


def test_evaluate_refuses_a_model_with_a_lambda_layer(
    bundle: Path, marker: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_lambda_model(bundle / MODEL_FILE, marker, beat_length(bundle))
    rehash(bundle)

    code = main(["evaluate", "--bundle", str(bundle), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"beatmon evaluate: error: {bundle / MODEL_FILE}: refused: " in err
    assert "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "r").exists()


def test_the_lab_refuses_a_legacy_hdf5_model_named_model_keras(
    bundle: Path, marker: Path, tmp_path: Path
) -> None:
    legacy = tmp_path / "legacy.h5"
    save_lambda_model(legacy, marker, beat_length(bundle))
    shutil.copyfile(legacy, bundle / MODEL_FILE)
    rehash(bundle)

    with pytest.raises(BundleError, match=r"refused: not a Keras v3 archive") as err:
        load_bundle(bundle)
    assert str(bundle / MODEL_FILE) in str(err.value)
    assert not marker.exists()


def test_the_serving_path_never_deserialises_model_keras(
    bundle: Path, marker: Path, ecg5000: BeatSet
) -> None:
    # The monitor (and its hot reload) reads only JSON and serving.npz; a
    # hostile model.keras beside them is never opened by it.
    save_lambda_model(bundle / MODEL_FILE, marker, beat_length(bundle))
    rehash(bundle)

    served = load_serving_bundle(bundle)
    served.scorer.score(ecg5000.beats[:64])
    assert not marker.exists()


def test_the_serving_loader_refuses_pickled_weights(bundle: Path, marker: Path) -> None:
    write_pickled_weights(bundle / SERVING_FILE, marker)
    rehash(bundle)

    with pytest.raises(BundleError) as refused:
        load_serving_bundle(bundle)
    message = str(refused.value)
    assert message.startswith(f"{bundle / SERVING_FILE}: refused: ")
    assert "pickled Python objects" in message
    assert "retrain with beatmon train" in message
    assert not marker.exists()


def test_the_monitor_command_refuses_pickled_weights_without_tensorflow(
    bundle: Path, marker: Path
) -> None:
    write_pickled_weights(bundle / SERVING_FILE, marker)
    rehash(bundle)
    # The bundle is loaded before any broker is contacted: none is needed.
    code = (
        "import sys\n"
        "from beatmon.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('tensorflow', "
        "'keras')))\n"
        "print('imported:', loaded)\n"
        "sys.exit(status)\n"
    )
    args = ["monitor", "--bundle", str(bundle), "--no-mqtt", "--no-metrics"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args, "--bootstrap", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"beatmon monitor: error: {bundle / SERVING_FILE}: refused: " in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert "imported: []" in result.stdout
    assert not marker.exists()


# --- no other way in ---------------------------------------------------------------

# Calls that unpickle, load code, or switch Keras safe mode off. JSON, YAML
# through safe_load and .npz files through np.load(allow_pickle=False) are
# the only ways beatmon reads data.
UNSAFE_LOADING = {
    "a pickle-family import": re.compile(
        r"^\s*(?:import|from)\s+(?:pickle|cPickle|_pickle|dill|cloudpickle|joblib"
        r"|shelve|marshal)\b",
        re.MULTILINE,
    ),
    "np.load with pickle allowed": re.compile(r"allow_pickle\s*=\s*True"),
    "np.load without allow_pickle=False": re.compile(
        r"\bnp\.load\((?![^)]*allow_pickle\s*=\s*False)[^)]*\)"
    ),
    "Keras safe mode off": re.compile(
        r"safe_mode\s*=\s*False|enable_unsafe_deserialization"
    ),
    "a Keras load without safe_mode=True": re.compile(
        r"load_model\((?![^)]*safe_mode\s*=\s*True)[^)]*\)"
    ),
    "yaml.load or unsafe_load": re.compile(r"\byaml\.(?:unsafe_)?load\("),
    "pandas read_pickle": re.compile(r"read_pickle\("),
    "eval or exec": re.compile(r"(?<![\w.])(?:eval|exec)\("),
}


def test_no_source_file_loads_pickles_or_code() -> None:
    sources = [
        path
        for folder in SOURCE_FOLDERS
        for path in sorted((REPO / folder).rglob("*.py"))
    ]
    assert len(sources) > 20
    found = [
        f"{path.relative_to(REPO)}: {what}: {match.group(0)!r}"
        for path in sources
        for what, pattern in UNSAFE_LOADING.items()
        for match in pattern.finditer(path.read_text())
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("import pickle", "a pickle-family import"),
        ("from joblib import load", "a pickle-family import"),
        ("np.load(path)", "np.load without allow_pickle=False"),
        ("np.load(path, allow_pickle=True)", "np.load with pickle allowed"),
        ("keras.saving.load_model(p, safe_mode=False)", "Keras safe mode off"),
        ("keras.saving.load_model(p)", "a Keras load without safe_mode=True"),
        ("yaml.load(text)", "yaml.load or unsafe_load"),
        ("eval(text)", "eval or exec"),
    ],
)
def test_the_source_scan_catches_each_unsafe_call(line: str, what: str) -> None:
    assert UNSAFE_LOADING[what].search(line)
    for safe in ("np.load(path, allow_pickle=False)", "yaml.safe_load(text)"):
        assert not any(pattern.search(safe) for pattern in UNSAFE_LOADING.values())
