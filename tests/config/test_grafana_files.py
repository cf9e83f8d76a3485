"""The Grafana provisioning files and the dashboard fit each other and the metrics."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from monitor.metrics import MonitorMetrics
from tests.services import PROMETHEUS_CONFIG_DIR, REPO

GRAFANA = REPO / "config" / "grafana"
DATASOURCE_UID = "beatmon-prometheus"


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (GRAFANA / "dashboards" / "beatmon.json").read_text()
    )
    return data


def exposed_series_names() -> set[str]:
    class Model:
        name = "dense"
        version = "v1"
        threshold = 0.5

    registry = CollectorRegistry()
    # The lag gauge has a series per partition once the monitor has one.
    MonitorMetrics(registry, Model()).set_lag({0: 0})
    return {sample.name for family in registry.collect() for sample in family.samples}


def test_datasource_has_the_fixed_uid() -> None:
    data = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    (source,) = data["datasources"]
    assert data["apiVersion"] == 1
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["access"] == "proxy"
    assert source["isDefault"] is True


def test_dashboard_provider_reads_the_mounted_folder() -> None:
    data = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "beatmon.yaml").read_text()
    )
    (provider,) = data["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_every_panel_queries_the_provisioned_datasource() -> None:
    board = dashboard()
    assert board["uid"] == "beatmon-overview"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            assert target["expr"].strip(), panel["title"]
    assert "${DS" not in json.dumps(board)


def test_heatmap_reads_the_classic_buckets_as_they_are() -> None:
    (heatmap,) = [p for p in dashboard()["panels"] if p["type"] == "heatmap"]
    (target,) = heatmap["targets"]
    assert target["expr"] == (
        "sum by (le) (increase(beatmon_reconstruction_error_bucket[$__rate_interval]))"
    )
    assert target["format"] == "heatmap"
    assert target["legendFormat"] == "{{le}}"
    assert heatmap["options"]["calculate"] is False


def test_the_threshold_is_drawn_next_to_the_error_distribution() -> None:
    exprs = [
        t["expr"]
        for p in dashboard()["panels"]
        if "threshold" in p["title"].lower()
        for t in p["targets"]
    ]
    assert "max(beatmon_threshold)" in exprs
    assert any("beatmon_reconstruction_error_bucket" in e for e in exprs)


def test_every_metric_named_in_dashboard_and_rules_is_exposed() -> None:
    rules = yaml.safe_load((PROMETHEUS_CONFIG_DIR / "rules.yml").read_text())
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    recorded = {
        r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r
    }

    named = {m for expr in exprs for m in re.findall(r"\bbeatmon_[a-z_]+", expr)}
    assert named - exposed_series_names() == set()
    used_records = {
        m for expr in exprs for m in re.findall(r"beatmon:[a-z_:0-9]+", expr)
    }
    assert used_records <= recorded
