"""The Prometheus files pass promtool: syntax, rules, and the rules' unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.services import PROMETHEUS_CONFIG_DIR, PROMETHEUS_MISSING

CONFIGS = ["prometheus.yml", "prometheus.compose.yml"]


def promtool(*args: str | Path) -> str:
    """Run promtool in config/prometheus; fail with its output when it refuses."""
    if shutil.which("promtool") is None:
        pytest.fail(f"promtool not found: {PROMETHEUS_MISSING}")
    result = subprocess.run(
        ["promtool", *map(str, args)],
        cwd=PROMETHEUS_CONFIG_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"promtool {' '.join(map(str, args))} failed:\n{output}")
    return output


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_promtool(name: str) -> None:
    output = promtool("check", "config", PROMETHEUS_CONFIG_DIR / name)
    assert "1 rule files found" in output


def test_rules_pass_promtool() -> None:
    output = promtool("check", "rules", PROMETHEUS_CONFIG_DIR / "rules.yml")
    assert "SUCCESS" in output


def test_alerts_fire_in_the_rules_unit_tests() -> None:
    output = promtool("test", "rules", PROMETHEUS_CONFIG_DIR / "rules.test.yml")
    assert "SUCCESS" in output


def test_local_and_compose_configs_differ_only_in_their_targets() -> None:
    local, compose = (
        yaml.safe_load((PROMETHEUS_CONFIG_DIR / name).read_text()) for name in CONFIGS
    )
    (local_job,) = local["scrape_configs"]
    (compose_job,) = compose["scrape_configs"]
    assert local_job["job_name"] == compose_job["job_name"] == "beatmon-monitor"
    assert local_job.pop("static_configs") == [{"targets": ["127.0.0.1:9108"]}]
    # Every replica of a scaled monitor service is found through DNS.
    assert compose_job.pop("dns_sd_configs") == [
        {"names": ["monitor"], "type": "A", "port": 9108, "refresh_interval": "15s"}
    ]
    assert local == compose


def test_every_alert_rule_has_its_runbook_fields() -> None:
    rules = yaml.safe_load((PROMETHEUS_CONFIG_DIR / "rules.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 4
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]
        assert alert["annotations"]["description"], alert["alert"]
