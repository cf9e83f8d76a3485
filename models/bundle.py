"""Model bundles: a self-contained, hash-checked folder per trained model.

A bundle holds:

- ``model.keras``: the Keras model in its native format;
- ``scaler.json``: the per-sample standardisation fitted on training normals;
- ``threshold.json``: the calibrated threshold and the policy that chose it;
- ``splits.json``: the row indices of the train, validation and test splits;
- ``serving.npz``: the same weights for the serving path, which runs without
  TensorFlow; written only after it matched the Keras model to 1e-5 on the
  validation beats;
- ``metadata.json``: data source and sha256, normal label, split sizes, seed,
  library versions, training history, model version and test metrics;
- ``manifest.json``: the sha256 of every file above.

Bundles are written to a temporary folder and renamed into place, so a crash
leaves either the old bundle or the new one, never half of one. Loading
checks every hash first. The lab then loads the model in Keras safe mode,
which refuses to deserialise arbitrary code; the monitor reads only JSON and
the ``.npz`` weights, with pickle refused, and never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import secrets
import shutil
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from beatmon.errors import BundleError
from models.scoring import Scorer, Standardizer
from models.splits import Splits

if TYPE_CHECKING:
    import keras

    from models.train import Trained

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
MODEL_FILE = "model.keras"
SERVING_FILE = "serving.npz"
MANIFEST_FILE = "manifest.json"
CONTENT_FILES = (
    MODEL_FILE,
    SERVING_FILE,
    "scaler.json",
    "threshold.json",
    "splits.json",
    "metadata.json",
)
PARITY_TOLERANCE = 1e-5


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def weights_digest(model: keras.Model) -> str:
    """sha256 over the model's weights, independent of how the file was zipped."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights, dtype=np.float32).tobytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    import keras
    import sklearn
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "scikit-learn": sklearn.__version__,
    }


def check_parity(trained: Trained, scorer: Scorer) -> float:
    """Largest difference between serving and Keras errors on validation beats."""
    from models.scoring import keras_errors

    beats = trained.data.beats[trained.splits.val]
    gap = float(
        np.max(
            np.abs(
                scorer.score(beats).errors
                - keras_errors(trained.model, trained.scaler, beats)
            )
        )
    )
    if gap > PARITY_TOLERANCE:
        raise BundleError(
            f"the serving path differs from the Keras model by {gap:.2e} on "
            f"validation beats, more than {PARITY_TOLERANCE:g}; bundle not written"
        )
    return gap


def build_metadata(
    trained: Trained, created: datetime, parity: float
) -> dict[str, Any]:
    spec = trained.spec
    config = trained.config
    version = (
        f"{spec.name}-{created:%Y%m%dT%H%M%SZ}-{weights_digest(trained.model)[:8]}"
    )
    return {
        "format": BUNDLE_FORMAT,
        "model": {
            "name": spec.name,
            "version": version,
            "summary": spec.summary,
            **spec.describe(),
            "parameters": int(trained.model.count_params()),
        },
        "created": created.isoformat(timespec="seconds"),
        "data": {
            "source": trained.data.source,
            "sha256": trained.data.sha256,
            "layout": trained.data.layout,
            "beat_length": trained.data.length,
            "normal_label": trained.normal_label,
            "class_counts": trained.data.class_counts(),
        },
        "splits": {
            "seed": trained.splits.seed,
            "fractions": list(config.fractions),
            "sizes": trained.splits.sizes(),
        },
        "training": {
            "batch_size": config.batch_size,
            "max_epochs": config.max_epochs,
            "patience": config.patience,
            "learning_rate": config.learning_rate,
            "epochs_run": trained.epochs_run,
            "best_epoch": trained.best_epoch,
            "seconds": round(trained.train_seconds, 3),
            "history": trained.history,
        },
        "serving": {
            "file": SERVING_FILE,
            "kind": "layer ops in NumPy",
            "parity_max_abs_error": parity,
            "parity_checked_on": "validation normals",
        },
        "libraries": library_versions(),
        "test_metrics": trained.test_metrics,
    }


