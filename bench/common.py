"""What the end-to-end benchmarks share: a broker of their own, a bundle, replay.

Each benchmark runs its own Kafka through scripts/kafka on a port of its own,
so it never disturbs a broker that tests or a demo are using.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BEATMON = REPO / ".venv" / "bin" / "beatmon"


def kafka(command: str, port: int) -> str:
    """Run ``scripts/kafka COMMAND`` for the broker on ``port``; exit if start fails."""
    env = {**os.environ, "KAFKA_PORT": str(port)}
    result = subprocess.run(
        [str(REPO / "scripts" / "kafka"), command],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if command == "start" and result.returncode != 0:
        sys.exit(f"cannot start Kafka on port {port}: {result.stdout}{result.stderr}")
    return result.stdout


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb(pid: int | str = "self") -> float:
    """The current resident set size of process ``pid``, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS line in /proc/{pid}/status")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks, from
    /proc/stat; the busy share between two readings says how loaded it was."""
    fields = [
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ]
    idle = fields[3] + fields[4]  # idle and iowait
    total = sum(fields[:8])  # guest time is already counted in user time
    return total - idle, total


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of all cores busy between two :func:`machine_ticks` readings."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def ensure_bundle(path: Path) -> Path:
    """Train the reference model into ``path`` unless a bundle is already there."""
    if not (path / "manifest.json").is_file():
        subprocess.run(
            [str(BEATMON), "train", "--out", str(path)],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
    return path


def replay_command(bootstrap: str, topic: str, *extra: str) -> list[str]:
    """The ``beatmon replay`` command line for ``topic``, with quiet progress."""
    return [
        str(BEATMON),
        "replay",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--report-every",
        "3600",
        *extra,
    ]


def replay(bootstrap: str, topic: str, *extra: str) -> float:
    """Replay to the end; returns the seconds it took."""
    started = time.perf_counter()
    subprocess.run(
        replay_command(bootstrap, topic, *extra),
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    return time.perf_counter() - started


def monitor_settings(
    bundle: str,
    topic: str,
    bootstrap: str,
    metrics_port: int,
    extra: dict[str, Any] | None = None,
) -> Any:
    """The settings of a benchmark's monitor: alarm policy and metrics on, MQTT
    off, its own group and output topics named after ``topic``; ``extra`` adds
    settings by dotted key."""
    from beatmon.settings import load_monitor_settings

    return load_monitor_settings(
        env={},
        overrides={
            "monitor.bundle": bundle,
            "monitor.group_id": f"{topic}-bench",
            "monitor.report_every_s": 3600,
            "kafka.bootstrap_servers": bootstrap,
            "topics.beats": topic,
            "topics.alerts": f"{topic}.alerts",
            "topics.dead_letters": f"{topic}.dlq",
            "topics.alarms": f"{topic}.alarms",
            "topics.alarm_state": f"{topic}.alarm-state",
            "mqtt.enabled": False,
            "metrics.port": metrics_port,
            **(extra or {}),
        },
    )
