"""Prometheus metrics of the monitor: what it scored, how fast, and how well.

Every metric lives in the registry passed to :class:`MonitorMetrics`, so tests
build a fresh one each time. Labels take a handful of fixed values (outcome,
channel, priority, truth, partition number); no label ever carries a patient
id, a sequence number or anything else that grows with the stream, because
every label combination is a separate series in Prometheus.

The reconstruction-error histogram has log-scale buckets built around the
model's calibrated threshold, which is itself an exact bucket bound: the
bucket ``le="<threshold>"`` counts the beats at or below it, and every beat
above it was flagged. After the model is changed while running, the buckets
stay those of the first model, so no series changes its bounds; the
threshold gauge follows the model in service.

Per-beat histograms take a whole batch in one NumPy call, so a batch of 512
beats costs microseconds rather than a Python call per beat.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, get_args
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from beatmon.errors import ConfigError
from monitor.batch import ScoredBatch

Outcome = Literal["normal", "flagged", "invalid"]
ReloadResult = Literal["ok", "refused"]
Channel = Literal["kafka", "mqtt"]
Priority = Literal["low", "medium", "high"]
TruthLabel = Literal["normal", "abnormal"]

OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
CHANNELS: tuple[Channel, ...] = get_args(Channel)
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
TRUTHS: tuple[TruthLabel, ...] = get_args(TruthLabel)
RELOAD_RESULTS: tuple[ReloadResult, ...] = get_args(ReloadResult)

ERROR_BUCKETS_PER_OCTAVE = 2
ERROR_BUCKET_OCTAVES = 6
BATCH_SIZE_BUCKETS = tuple(float(2**k) for k in range(13))
INFERENCE_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
LATENCY_BUCKETS_S = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)


class DescribedModel(Protocol):
    """What the metrics need to know of the model: a ServingBundle fits."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def threshold(self) -> float: ...


def error_buckets(
    threshold: float,
    per_octave: int = ERROR_BUCKETS_PER_OCTAVE,
    octaves: int = ERROR_BUCKET_OCTAVES,
) -> tuple[float, ...]:
    """Log-scale bounds from ``threshold / 2**octaves`` to ``threshold * 2**octaves``.

    ``threshold`` itself is one of the bounds, bit for bit.
    """
    if not (math.isfinite(threshold) and threshold > 0):
        raise ConfigError(
            f"the model threshold must be a positive finite number, got {threshold!r}"
        )
    if per_octave < 1 or octaves < 1:
        raise ConfigError(
            f"error buckets need per_octave >= 1 and octaves >= 1, got "
            f"{per_octave} and {octaves}"
        )
    steps = range(-octaves * per_octave, octaves * per_octave + 1)
    return tuple(threshold * 2.0 ** (k / per_octave) for k in steps)


