"""`beatmon explain --alert`: an alert the monitor published, read from Kafka."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from beatmon.cli import main
from beatmon.messages import Alert, decode_alert
from tests.conftest import png_size
from tests.integration.test_monitor_kafka import (
    MonitorProcess,
    Topics,
    read_topic,
    replay,
)
from tests.services import unique_name
from tests.serving_bundles import derive_bundle, write_manifest
from tests.streams import make_topics

pytestmark = pytest.mark.integration

BEATS = 300


@pytest.fixture(scope="module")
def scored(
    kafka_bootstrap: str, bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Topics, list[Alert]]]:
    """A replay of 300 beats on two partitions, scored by a monitor that stopped."""
    topics = make_topics(kafka_bootstrap, partitions=2, prefix="explain")
    replay(kafka_bootstrap, topics.beats, BEATS)
    log = tmp_path_factory.mktemp("explain-monitor") / "m.log"
    monitor = MonitorProcess(bundle, kafka_bootstrap, topics, log, topics.group)
    try:
        assert len(read_topic(kafka_bootstrap, topics.scores, BEATS)) == BEATS
        assert monitor.stop() == 0
    finally:
        if monitor.proc.poll() is None:
            monitor.proc.kill()
            monitor.proc.wait()
    alerts = [
        decode_alert(r.value) for r in read_topic(kafka_bootstrap, topics.alerts, 1)
    ]
    assert len(alerts) >= 3
    yield topics, alerts


def explain_alert(
    bundle: Path, bootstrap: str, topics: Topics, alert: str, *extra: str
) -> int:
    return main(
        [
            "explain",
            "--bundle",
            str(bundle),
            "--alert",
            alert,
            "--bootstrap",
            bootstrap,
            "--alerts-topic",
            topics.alerts,
            "--beats-topic",
            topics.beats,
            "--timeout",
            "30",
            *extra,
        ]
    )


def test_an_alert_is_drawn_from_its_beat_and_reproduced(
    kafka_bootstrap: str,
    bundle: Path,
    scored: tuple[Topics, list[Alert]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics, alerts = scored
    # The first, the last and a middle alert: both partitions, any offset.
    for alert in (alerts[0], alerts[len(alerts) // 2], alerts[-1]):
        out = tmp_path / f"{alert.alert_id}.png"
        code = explain_alert(
            bundle, kafka_bootstrap, topics, alert.alert_id, "--out", str(out)
        )
        printed = capsys.readouterr().out
        assert code == 0
        png_size(out)
        assert f"patient {alert.patient}, beat {alert.seq}" in printed
        assert f"It reproduces alert {alert.alert_id}" in printed
        assert ", flagged by " in printed
        segment = re.search(r"largest deviation in segment (\d+) of 10", printed)
        assert segment is not None
        assert int(segment.group(1)) == int(np.argmax(alert.profile)) + 1

    monkeypatch.chdir(tmp_path)
    alert = alerts[1]
    assert explain_alert(bundle, kafka_bootstrap, topics, alert.alert_id.upper()) == 0
    png_size(tmp_path / f"explain-{alert.patient}-{alert.seq}.png")


def test_an_unknown_alert_id_is_a_clear_error(
    kafka_bootstrap: str,
    bundle: Path,
    scored: tuple[Topics, list[Alert]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics, alerts = scored
    assert explain_alert(bundle, kafka_bootstrap, topics, "0" * 32) == 2
    err = capsys.readouterr().err
    assert (
        f"beatmon explain: error: no alert with id {'0' * 32} on topic "
        f"{topics.alerts} at {kafka_bootstrap} ({len(alerts)} alerts read)"
    ) in err

    missing = unique_name("no-such-topic")
    code = main(
        [
            "explain",
            "--bundle",
            str(bundle),
            "--alert",
            alerts[0].alert_id,
            "--bootstrap",
            kafka_bootstrap,
            "--alerts-topic",
            missing,
        ]
    )
    assert code == 2
    assert f"topic {missing} at {kafka_bootstrap} does not exist" in (
        capsys.readouterr().err
    )


def test_an_alert_of_another_model_or_another_beat_is_refused(
    kafka_bootstrap: str,
    bundle: Path,
    scored: tuple[Topics, list[Alert]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics, alerts = scored
    alert = alerts[0]
    other = derive_bundle(bundle, tmp_path / "other", version="dense-other")
    assert explain_alert(other, kafka_bootstrap, topics, alert.alert_id) == 2
    err = capsys.readouterr().err
    assert f"was scored by model {alert.model_version}, but {other} holds" in err

    # The same version with another scaler: the alert's error is not reproduced.
    changed = shutil.copytree(bundle, tmp_path / "changed")
    scaler = json.loads((changed / "scaler.json").read_text())
    scaler["mean"] = [m + 0.5 for m in scaler["mean"]]
    (changed / "scaler.json").write_text(json.dumps(scaler))
    write_manifest(changed)
    out = tmp_path / "changed.png"
    code = explain_alert(
        changed, kafka_bootstrap, topics, alert.alert_id, "--out", str(out)
    )
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert f"the beat found for alert {alert.alert_id} scores " in err
    assert f"the alert says {alert.error:.6g}" in err
