"""Small bundles for tests of the serving side, written without TensorFlow.

A serving bundle is read from JSON files and ``serving.npz``; ``model.keras``
is only hashed on that path, so here it holds placeholder bytes. The weights
are a random two-layer dense stack in the first ``serving.npz`` format,
which the serving path reads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from models.bundle import CONTENT_FILES, MANIFEST_FILE


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(path: Path) -> None:
    """(Re)write the manifest of the bundle at ``path`` from its files."""
    manifest = {
        "format": 1,
        "files": {name: _sha256(path / name) for name in CONTENT_FILES},
    }
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def write_serving_bundle(
    path: Path,
    *,
    version: str,
    length: int = 140,
    threshold: float = 0.5,
    seed: int = 0,
) -> Path:
    """A complete, hash-consistent bundle at ``path`` for beats of ``length``."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    width = 16
    with (path / "serving.npz").open("wb") as fh:
        np.savez(
            fh,
            allow_pickle=False,
            activations=np.array(["relu", "linear"]),
            kernel_0=rng.normal(0, 0.2, (length, width)).astype(np.float32),
            bias_0=np.zeros(width, np.float32),
            kernel_1=rng.normal(0, 0.2, (width, length)).astype(np.float32),
            bias_1=np.zeros(length, np.float32),
        )
    (path / "model.keras").write_bytes(b"placeholder: not read on the serving path")
    (path / "scaler.json").write_text(
        json.dumps(
            {"kind": "standard", "mean": [0.0] * length, "scale": [1.0] * length}
        )
    )
    (path / "threshold.json").write_text(
        json.dumps({"threshold": threshold, "policy": "percentile:95"})
    )
    (path / "splits.json").write_text(json.dumps({}))
    (path / "metadata.json").write_text(
        json.dumps(
            {
                "format": 1,
                "model": {"name": "dense", "version": version},
                "data": {"beat_length": length, "normal_label": "1"},
            }
        )
    )
    write_manifest(path)
    return path


def derive_bundle(
    source: Path, path: Path, *, version: str, threshold: float | None = None
) -> Path:
    """A copy of ``source`` under another version (and threshold), hashes updated."""
    shutil.copytree(source, path)
    metadata = json.loads((path / "metadata.json").read_text())
    metadata["model"]["version"] = version
    (path / "metadata.json").write_text(json.dumps(metadata))
    if threshold is not None:
        data = json.loads((path / "threshold.json").read_text())
        data["threshold"] = threshold
        (path / "threshold.json").write_text(json.dumps(data))
    write_manifest(path)
    return path


def replace_by_rename(staged: Path, target: Path) -> None:
    """Put the folder ``staged`` at ``target`` by renames, as save_bundle does."""
    retired = target.with_name(f".{target.name}.retired")
    if target.exists():
        target.rename(retired)
    staged.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
