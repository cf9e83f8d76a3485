"""``beatmon train``, ``compare`` and ``replay`` read the one settings object.

Defaults < file < BEATMON_* variables < flags; errors name the key and where
it came from, and passwords stay out of --help and the logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kafka
import pytest

from beatmon.cli import (
    COMPARE_FLAG_KEYS,
    build_parser,
    main,
    trainer_settings_from_args,
)
from producers.cli import replay_settings, replay_settings_from_args

PASSWORD = "s3cret"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


def write_plain_beats(tmp_path: Path, count: int = 4) -> Path:
    """Unlabelled beats of 10 samples each, in the plain layout."""
    path = tmp_path / "beats.csv"
    rows = (",".join(f"{0.1 * (i + j):.2f}" for j in range(10)) for i in range(count))
    path.write_text("\n".join(rows) + "\n")
    return path


# Errors stop the command before any work


def test_a_bad_number_in_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BEATMON_TRAIN__EPOCHS", "abc")
    out = tmp_path / "bundle"
    assert main(["train", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "beatmon train: error: BEATMON_TRAIN__EPOCHS: train.epochs:" in err
    assert "'abc'" in err
    assert not out.exists()


def test_an_unknown_key_in_the_config_file_names_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "train:\n  epochs: 3\n  epocs: 4\n")
    out = tmp_path / "bundle"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"beatmon train: error: {config}:3: train.epocs: unknown key" in err
    assert "did you mean epochs?" in err
    assert not out.exists()


def test_replay_stops_on_an_unknown_key_before_reaching_kafka(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "replay:\n  speeed: 2\n")
    assert main(["replay", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"beatmon replay: error: {config}:2: replay.speeed: unknown key" in err
    assert "cannot reach Kafka" not in err


def test_flag_values_are_checked_like_every_other_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--epochs", "0", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "command line: train.epochs: must be at least 1, got 0" in err

    assert main(["train", "--model", "huge", "--out", str(tmp_path / "b")]) == 2
    assert "command line: train.model: must be one of" in capsys.readouterr().err


# Precedence


def test_train_flag_beats_environment_beats_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path,
        "train:\n  epochs: 7\n  batch_size: 8\n  patience: 3\n  out: runs/from-file\n",
    )
    monkeypatch.setenv("BEATMON_TRAIN__EPOCHS", "9")
    monkeypatch.setenv("BEATMON_TRAIN__BATCH_SIZE", "16")
    args = build_parser().parse_args(
        ["train", "--config", str(config), "--epochs", "11"]
    )
    settings = trainer_settings_from_args(args)
    assert (settings.epochs, settings.batch_size, settings.patience) == (11, 16, 3)
    assert settings.out == Path("runs/from-file")
    # Not set anywhere: the built-in defaults.
    assert (settings.seed, settings.model, settings.data) == (0, "dense", "ecg5000")


def test_config_flag_beats_the_file_beatmon_config_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "named.yaml"
    named.write_text("train:\n  patience: 1\n")
    given = write_config(tmp_path, "train:\n  patience: 2\n")
    monkeypatch.setenv("BEATMON_CONFIG", str(named))
    parser = build_parser()
    assert trainer_settings_from_args(parser.parse_args(["train"])).patience == 1
    args = parser.parse_args(["train", "--config", str(given)])
    assert trainer_settings_from_args(args).patience == 2


def test_compare_reads_the_train_settings_but_not_its_own_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, "train:\n  epochs: 7\n  threshold: percentile:99\n")
    monkeypatch.setenv("BEATMON_TRAIN__PATIENCE", "2")
    args = build_parser().parse_args(
        ["compare", "--config", str(config), "--out", "cmp", "--batch-size", "4"]
    )
    settings = trainer_settings_from_args(args, flag_keys=COMPARE_FLAG_KEYS)
    assert (settings.epochs, settings.patience, settings.batch_size) == (7, 2, 4)
    assert settings.threshold == "percentile:99"
    assert settings.out == Path("runs/dense")


def test_replay_flag_beats_environment_beats_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path,
        "kafka:\n  bootstrap_servers: file:9092\n"
        "topics:\n  beats: from-file\n"
        "replay:\n  patients: 5\n  seed: 4\n  max_rate: true\n  truth: false\n",
    )
    monkeypatch.setenv("BEATMON_REPLAY__PATIENTS", "6")
    monkeypatch.setenv("BEATMON_REPLAY__SEED", "8")
    monkeypatch.setenv("BEATMON_KAFKA__BOOTSTRAP_SERVERS", "env:9092")
    parser = build_parser()
    args = parser.parse_args(["replay", "--config", str(config), "--patients", "7"])
    settings = replay_settings_from_args(args)
    assert (settings.patients, settings.seed) == (7, 8)
    assert settings.kafka.bootstrap_servers == "env:9092"
    assert settings.topics.beats == "from-file"
    assert (settings.max_rate, settings.truth) == (True, False)
    assert replay_settings(settings).speed is None

    # --speed paces again although the file says max_rate; --truth turns it on.
    args = parser.parse_args(
        ["replay", "--config", str(config), "--speed", "3", "--truth"]
    )
    settings = replay_settings_from_args(args)
    assert (settings.max_rate, settings.truth) == (False, True)
    assert replay_settings(settings).speed == 3.0


# Secrets


def test_help_shows_defaults_and_no_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in ("replay", "train"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "--config FILE" in out
        assert "password" not in out.lower()
        if command == "train":
            assert "(default 50)" in out and "(default runs/dense)" in out


class FakeFuture:
    def add_callback(self, f: Callable[..., Any], *args: Any) -> FakeFuture:
        return self

    def add_errback(self, f: Callable[..., Any], *args: Any) -> FakeFuture:
        return self


class FakeProducer:
    """Takes every beat at once, as a producer whose deliveries all succeed."""

    def send(self, topic: str, **kwargs: Any) -> FakeFuture:
        return FakeFuture()

    def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def test_replay_passes_sasl_settings_to_the_producer_and_never_logs_the_password(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("BEATMON_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("BEATMON_KAFKA__SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("BEATMON_KAFKA__SASL_USERNAME", "u")
    monkeypatch.setenv("BEATMON_KAFKA__SASL_PASSWORD", PASSWORD)
    made: list[dict[str, Any]] = []

    def kafka_producer(**kwargs: Any) -> FakeProducer:
        made.append(kwargs)
        return FakeProducer()

    monkeypatch.setattr(kafka, "KafkaProducer", kafka_producer)
    # No broker here: the login check must not reach one on the default port.
    monkeypatch.setattr("beatmon.kafka_login.check_login", lambda *_, **__: None)
    beats = write_plain_beats(tmp_path)

    with caplog.at_level(logging.DEBUG):
        code = main(["-v", "replay", "--data", str(beats), "--max", "--patients", "2"])
    out, err = capsys.readouterr()

    assert code == 0
    assert "Replayed 4 beats" in out
    [kwargs] = made
    assert kwargs["bootstrap_servers"] == "127.0.0.1:9092"
    assert {
        key: kwargs[key]
        for key in (
            "security_protocol",
            "sasl_mechanism",
            "sasl_plain_username",
            "sasl_plain_password",
        )
    } == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "u",
        "sasl_plain_password": PASSWORD,
    }
    # The settings line is logged, with the password masked.
    assert "kafka.sasl_username=u kafka.sasl_password=***" in err
    assert PASSWORD not in out + err + caplog.text