def save_bundle(trained: Trained, out: Path) -> Path:
    """Write ``trained`` as a bundle at ``out``, replacing any bundle there."""
    out = Path(out)
    foreign = out.exists() and not (out / MANIFEST_FILE).is_file()
    if foreign and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(
            f"{out} exists and is not a model bundle; choose another --out"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    scorer = Scorer.from_keras(trained.model, trained.scaler, trained.threshold)
    parity = check_parity(trained, scorer)
    try:
        staging.mkdir()
        trained.model.save(staging / MODEL_FILE)
        scorer.save_weights(staging / SERVING_FILE)
        _write_json(staging / "scaler.json", trained.scaler.to_json())
        _write_json(
            staging / "threshold.json",
            {
                "threshold": trained.threshold,
                "policy": trained.config.policy.name,
                "calibrated_on": "validation normals",
                "validation_normals": int(trained.splits.val.size),
                "flag_rule": "error > threshold",
            },
        )
        _write_json(staging / "splits.json", trained.splits.to_json())
        _write_json(
            staging / "metadata.json",
            build_metadata(trained, datetime.now(UTC).replace(microsecond=0), parity),
        )
        manifest = {
            "format": BUNDLE_FORMAT,
            "files": {name: _sha256(staging / name) for name in CONTENT_FILES},
        }
        _write_json(staging / MANIFEST_FILE, manifest)
        for name in (*CONTENT_FILES, MANIFEST_FILE):
            _fsync(staging / name)
        _swap_into_place(staging, out)
    except OSError as exc:
        # A full disk, a quota or a read-only folder: say so in one line.
        shutil.rmtree(staging, ignore_errors=True)
        kept = (
            "the bundle already there is unchanged"
            if (out / MANIFEST_FILE).is_file()
            else "nothing was written"
        )
        writing = Path(exc.filename).name if exc.filename else "the new bundle"
        raise BundleError(
            f"cannot write the model bundle to {out}: {exc.strerror or exc} "
            f"(writing {writing}); {kept}. Free space there or choose another --out"
        ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _swap_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        retired = out.parent / f".{out.name}.retired-{secrets.token_hex(4)}"
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out)
    dir_fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle."""

    path: Path
    model: keras.Model
    scaler: Standardizer
    threshold: float
    policy: str
    splits: Splits
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata["model"]["name"])

    @property
    def version(self) -> str:
        return str(self.metadata["model"]["version"])

    @property
    def normal_label(self) -> str:
        return str(self.metadata["data"]["normal_label"])

    @property
    def beat_length(self) -> int:
        return int(self.metadata["data"]["beat_length"])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: cannot read JSON: {exc}") from exc


def verify_bundle(path: Path) -> dict[str, str]:
    """Check that every file of the bundle is present and matches its hash."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"no model bundle at {path}: not a folder")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(
            f"{path} is not a complete model bundle: {MANIFEST_FILE} is missing"
        )
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{manifest_path}: unsupported bundle format "
            f"{manifest.get('format') if isinstance(manifest, dict) else manifest!r}; "
            f"this beatmon reads format {BUNDLE_FORMAT}"
        )
    files = manifest.get("files", {})
    odd = [
        name
        for name in CONTENT_FILES
        if (path / name).exists() and not (path / name).is_file()
    ]
    if odd:
        raise BundleError(
            f"{path} is damaged: {', '.join(odd)} should be a file and is not "
            "(a folder?); retrain or restore the bundle"
        )
    missing = [name for name in CONTENT_FILES if not (path / name).is_file()]
    if missing:
        raise BundleError(f"{path} is incomplete: missing {', '.join(missing)}")
    unlisted = [name for name in CONTENT_FILES if name not in files]
    if unlisted:
        raise BundleError(f"{manifest_path} lists no hash for {', '.join(unlisted)}")
    for name in CONTENT_FILES:
        try:
            digest = _sha256(path / name)
        except OSError as exc:
            raise BundleError(
                f"{path / name}: cannot read it ({exc.strerror or exc}); check the "
                "disk and the file's permissions, or restore the bundle"
            ) from exc
        if digest != files[name]:
            raise BundleError(
                f"{path / name} does not match the hash in {MANIFEST_FILE}: the "
                "bundle was changed after it was written; retrain or restore it"
            )
    return dict(files)


