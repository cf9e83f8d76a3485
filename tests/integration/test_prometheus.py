"""The metrics, the dashboard and the rules against a real Prometheus.

A real scorer (a linear autoencoder fitted to bundled ECG5000 normals, served
through :class:`models.scoring.Scorer`) scores bundled beats through
:func:`monitor.batch.score_records`, and :class:`MonitorMetrics` serves the
batches on the port that the session's Prometheus scrapes every second.
Then every PromQL expression of the Grafana dashboard and of rules.yml is
run through Prometheus's HTTP API, and each must return data: a panel that
shows nothing fails the test.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from beatmon.messages import Truth, encode_beat
from models.data import BeatSet
from models.scoring import Scorer, Standardizer
from models.serving_ops import Dense
from models.threshold import ThresholdPolicy
from monitor.batch import score_records
from monitor.metrics import MonitorMetrics, serve
from tests.services import PROMETHEUS_CONFIG_DIR, REPO, PrometheusServer

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "config" / "grafana" / "dashboards" / "beatmon.json"
# What Grafana would put in for a 1 s scrape interval and a short time range.
GRAFANA_VARIABLES = {"$__rate_interval": "10s", "$__interval": "2s", "$__range": "1m"}
# An alert is `VALUE OP NUMBER`; VALUE is what the integration test evaluates.
ALERT_SHAPE = re.compile(
    r"^(?P<value>.+?)\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.]+(?:e[+-]?[0-9]+)?$", re.S
)
WAIT_S = 45.0
MODEL_NAME = "pca-test"
MODEL_VERSION = "pca-test-1"


@dataclass(frozen=True)
class Model:
    scorer: Scorer
    beats: np.ndarray
    truths: list[Truth]
    name: str = MODEL_NAME
    version: str = MODEL_VERSION

    @property
    def threshold(self) -> float:
        return self.scorer.threshold


@pytest.fixture(scope="module")
def model(ecg5000: BeatSet) -> Model:
    """A linear autoencoder (8 principal components) on 1500 normals.

    The threshold lets 5 % of 500 held-out normals through; the other beats,
    with their ground truth, make the stream.
    """
    normal = ecg5000.normal_mask("1")
    order = np.random.default_rng(11).permutation(len(ecg5000.beats))
    normals = order[normal[order]]
    train, validation = normals[:1500], normals[1500:2000]
    stream = np.setdiff1d(order, normals[:2000])

    scaler = Standardizer.fit(ecg5000.beats[train])
    scaled = scaler.transform(ecg5000.beats[train])
    mean = scaled.mean(axis=0)
    components = np.linalg.svd(scaled - mean, full_matrices=False)[2][:8].T
    layers = [
        Dense(components.astype(np.float32), (-mean @ components).astype(np.float32)),
        Dense(components.T.astype(np.float32), mean.astype(np.float32)),
    ]
    errors = Scorer(layers, scaler, 1.0).score(ecg5000.beats[validation]).errors
    threshold = ThresholdPolicy.parse("false-alarm-rate:0.05").calibrate(errors)
    truths: list[Truth] = ["normal" if n else "abnormal" for n in normal[stream]]
    return Model(Scorer(layers, scaler, threshold), ecg5000.beats[stream], truths)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Feeder:
    """Streams batches of real beats into the metrics from a background thread."""

    def __init__(self, model: Model, metrics: MonitorMetrics) -> None:
        self.model = model
        self.metrics = metrics
        self.rng = np.random.default_rng(5)
        self.stop = threading.Event()
        self.truth: dict[tuple[str, str], int] = {}
        self.failure: BaseException | None = None
        self._offset = 0
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self.stop.wait(0.05):
                self.feed_one()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.failure = exc

    def feed_one(self) -> None:
        rng, model = self.rng, self.model
        size = int(rng.integers(16, 200))
        rows = rng.integers(0, len(model.beats), size)
        now = time.time()
        records = []
        for i, row in enumerate(rows.tolist()):
            patient = f"patient-{row % 40:03d}"
            value = encode_beat(
                patient,
                self._offset + i,
                now - float(rng.uniform(0.002, 0.4)),
                np.round(model.beats[row], 5),
                model.truths[row],
            )
            records.append(
                Record("beats", row % 3, self._offset + i, patient.encode(), value)
            )
        if rng.random() < 0.3:
            records.append(Record("beats", 0, self._offset + size, None, b"{oops"))
        self._offset += len(records)

        batch = score_records(records, model.scorer, model.name, model.version)
        time.sleep(0.005)
        batch.acked_at = time.time()
        self.metrics.on_batch(batch)
        for beat, flagged in zip(batch.beats, batch.flagged.tolist(), strict=True):
            key = (str(beat.truth), "abnormal" if flagged else "normal")
            self.truth[key] = self.truth.get(key, 0) + 1

        for alert in batch.alerts[:3]:
            priority = "high" if alert.error > 4 * alert.threshold else "low"
            self.metrics.count_alarm("kafka", priority)
            self.metrics.count_alarm("mqtt", priority)
        self._dropped += int(rng.random() < 0.1)
        self.metrics.mqtt_state(True, int(rng.integers(0, 5)), self._dropped)
        self.metrics.set_lag({p: int(rng.integers(0, 300)) for p in range(3)})


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every dashboard target, variables filled in."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            if "$" in expr:
                pytest.fail(f"panel {panel['title']!r}: unknown variable in {expr}")
            found.append((f"panel {panel['title']!r}", expr))
    return found


def rule_exprs() -> list[tuple[str, str]]:
    """(rule name, PromQL) for every rule; for an alert, the value it compares."""
    rules = yaml.safe_load((PROMETHEUS_CONFIG_DIR / "rules.yml").read_text())
    found = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            expr = " ".join(rule["expr"].split())
            if "record" in rule:
                found.append((f"record {rule['record']}", expr))
                continue
            shape = ALERT_SHAPE.match(expr)
            if shape is None:
                pytest.fail(
                    f"alert {rule['alert']}: {expr!r} is not VALUE OP NUMBER, so "
                    "this test cannot check that its value has data"
                )
            found.append((f"alert {rule['alert']} (value)", shape["value"]))
    return found


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not so after {timeout_s:g} s")
        time.sleep(0.5)


@pytest.fixture
def metrics_endpoint(
    prometheus_server: PrometheusServer, model: Model
) -> Iterator[tuple[MonitorMetrics, Any]]:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, model)
    server = serve(registry, port=prometheus_server.metrics_port)
    try:
        yield metrics, server
    finally:
        server.close()


def test_every_dashboard_and_rule_expression_has_data(
    prometheus_server: PrometheusServer,
    metrics_endpoint: tuple[MonitorMetrics, Any],
    model: Model,
) -> None:
    """Each dashboard query and each rule returns a non-empty result.

    Alert conditions such as ``up == 0`` are empty while all is well, as they
    should be. So every alert in rules.yml must read ``VALUE OP NUMBER``, and
    this test checks that VALUE has data: the comparison cannot then fail
    silently on a misspelt metric. promtool's rule unit tests
    (config/prometheus/rules.test.yml) check when each alert fires; at the
    end, two alerts are made true here against the real server.
    """
    prom = prometheus_server
    metrics, server = metrics_endpoint
    exprs = dashboard_exprs() + rule_exprs()

    with Feeder(model, metrics) as feeder:
        wait_until(
            lambda: prom.query(
                'count_over_time(up{job="beatmon-monitor"}[1m]) >= 5'
                ' and up{job="beatmon-monitor"} == 1'
            ),
            "Prometheus scraped the metrics five times",
        )

        def empty() -> list[str]:
            return [f"{where}: {expr}" for where, expr in exprs if not prom.query(expr)]

        deadline = time.monotonic() + WAIT_S
        missing = empty()
        while missing and time.monotonic() < deadline and feeder.failure is None:
            time.sleep(1.0)
            missing = empty()
        assert feeder.failure is None, f"the feeder failed: {feeder.failure!r}"
        assert not missing, "expressions without data:\n" + "\n".join(missing)

        # Prometheus evaluates every rule without error.
        groups = prom.api("rules")["groups"]
        health = {
            rule["name"]: (rule["health"], rule.get("lastError", ""))
            for group in groups
            for rule in group["rules"]
        }
        assert len(health) == sum(1 for _ in rule_exprs())
        assert all(state == ("ok", "") for state in health.values()), health

    # Once feeding stops, the scraped totals match what was fed.
    fed = {
        outcome: metrics.registry.get_sample_value(
            "beatmon_beats_total", {"outcome": outcome}
        )
        for outcome in ("normal", "flagged", "invalid")
    }
    assert all(fed.values()), fed

    def scraped_totals() -> bool:
        rows = prom.query("sum by (outcome) (beatmon_beats_total)")
        got = {row["metric"]["outcome"]: float(row["value"][1]) for row in rows}
        return got == fed

    wait_until(scraped_totals, "the scraped beat totals equal the fed ones", 10)

    # Live sensitivity from Prometheus agrees with the counts kept here.
    tp = feeder.truth.get(("abnormal", "abnormal"), 0)
    fn = feeder.truth.get(("abnormal", "normal"), 0)
    (row,) = prom.query("beatmon:sensitivity:rate5m")
    assert float(row["value"][1]) == pytest.approx(tp / (tp + fn), abs=0.05)

    # Two alert conditions, made true.
    metrics.mqtt_state(connected=False, buffered=17, dropped_total=10**6)
    wait_until(
        lambda: prom.query("beatmon_mqtt_connected == 0"),
        "BeatmonMqttDisconnected's condition holds",
        10,
    )
    server.close()
    wait_until(
        lambda: prom.query('up{job="beatmon-monitor"} == 0'),
        "BeatmonMonitorDown's condition holds",
        10,
    )
