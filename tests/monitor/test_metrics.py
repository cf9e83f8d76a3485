"""MonitorMetrics against a fresh registry per test: counts, buckets, labels."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from beatmon.errors import ConfigError
from beatmon.messages import Alert, Beat, Truth
from monitor.batch import DeadLetter, ScoredBatch
from monitor.metrics import MonitorMetrics, error_buckets, serve

THRESHOLD = 0.1234567


@dataclass(frozen=True)
class Model:
    name: str = "dense"
    version: str = "dense-20240101-abcdef"
    threshold: float = THRESHOLD


@dataclass
class FakeRecord:
    topic: str = "beatmon.beats"
    partition: int = 0
    offset: int = 0
    key: bytes | None = None
    value: bytes | None = b"not json"


def make_batch(
    errors: list[float],
    truths: list[Truth | None] | None = None,
    patients: list[str] | None = None,
    dead: int = 0,
    produced_at: float = 1000.0,
    acked_at: float = 1000.25,
    inference_s: float = 0.003,
) -> ScoredBatch:
    n = len(errors)
    truths = truths if truths is not None else [None] * n
    patients = patients or [f"patient-{i:04d}" for i in range(n)]
    beats = [
        Beat(patients[i], 1000 + i, produced_at, [0.0] * 4, truths[i]) for i in range(n)
    ]
    error_array = np.array(errors, dtype=float)
    flagged = error_array > THRESHOLD
    alerts = [
        Alert(
            alert_id=f"a{i}",
            patient=beats[i].patient,
            seq=beats[i].seq,
            error=float(error_array[i]),
            threshold=THRESHOLD,
            model="dense",
            model_version="v",
            beat_time=produced_at,
            emitted_at=acked_at,
            profile=[],
            truth=None,
        )
        for i in np.flatnonzero(flagged)
    ]
    return ScoredBatch(
        beats=beats,
        partitions=[0] * len(beats),
        errors=error_array,
        flagged=flagged,
        profiles=np.zeros((n, 4)),
        dead_letters=[DeadLetter(FakeRecord(offset=i), "bad") for i in range(dead)],
        alerts=alerts,
        inference_s=inference_s,
        records=n + dead,
        acked_at=acked_at,
    )


def value(registry: CollectorRegistry, name: str, /, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    if found is None:
        raise KeyError(f"no sample {name}{labels}")
    return found


def test_threshold_is_an_exact_bucket_bound() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry, Model()).on_batch(
        make_batch([THRESHOLD, np.nextafter(THRESHOLD, 1.0), THRESHOLD / 3, 5.0])
    )

    le = floatToGoString(THRESHOLD)
    text = generate_latest(registry).decode()
    assert f'beatmon_reconstruction_error_bucket{{le="{le}"}} 2.0' in text
    assert float(le) == THRESHOLD
    assert value(registry, "beatmon_reconstruction_error_bucket", le=le) == 2
    assert value(registry, "beatmon_reconstruction_error_bucket", le="+Inf") == 4
    assert value(registry, "beatmon_reconstruction_error_count") == 4
    assert value(registry, "beatmon_reconstruction_error_sum") == pytest.approx(
        THRESHOLD + np.nextafter(THRESHOLD, 1.0) + THRESHOLD / 3 + 5.0
    )


def test_error_buckets_are_log_scale_around_the_threshold() -> None:
    bounds = error_buckets(0.3)
    assert len(bounds) == 25
    assert bounds[12] == 0.3
    assert bounds[0] == pytest.approx(0.3 / 64)
    assert bounds[-1] == pytest.approx(0.3 * 64)
    ratios = np.array(bounds[1:]) / np.array(bounds[:-1])
    assert np.allclose(ratios, np.sqrt(2))


@pytest.mark.parametrize("threshold", [0.0, -1.0, float("nan"), float("inf")])
def test_a_threshold_that_cannot_be_a_bucket_bound_is_refused(
    threshold: float,
) -> None:
    with pytest.raises(ConfigError, match="positive finite"):
        MonitorMetrics(CollectorRegistry(), Model(threshold=threshold))


def test_batches_are_counted_by_outcome() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, Model())
    metrics.on_batch(make_batch([0.01, 0.05, 0.2, 0.9, 0.02], dead=2))
    metrics.on_batch(make_batch([0.5], inference_s=0.2))
    metrics.on_batch(make_batch([], dead=3))

    assert value(registry, "beatmon_beats_total", outcome="normal") == 3
    assert value(registry, "beatmon_beats_total", outcome="flagged") == 3
    assert value(registry, "beatmon_beats_total", outcome="invalid") == 5
    assert value(registry, "beatmon_dead_letters_total") == 5
    assert value(registry, "beatmon_alerts_total", channel="kafka") == 3
    assert value(registry, "beatmon_reconstruction_error_count") == 6
    assert value(registry, "beatmon_batch_size_beats_count") == 3
    assert value(registry, "beatmon_batch_size_beats_sum") == 7 + 1 + 3
    assert value(registry, "beatmon_batch_size_beats_bucket", le="4.0") == 2
    assert value(registry, "beatmon_inference_seconds_sum") == pytest.approx(0.206)
    assert value(registry, "beatmon_end_to_end_latency_seconds_count") == 6
    assert value(registry, "beatmon_end_to_end_latency_seconds_bucket", le="0.2") == 0
    assert value(registry, "beatmon_end_to_end_latency_seconds_bucket", le="0.5") == 6
    assert value(registry, "beatmon_end_to_end_latency_seconds_sum") == pytest.approx(
        6 * 0.25
    )


def test_ground_truth_gives_the_confusion_counts() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, Model())
    errors = [0.01, 0.5, 0.9, 0.02, 0.03, 0.7, 0.04]
    truths: list[Truth | None] = [
        "normal",  # tn
        "normal",  # fp
        "abnormal",  # tp
        "abnormal",  # fn
        None,
        None,
        "normal",  # tn
    ]
    metrics.on_batch(make_batch(errors, truths))

    def truth(t: str, p: str) -> float:
        return value(registry, "beatmon_truth_beats_total", truth=t, predicted=p)

    assert truth("normal", "normal") == 2
    assert truth("normal", "abnormal") == 1
    assert truth("abnormal", "abnormal") == 1
    assert truth("abnormal", "normal") == 1


def test_every_fixed_label_combination_exists_at_zero() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry, Model())

    for outcome in ("normal", "flagged", "invalid"):
        assert value(registry, "beatmon_beats_total", outcome=outcome) == 0
    for channel in ("kafka", "mqtt"):
        for priority in ("low", "medium", "high"):
            labels = {"channel": channel, "priority": priority}
            assert value(registry, "beatmon_alarms_total", **labels) == 0
    for t in ("normal", "abnormal"):
        for p in ("normal", "abnormal"):
            labels = {"truth": t, "predicted": p}
            assert value(registry, "beatmon_truth_beats_total", **labels) == 0
    assert value(registry, "beatmon_threshold") == THRESHOLD
    assert (
        value(
            registry,
            "beatmon_model_info",
            name="dense",
            version="dense-20240101-abcdef",
        )
        == 1
    )


def test_no_label_carries_a_patient_id_or_a_sequence_number() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, Model())
    patients = ["bed-17-jdoe", "MRN0042", "bed-17-jdoe"]
    metrics.on_batch(
        make_batch([0.01, 0.9, 0.3], ["normal", "abnormal", None], patients, dead=1)
    )
    metrics.set_lag({0: 12, 3: 4})
    metrics.mqtt_state(connected=True, buffered=3, dropped_total=1)
    metrics.count_alarm("mqtt", "high")

    forbidden = {*patients, *(str(1000 + i) for i in range(3))}
    families = text_string_to_metric_families(generate_latest(registry).decode())
    label_values = {
        v
        for family in families
        for sample in family.samples
        for v in sample.labels.values()
    }
    assert label_values, "the registry exposed no labels at all"
    assert not label_values & forbidden
    assert not any(p in v for v in label_values for p in patients)


def test_metric_names_follow_prometheus_conventions() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry, Model())

    families = list(registry.collect())
    names = {family.name: family.type for family in families}
    assert all(name.startswith("beatmon_") for name in names)
    counters = {name for name, kind in names.items() if kind == "counter"}
    assert counters == {
        "beatmon_beats",
        "beatmon_alerts",
        "beatmon_alarms",
        "beatmon_dead_letters",
        "beatmon_beats_lost",
        "beatmon_mqtt_dropped",
        "beatmon_truth_beats",
        "beatmon_model_reloads",
    }  # exposed with the _total suffix
    assert names["beatmon_end_to_end_latency_seconds"] == "histogram"
    assert names["beatmon_inference_seconds"] == "histogram"
    assert names["beatmon_batch_size_beats"] == "histogram"
    assert names["beatmon_reconstruction_error"] == "histogram"
    assert names["beatmon_consumer_lag_messages"] == "gauge"
    assert names["beatmon_mqtt_buffered_messages"] == "gauge"


def test_lag_of_revoked_partitions_disappears() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, Model())
    metrics.set_lag({0: 10, 1: 20, 2: 30})
    metrics.set_lag({1: 5, 2: -3})

    lag = "beatmon_consumer_lag_messages"
    assert registry.get_sample_value(lag, {"partition": "0"}) is None
    assert value(registry, lag, partition="1") == 5
    assert value(registry, lag, partition="2") == 0


def test_mqtt_state_turns_a_running_drop_count_into_a_counter() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, Model())
    metrics.mqtt_state(connected=True, buffered=0, dropped_total=0)
    metrics.mqtt_state(connected=False, buffered=250, dropped_total=4)
    metrics.mqtt_state(connected=False, buffered=256, dropped_total=9)

    assert value(registry, "beatmon_mqtt_connected") == 0
    assert value(registry, "beatmon_mqtt_buffered_messages") == 256
    assert value(registry, "beatmon_mqtt_dropped_total") == 9

    # A new client starts counting from zero again; its drops are all new.
    metrics.mqtt_state(connected=True, buffered=0, dropped_total=2)
    assert value(registry, "beatmon_mqtt_connected") == 1
    assert value(registry, "beatmon_mqtt_dropped_total") == 11


def test_lost_beats_are_counted() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, Model())
    assert value(registry, "beatmon_beats_lost_total") == 0
    metrics.count_lost(120)
    metrics.count_lost(5)
    assert value(registry, "beatmon_beats_lost_total") == 125


def test_alarms_are_counted_by_channel_and_priority() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, Model())
    metrics.count_alarm("kafka", "medium")
    metrics.count_alarm("kafka", "medium")
    metrics.count_alarm("mqtt", "high")

    alarms = "beatmon_alarms_total"
    assert value(registry, alarms, channel="kafka", priority="medium") == 2
    assert value(registry, alarms, channel="mqtt", priority="high") == 1
    with pytest.raises(ConfigError, match="priority"):
        metrics.count_alarm("kafka", "urgent")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="channel"):
        metrics.count_alarm("sms", "low")  # type: ignore[arg-type]


def test_serve_binds_loopback_and_closes() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry, Model()).on_batch(make_batch([0.5]))

    with serve(registry, port=0) as server:
        assert server.host == "127.0.0.1"
        with urllib.request.urlopen(server.url, timeout=5) as response:
            body = response.read().decode()
        assert 'beatmon_beats_total{outcome="flagged"} 1.0' in body

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=2)
