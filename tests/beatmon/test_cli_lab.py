"""The lab through the ``beatmon`` command line, on small files, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beatmon.cli import main
from models.data import BeatSet
from tests.conftest import png_size, write_binary_csv

QUICK = ["--epochs", "3", "--patience", "2"]


@pytest.fixture
def beats_csv(small_ecg: BeatSet, tmp_path: Path) -> Path:
    return write_binary_csv(tmp_path / "ecg.csv", small_ecg, "1")


def test_train_then_evaluate_writes_bundle_and_report(
    beats_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    code = main(
        [
            "train",
            "--data",
            str(beats_csv),
            "--normal-label",
            "1",
            "--out",
            str(bundle),
            *QUICK,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    assert "label 1:" in err and "<- normal" in err
    assert "WARNING" not in err
    assert "Trained the dense autoencoder" in out
    assert (bundle / "manifest.json").is_file()

    report = tmp_path / "report"
    assert main(["evaluate", "--bundle", str(bundle), "--out", str(report)]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    for key in ("roc_auc", "pr_auc", "sensitivity", "specificity", "precision", "f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["confusion_matrix"]) == {"tn", "fp", "fn", "tp"}
    assert "held-out test split" in metrics["evaluated_on"]
    for name in (
        "loss.png",
        "errors.png",
        "roc.png",
        "pr.png",
        "confusion.png",
        "worst.png",
    ):
        assert (report / name).read_bytes().startswith(b"\x89PNG")
        assert f"]({name})" in (report / "report.md").read_text()
    # Two rows of four beats (false alarms, misses), each a beat and its error.
    assert png_size(report / "worst.png") == (1760, 1012)
    assert "Worst false alarms and worst misses" in (report / "report.md").read_text()
    assert "precision" in (report / "classification_report.txt").read_text()


def test_wrong_normal_label_is_warned_about(
    beats_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--data",
            str(beats_csv),
            "--normal-label",
            "0",
            "--out",
            str(tmp_path / "b"),
            *QUICK,
        ]
    )
    err = capsys.readouterr().err
    assert code == 0
    assert "WARNING" in err and "label '0' is called normal" in err


def test_labelled_file_without_normal_label_stops_with_advice(
    beats_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--data", str(beats_csv), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--normal-label" in err and str(beats_csv) in err
    assert not (tmp_path / "b").exists()


def test_bad_file_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t0.1\t0.2\t0.3\t0.4\t0.5\t0.6\t0.7\t0.8\n1\t0.1\tabc\n")
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err


def test_compare_writes_paired_summary(
    small_ecg: BeatSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_binary_csv(tmp_path / "ecg.csv", small_ecg, "1")
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--data",
            str(data),
            "--normal-label",
            "1",
            "--models",
            "dense,conv",
            "--seeds",
            "2",
            "--out",
            str(out),
            "--epochs",
            "2",
            "--patience",
            "1",
        ]
    )
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    for name in ("dense", "conv"):
        stats = result["models"][name]
        for key in (
            "roc_auc",
            "pr_auc",
            "f1",
            "sensitivity",
            "false_alarm_rate",
            "us_per_beat_batch_64",
            "us_per_beat_batch_1",
        ):
            assert set(stats[key]) == {"mean", "std"}
        assert stats["us_per_beat_batch_1"]["mean"] > 0
        assert all(run["parity_max_abs_error"] <= 1e-5 for run in stats["runs"])
    assert result["models"]["conv"]["parameters"] == 87_489
    paired = result["paired"]["dense - conv"]["roc_auc"]
    assert {"mean_difference", "seed_noise", "exceeds_noise"} <= set(paired)
    assert result["winners"]["roc_auc"]["runner_up"] in ("dense", "conv")
    markdown = (out / "compare.md").read_text()
    assert "Protocol" in markdown
    table = (
        "| model | ROC-AUC | PR-AUC | F1 | sensitivity | "
        "false-alarm rate (test normals) |"
    )
    assert table in markdown
    assert table in capsys.readouterr().out