@dataclass(frozen=True)
class ServingBundle:
    """What the monitor needs from a bundle, loaded without TensorFlow."""

    path: Path
    scorer: Scorer
    name: str
    version: str
    threshold: float
    beat_length: int
    metadata: dict[str, Any]


def _read_parts(path: Path) -> tuple[Standardizer, float, str, dict[str, Any]]:
    threshold_data = _read_json(path / "threshold.json")
    metadata = _read_json(path / "metadata.json")
    try:
        threshold = float(threshold_data["threshold"])
        policy = str(threshold_data["policy"])
        scaler = Standardizer.from_json(_read_json(path / "scaler.json"))
        version = metadata["model"]["version"]
        beat_length = int(metadata["data"]["beat_length"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: a bundle file lacks a field: {exc}") from exc
    if not isinstance(version, str) or scaler.mean.shape != (beat_length,):
        raise BundleError(
            f"{path}: metadata.json and scaler.json disagree on the model version "
            "or the beat length"
        )
    return scaler, threshold, policy, metadata


def load_serving_bundle(path: Path) -> ServingBundle:
    """Load the serving path of a bundle after checking every hash."""
    path = Path(path)
    verify_bundle(path)
    scaler, threshold, _, metadata = _read_parts(path)
    scorer = Scorer.load_weights(path / SERVING_FILE, scaler, threshold)
    return ServingBundle(
        path=path,
        scorer=scorer,
        name=str(metadata["model"]["name"]),
        version=str(metadata["model"]["version"]),
        threshold=threshold,
        beat_length=int(metadata["data"]["beat_length"]),
        metadata=metadata,
    )


_NOT_FROM_TRAIN = (
    "beatmon train never writes such a file, so the bundle was changed after "
    "training: retrain with beatmon train, or restore the bundle from a copy you "
    "trust"
)


def _model_load_error(model_path: Path, exc: Exception) -> str:
    """What went wrong loading ``model_path``, and what to do about it."""
    text = str(exc)
    # Keras raises a plain ValueError when safe mode refuses to deserialise
    # code, and names safe_mode in it.
    if "safe_mode" in text or "arbitrary code" in text:
        return (
            f"{model_path}: refused: the model holds Python code (a Lambda layer "
            "or a function), which Keras safe mode does not load because it could "
            f"run anything on this machine; {_NOT_FROM_TRAIN}"
        )
    return (
        f"{model_path}: cannot load the model: {text}; retrain with beatmon train "
        "or restore the bundle"
    )


def load_bundle(path: Path) -> Bundle:
    """Load a bundle after checking its hashes, with Keras safe mode on."""
    import keras

    import models.layers  # noqa: F401  (registers beatmon's Keras objects)

    path = Path(path)
    verify_bundle(path)
    model_path = path / MODEL_FILE
    # Only the Keras v3 archive (a zip file) honours safe mode in every Keras
    # release; older formats can run code while they load.
    if not zipfile.is_zipfile(model_path):
        raise BundleError(
            f"{model_path}: refused: not a Keras v3 archive (a zip file), the only "
            f"model format beatmon loads; {_NOT_FROM_TRAIN}"
        )
    try:
        model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    except Exception as exc:
        raise BundleError(_model_load_error(model_path, exc)) from exc

    scaler, threshold, policy, metadata = _read_parts(path)
    try:
        splits = Splits.from_json(_read_json(path / "splits.json"))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}/splits.json lacks a field: {exc}") from exc
    return Bundle(path, model, scaler, threshold, policy, splits, metadata)
