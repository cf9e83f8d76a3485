"""``beatmon explain`` and the drawing behind it, on a small trained bundle."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from beatmon.cli import main
from beatmon.messages import encode_beat
from models.bundle import load_serving_bundle
from models.data import BeatSet
from models.explain import TOP_SEGMENT_GID, draw, explain
from models.scoring import error_profile, segment_bounds
from tests.conftest import png_size

SHORT_MESSAGE = '{"v":1,"patient":"p1","seq":0,"produced_at":1,"samples":[0.5]}'


def explain_cli(*args: str) -> int:
    return main(["explain", *args])


def segment_of(out: str) -> int:
    """The segment number (from 1) the command's summary names."""
    found = re.search(r"largest deviation in segment (\d+) of 10", out)
    assert found, out
    return int(found.group(1))


def test_reconstruction_scores_exactly_as_the_monitor(
    bundle: Path, ecg5000: BeatSet
) -> None:
    scorer = load_serving_bundle(bundle).scorer
    beats = ecg5000.beats[:64]
    scores = scorer.score(beats)
    result = scorer.reconstruct(beats)
    assert np.array_equal(result.scores.errors, scores.errors)
    assert np.array_equal(result.scores.flagged, scores.flagged)
    assert np.array_equal(result.scores.profiles, scores.profiles)
    assert np.array_equal(error_profile(result.squared), scores.profiles)
    assert np.allclose(result.squared.mean(axis=1), scores.errors)
    # The reconstruction is in the units of the data: close to the beats.
    assert np.mean(np.abs(result.reconstructed - beats)) < np.mean(np.abs(beats))


def test_the_marked_segment_is_the_argmax_of_the_profile(
    bundle: Path, ecg5000: BeatSet
) -> None:
    from models.evaluate import pyplot

    model = load_serving_bundle(bundle)
    rows = [0, 1, 2900, 4000, 4999]
    explained = explain(
        model.scorer, ecg5000.beats[rows], [f"row {r}" for r in rows], model.version
    )
    profiles = model.scorer.score(ecg5000.beats[rows]).profiles
    bounds = segment_bounds(140)
    plt = pyplot()
    for e, profile in zip(explained, profiles, strict=True):
        assert e.top_segment == int(np.argmax(profile))
        fig, (signal_ax, error_ax) = plt.subplots(2, 1)
        draw(e, signal_ax, error_ax)
        (span,) = [p for p in signal_ax.patches if p.get_gid() == TOP_SEGMENT_GID]
        k = e.top_segment
        left, width = span.get_x(), span.get_width()
        assert (left, left + width) == (bounds[k] - 0.5, bounds[k + 1] - 0.5)
        plt.close(fig)


def test_row_of_the_bundled_set_by_default(
    bundle: Path,
    ecg5000: BeatSet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "row.png"
    assert explain_cli("--bundle", str(bundle), "--row", "4000", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert png_size(out) == (990, 660)
    model = load_serving_bundle(bundle)
    scores = model.scorer.score(ecg5000.beats[[4000]])
    assert segment_of(printed) == int(np.argmax(scores.profiles[0])) + 1
    assert f"error {scores.errors[0]:.6g} vs threshold" in printed
    assert "row 4000 of ecg5000, truth label " in printed
    assert model.version in printed and f"Drawn to {out}." in printed


def test_default_output_names_the_beat(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert explain_cli("--bundle", str(bundle), "--row", "7") == 0
    png_size(tmp_path / "explain-row-7.png")


def test_samples_as_numbers_array_message_or_stdin(
    bundle: Path,
    ecg5000: BeatSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    beat = ecg5000.beats[4000].astype(float)
    message = encode_beat("p0042", 17, 1764763200.5, beat.tolist(), "abnormal")
    expected = load_serving_bundle(bundle).scorer.score(beat[np.newaxis]).profiles[0]
    texts = {
        "comma": ",".join(str(x) for x in beat),
        "array": json.dumps(beat.tolist()),
        "message": message.decode(),
    }
    for name, text in texts.items():
        out = tmp_path / f"{name}.png"
        code = explain_cli(
            "--bundle", str(bundle), "--samples", text, "--out", str(out)
        )
        printed = capsys.readouterr().out
        assert code == 0, name
        png_size(out)
        assert segment_of(printed) == int(np.argmax(expected)) + 1, name
    assert "patient p0042, beat 17, truth abnormal" in printed

    monkeypatch.setattr("sys.stdin", io.StringIO(message.decode()))
    monkeypatch.chdir(tmp_path)
    assert explain_cli("--bundle", str(bundle), "--samples", "-") == 0
    png_size(tmp_path / "explain-p0042-17.png")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--row", "5000"], "row 5000 is out of range: ecg5000 has 5000 beats"),
        (["--row", "-1"], "row -1 is out of range"),
        (
            ["--samples", "0.1,0.2,0.3"],
            "the beat has 3 samples; the model dense-",
        ),
        (["--samples", "0.1,abc"], "sample 1 is 'abc', not a number"),
        (["--samples", "[0.1, true]"], "sample 1 is True, not a number"),
        (["--samples", "0.1,nan"], "sample 1 is 'nan'; samples must be finite"),
        (["--samples", SHORT_MESSAGE], "beat has 1 samples, the model expects 140"),
        (["--samples", "  "], "--samples is empty"),
        (["--alert", "not-an-id"], "'not-an-id' is not an alert id"),
        (["--samples", "1", "--data", "x.csv"], "--data only applies with --row"),
        (["--row", "1", "--bootstrap", "h:1"], "--bootstrap only applies with --alert"),
    ],
)
def test_bad_input_is_a_clear_error(
    bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "x.png"
    assert explain_cli("--bundle", str(bundle), *args, "--out", str(out)) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("beatmon explain: ")]
    assert line.startswith("beatmon explain: error: ") and message in line, err
    assert not out.exists()


def test_a_missing_bundle_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert explain_cli("--bundle", str(tmp_path / "none"), "--row", "0") == 2
    assert f"no model bundle at {tmp_path / 'none'}" in capsys.readouterr().err


def test_a_row_of_another_file_needs_its_beat_length(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short.csv"
    short.write_text("\n".join(",".join(["0.5"] * 96) for _ in range(3)) + "\n")
    assert explain_cli("--bundle", str(bundle), "--row", "1", "--data", str(short)) == 2
    assert "the beat has 96 samples; the model" in capsys.readouterr().err