class BulkHistogram(Collector):
    """A classic Prometheus histogram that takes an array of observations at once."""

    def __init__(
        self,
        name: str,
        documentation: str,
        bounds: Iterable[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.array(sorted(bounds), dtype=float)
        if self.bounds.size == 0 or not np.all(np.isfinite(self.bounds)):
            raise ConfigError(f"{name}: bucket bounds must be finite and non-empty")
        if np.any(np.diff(self.bounds) <= 0):
            raise ConfigError(f"{name}: bucket bounds must be distinct")
        self._le = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self._counts = np.zeros(self.bounds.size + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, values: np.ndarray | Iterable[float]) -> None:
        """Count every value in its bucket; NaN values are not counted."""
        array = np.asarray(values, dtype=float).ravel()
        array = array[~np.isnan(array)]
        if array.size == 0:
            return
        # side="left" puts a value equal to a bound in that bound's bucket (le).
        index = np.searchsorted(self.bounds, array, side="left")
        counts = np.bincount(index, minlength=self._counts.size)
        total = float(array.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        yield HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=list(zip(self._le, cumulative, strict=True)),
            sum_value=total,
        )

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)


class MonitorMetrics:
    """The monitor's metrics in ``registry``, for the model it serves.

    Pass it to :class:`monitor.service.Monitor` as an observer; it reads each
    batch after its output was acknowledged.
    """

    def __init__(self, registry: CollectorRegistry, model: DescribedModel) -> None:
        self.registry = registry
        self.threshold = float(model.threshold)
        self.error_bounds = error_buckets(self.threshold)
        self._lag_partitions: set[int] = set()
        self._mqtt_dropped_seen = 0
        self._lock = threading.Lock()

        self.reconstruction_error = BulkHistogram(
            "beatmon_reconstruction_error",
            "Reconstruction error (mean squared, standardised units) of scored "
            "beats; the model threshold is a bucket bound",
            self.error_bounds,
            registry,
        )
        self.end_to_end_latency = BulkHistogram(
            "beatmon_end_to_end_latency_seconds",
            "Seconds from a beat's production to the acknowledgement of its "
            "batch's output",
            LATENCY_BUCKETS_S,
            registry,
        )
        self.beats = Counter(
            "beatmon_beats_total",
            "Beat messages consumed, by outcome: normal, flagged (error above "
            "the threshold) or invalid (dead-lettered)",
            ["outcome"],
            registry=registry,
        )
        self.alerts = Counter(
            "beatmon_alerts_total",
            "Alerts published, by channel",
            ["channel"],
            registry=registry,
        )
        self.alarms = Counter(
            "beatmon_alarms_total",
            "Alarms raised by the alarm policy, by channel and priority",
            ["channel", "priority"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "beatmon_dead_letters_total",
            "Messages sent to the dead-letter topic",
            registry=registry,
        )
        self.mqtt_dropped = Counter(
            "beatmon_mqtt_dropped_total",
            "MQTT messages dropped because the buffer was full while disconnected",
            registry=registry,
        )
        self.beats_lost = Counter(
            "beatmon_beats_lost",
            "Beats the broker deleted before this monitor read them (it was behind "
            "or stopped for longer than the beats topic keeps messages); never "
            "scored",
            registry=registry,
        )
        self.truth_beats = Counter(
            "beatmon_truth_beats_total",
            "Beats that carried ground truth, by truth and by what the model said",
            ["truth", "predicted"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "beatmon_batch_size_beats",
            "Messages consumed per micro-batch (valid beats and dead letters)",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "beatmon_inference_seconds",
            "Seconds spent scoring one micro-batch",
            buckets=INFERENCE_BUCKETS_S,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "beatmon_consumer_lag_messages",
            "Messages between the committed offset and the end of each partition "
            "of the beats topic",
            ["partition"],
            registry=registry,
        )
        self.model_info = Info(
            "beatmon_model", "The model being served", registry=registry
        )
        self.model_reloads = Counter(
            "beatmon_model_reloads",
            "New model bundles found at the watched location, by result: ok (put "
            "in service) or refused (invalid; the model in service kept scoring)",
            ["result"],
            registry=registry,
        )
        self.threshold_gauge = Gauge(
            "beatmon_threshold",
            "The model's calibrated reconstruction-error threshold",
            registry=registry,
        )
        self.mqtt_connected = Gauge(
            "beatmon_mqtt_connected",
            "1 while the MQTT client is connected to its broker, else 0",
            registry=registry,
        )
        self.mqtt_buffered = Gauge(
            "beatmon_mqtt_buffered_messages",
            "MQTT messages waiting in the buffer for a connection",
            registry=registry,
        )

        # Every fixed label combination exists from the start, at zero, so that
        # rates and ratios have a series to work on before the first event.
        for outcome in OUTCOMES:
            self.beats.labels(outcome)
        self.alerts.labels("kafka")
        for channel in CHANNELS:
            for priority in PRIORITIES:
                self.alarms.labels(channel, priority)
        for truth in TRUTHS:
            for predicted in TRUTHS:
                self.truth_beats.labels(truth, predicted)
        for result in RELOAD_RESULTS:
            self.model_reloads.labels(result)
        self.model_info.info({"name": str(model.name), "version": str(model.version)})
        self.threshold_gauge.set(self.threshold)

    def on_batch(self, batch: ScoredBatch) -> None:
        """Count one batch whose output the broker has acknowledged."""
        flagged = np.asarray(batch.flagged, dtype=bool)
        n_flagged = int(flagged.sum())
        self.beats.labels("normal").inc(flagged.size - n_flagged)
        self.beats.labels("flagged").inc(n_flagged)
        self.beats.labels("invalid").inc(len(batch.dead_letters))
        self.dead_letters.inc(len(batch.dead_letters))
        self.alerts.labels("kafka").inc(len(batch.alerts))
        self.batch_size.observe(batch.records)
        self.inference.observe(batch.inference_s)
        self.reconstruction_error.observe(batch.errors)
        if batch.beats:
            self.end_to_end_latency.observe(batch.latencies_s)
        self._count_truth(batch, flagged)

    def _count_truth(self, batch: ScoredBatch, flagged: np.ndarray) -> None:
        counts: dict[tuple[str, str], int] = {}
        for beat, is_flagged in zip(batch.beats, flagged.tolist(), strict=True):
            if beat.truth is None:
                continue
            key = (beat.truth, "abnormal" if is_flagged else "normal")
            counts[key] = counts.get(key, 0) + 1
        for (truth, predicted), count in counts.items():
            self.truth_beats.labels(truth, predicted).inc(count)

    def set_lag(self, lags: Mapping[int, int]) -> None:
        """Set the lag of each assigned partition, in messages; drop the others."""
        with self._lock:
            for partition in self._lag_partitions - set(lags):
                self.consumer_lag.remove(str(partition))
            for partition, lag in lags.items():
                self.consumer_lag.labels(str(partition)).set(max(lag, 0))
            self._lag_partitions = set(lags)

    def count_lost(self, beats: int) -> None:
        """Count beats deleted by the broker before they could be read."""
        self.beats_lost.inc(beats)

    def mqtt_state(self, connected: bool, buffered: int, dropped_total: int) -> None:
        """Record the MQTT link; ``dropped_total`` is the client's running count.

        A running count lower than the last one means the client was replaced;
        its whole count is then new.
        """
        self.mqtt_connected.set(1 if connected else 0)
        self.mqtt_buffered.set(buffered)
        with self._lock:
            seen = self._mqtt_dropped_seen
            new = dropped_total - seen if dropped_total >= seen else dropped_total
            self._mqtt_dropped_seen = dropped_total
        if new > 0:
            self.mqtt_dropped.inc(new)

    def count_reload(self, result: ReloadResult) -> None:
        """Count one new bundle put in service (ok) or refused."""
        if result not in RELOAD_RESULTS:
            raise ConfigError(
                f"unknown reload result {result!r}; one of {RELOAD_RESULTS}"
            )
        self.model_reloads.labels(result).inc()

    def model_swapped(self, model: DescribedModel) -> None:
        """Show ``model`` as the one in service and count the reload.

        The error histogram keeps the buckets of the model the monitor started
        with, so its series never change their bounds.
        """
        self.model_info.info({"name": str(model.name), "version": str(model.version)})
        self.threshold_gauge.set(float(model.threshold))
        self.count_reload("ok")

    def count_alarm(self, channel: Channel, priority: Priority) -> None:
        """Count one alarm sent on ``channel`` at ``priority``."""
        if channel not in CHANNELS:
            raise ConfigError(f"unknown alarm channel {channel!r}; one of {CHANNELS}")
        if priority not in PRIORITIES:
            raise ConfigError(
                f"unknown alarm priority {priority!r}; one of {PRIORITIES}"
            )
        self.alarms.labels(channel, priority).inc()


@dataclass
class MetricsServer:
    """The HTTP endpoint serving ``/metrics``; :meth:`close` stops it."""

    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and wait for the server thread to end."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    registry: CollectorRegistry, port: int, host: str = "127.0.0.1"
) -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread.

    The default host is loopback; port 0 picks a free port, read it back from
    the result.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread, host, int(server.server_port))
