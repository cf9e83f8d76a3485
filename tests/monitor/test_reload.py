"""The bundle watcher: new bundles are loaded beside, bad ones refused once."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from models.bundle import ServingBundle, load_serving_bundle
from monitor.metrics import MonitorMetrics
from monitor.reload import BundleWatcher, fingerprint
from tests.serving_bundles import (
    derive_bundle,
    replace_by_rename,
    write_serving_bundle,
)


@pytest.fixture
def served(tmp_path: Path) -> Path:
    return write_serving_bundle(tmp_path / "bundle", version="dense-a", threshold=0.5)


def watcher_for(
    path: Path, metrics: MonitorMetrics | None = None
) -> tuple[BundleWatcher, ServingBundle]:
    current = load_serving_bundle(path)
    return BundleWatcher(path, current, 1.0, metrics=metrics), current


def settle(watcher: BundleWatcher) -> ServingBundle | None:
    """Look twice, as two ticks of the watcher thread do, and take what is ready."""
    watcher.look()
    watcher.look()
    return watcher.take()


def metric(registry: CollectorRegistry, result: str) -> float:
    value = registry.get_sample_value("beatmon_model_reloads_total", {"result": result})
    assert value is not None
    return value


def test_the_bundle_in_service_is_not_offered_again(served: Path) -> None:
    watcher, _ = watcher_for(served)
    assert settle(watcher) is None
    assert settle(watcher) is None
    assert watcher.refused == 0


def test_a_bundle_replaced_by_rename_is_loaded_and_offered_once(
    served: Path, tmp_path: Path
) -> None:
    watcher, _ = watcher_for(served)
    assert settle(watcher) is None
    staged = derive_bundle(
        served, tmp_path / "staged", version="dense-b", threshold=0.7
    )
    replace_by_rename(staged, served)

    # One look sees the change; only the next one, unchanged, loads it.
    watcher.look()
    assert watcher.take() is None
    watcher.look()
    new = watcher.take()
    assert new is not None and new.version == "dense-b" and new.threshold == 0.7
    assert watcher.take() is None
    assert settle(watcher) is None


def test_a_symlink_switched_to_another_version_is_followed(tmp_path: Path) -> None:
    first = write_serving_bundle(tmp_path / "v1", version="dense-v1")
    derive_bundle(first, tmp_path / "v2", version="dense-v2")
    current = tmp_path / "current"
    current.symlink_to("v1")
    watcher, model = watcher_for(current)
    assert model.version == "dense-v1" and settle(watcher) is None

    (tmp_path / "current.new").symlink_to("v2")
    (tmp_path / "current.new").replace(current)
    new = settle(watcher)
    assert new is not None and new.version == "dense-v2"
    assert new.path == (tmp_path / "v2").resolve()


@pytest.mark.parametrize("damage", ["tampered", "half-written", "wrong-length"])
def test_an_invalid_bundle_is_refused_once_and_counted(
    served: Path,
    tmp_path: Path,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, load_serving_bundle(served))
    watcher, _ = watcher_for(served, metrics)
    assert settle(watcher) is None
    staged = tmp_path / "staged"
    if damage == "wrong-length":
        write_serving_bundle(staged, version="dense-short", length=96)
    else:
        derive_bundle(served, staged, version="dense-b")
        if damage == "tampered":
            (staged / "threshold.json").write_text(json.dumps({"threshold": 9.0}))
        else:
            (staged / "serving.npz").unlink()
    replace_by_rename(staged, served)

    with caplog.at_level(logging.ERROR, logger="monitor.reload"):
        for _ in range(5):
            assert settle(watcher) is None
    refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(refusals) == 1, refusals
    assert refusals[0].startswith("model bundle refused, version=dense-a keeps")
    reason = {
        "tampered": "does not match the hash",
        "half-written": "missing serving.npz",
        "wrong-length": "beats of 96 samples, the stream has beats of 140",
    }[damage]
    assert reason in refusals[0]
    assert watcher.refused == 1
    assert metric(registry, "refused") == 1 and metric(registry, "ok") == 0


def test_a_bundle_fixed_after_a_refusal_is_taken(served: Path, tmp_path: Path) -> None:
    watcher, _ = watcher_for(served)
    settle(watcher)
    staged = derive_bundle(served, tmp_path / "staged", version="dense-b")
    (staged / "serving.npz").rename(tmp_path / "serving.npz")
    replace_by_rename(staged, served)
    assert settle(watcher) is None and watcher.refused == 1

    # The missing file arrives: the folder changed, so it is judged again.
    shutil.copy(tmp_path / "serving.npz", served)
    new = settle(watcher)
    assert new is not None and new.version == "dense-b"


def test_a_folder_still_changing_is_not_judged(served: Path, tmp_path: Path) -> None:
    watcher, _ = watcher_for(served)
    settle(watcher)
    staged = derive_bundle(served, tmp_path / "staged", version="dense-b")
    replace_by_rename(staged, served)
    for k in range(3):
        watcher.look()
        # Every look finds another change, as while files are being copied in.
        (served / "splits.json").write_text(json.dumps({"k": k}))
    assert watcher.take() is None and watcher.refused == 0


def test_a_vanished_bundle_is_logged_once_and_the_model_kept(
    served: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watcher, _ = watcher_for(served)
    settle(watcher)
    shutil.rmtree(served)
    with caplog.at_level(logging.WARNING, logger="monitor.reload"):
        for _ in range(3):
            assert settle(watcher) is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == [
        f"model bundle path={served} is gone; version=dense-a keeps scoring until "
        "a bundle is there again"
    ]
    assert fingerprint(served) is None and watcher.refused == 0


def test_the_thread_finds_a_new_bundle_and_stops_on_close(
    served: Path, tmp_path: Path
) -> None:
    current = load_serving_bundle(served)
    watcher = BundleWatcher(served, current, 0.05)
    watcher.start()
    try:
        staged = derive_bundle(served, tmp_path / "staged", version="dense-b")
        replace_by_rename(staged, served)
        deadline = time.monotonic() + 5
        new = None
        while new is None and time.monotonic() < deadline:
            new = watcher.take()
            time.sleep(0.01)
        assert new is not None and new.version == "dense-b"
    finally:
        watcher.close()
    assert not any(t.name == "beatmon-bundle-watcher" for t in threading.enumerate())


def test_scores_of_the_served_bundles_differ(served: Path, tmp_path: Path) -> None:
    # The fabricated bundles are real models: each scores beats on its own.
    other = write_serving_bundle(tmp_path / "other", version="dense-o", seed=3)
    beats = np.random.default_rng(1).normal(size=(4, 140))
    a = load_serving_bundle(served).scorer.score(beats).errors
    b = load_serving_bundle(other).scorer.score(beats).errors
    assert np.all(np.isfinite(a)) and not np.allclose(a, b)


def test_metrics_follow_the_model_put_in_service(served: Path, tmp_path: Path) -> None:
    first = load_serving_bundle(served)
    second = load_serving_bundle(
        derive_bundle(served, tmp_path / "b", version="dense-b", threshold=0.8)
    )
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, first)
    metrics.model_swapped(second)
    assert (
        registry.get_sample_value(
            "beatmon_model_info", {"name": "dense", "version": "dense-b"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "beatmon_model_info", {"name": "dense", "version": "dense-a"}
        )
        is None
    )
    assert registry.get_sample_value("beatmon_threshold") == 0.8
    assert metric(registry, "ok") == 1 and metric(registry, "refused") == 0
    # The error histogram keeps its bounds: the first threshold is still one.
    assert (
        registry.get_sample_value("beatmon_reconstruction_error_bucket", {"le": "0.5"})
        == 0
    )
