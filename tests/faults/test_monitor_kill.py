"""Fault: the monitor process is killed with SIGKILL, five times, mid-stream."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from models.bundle import load_serving_bundle
from tests.faults.harness import (
    FaultTable,
    MetricsLedger,
    check_stream,
    exit_counts,
    uninterrupted_alarms,
    wait_for,
)
from tests.services import free_port
from tests.streams import (
    MonitorProcess,
    ReplayProcess,
    TopicEnds,
    alarm_identities,
    make_topics,
    read_topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

BEATS = 2500
KILLS = 5
MAX_BATCH = 32
SEED = 20261203
# Kafka's smallest session timeout: a killed member's partitions are handed
# to its successor after 6 s instead of the default 10.
SESSION_TIMEOUT_MS = 6000


def test_monitor_killed_five_times_loses_nothing(
    kafka_bootstrap: str,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
    fault_table: FaultTable,
) -> None:
    """Five SIGKILLs at seeded random points, each followed by a restart.

    Each life is killed a random 0.2-2 s after it scored its first beat,
    while the replay is still sending. Metrics: a killed life's counters die
    with it, so each life is checked on its own. Just before the kill its
    counters are bracketed by the records written since the life started
    (at most one batch of output can be on its way), and after the stream
    the last life, idle, must count exactly the records written since it
    started, and log the same totals when it stops.
    """
    rng = random.Random(SEED)
    with fault_table.scenario(f"monitor SIGKILL x{KILLS}, restarted") as row:
        topics = make_topics(kafka_bootstrap, partitions=3, prefix="fault-kill")
        ends = TopicEnds(kafka_bootstrap)
        ledger = MetricsLedger(ends, topics, MAX_BATCH)
        feeder = ReplayProcess(
            kafka_bootstrap, topics.beats, BEATS, tmp_path / "replay.log", speed=2
        )
        try:
            for life in range(KILLS + 1):
                ledger.mark()
                monitor = MonitorProcess(
                    bundle,
                    kafka_bootstrap,
                    topics,
                    tmp_path / f"monitor-{life}.log",
                    topics.group,
                    "--max-batch",
                    str(MAX_BATCH),
                    metrics_port=free_port(),
                    env={
                        "BEATMON_MONITOR__SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS)
                    },
                )
                monitors.append(monitor)
                if life == KILLS:
                    break
                monitor.wait_for_log("metrics served at")
                wait_for(
                    lambda: ledger.since_mark().scored > 0,
                    f"life {life} to score a beat",
                )
                time.sleep(rng.uniform(0.2, 2.0))
                ledger.bracket([monitor])
                assert feeder.proc.poll() is None, "the kill should land mid-stream"
                monitor.stop(signal.SIGKILL)
            assert feeder.wait(timeout_s=120) == 0, feeder.text()[-2000:]

            outcome = check_stream(kafka_bootstrap, topics, bundle, BEATS)
            row.fill(outcome)
            last = monitors[-1]
            counted = ledger.settled([last])
            assert last.stop() == 0
            assert exit_counts(last) == counted

            version = load_serving_bundle(bundle).version
            expected = uninterrupted_alarms(version, outcome)
            records = read_topic(kafka_bootstrap, topics.alarms, len(expected))
            assert alarm_identities([r.value for r in records]) == expected
            rescored = outcome.score_records - outcome.scored
            row.result = f"pass: {rescored} beats re-scored after {KILLS} kills"
        finally:
            feeder.kill()
            ends.close()
