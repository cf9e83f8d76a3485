"""Fault: monitors leave and join a consumer group mid-stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.bundle import load_serving_bundle
from tests.faults.harness import (
    FaultTable,
    MetricsLedger,
    assigned_partitions,
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
    Topics,
    alarm_identities,
    make_topics,
    read_topic,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

BEATS = 3000
PARTITIONS = 6
MAX_BATCH = 16
REVOKED = "partitions revoked: "


def start_monitor(
    bundle: Path,
    bootstrap: str,
    topics: Topics,
    log: Path,
    monitors: list[MonitorProcess],
) -> MonitorProcess:
    monitor = MonitorProcess(
        bundle,
        bootstrap,
        topics,
        log,
        topics.group,
        "--max-batch",
        str(MAX_BATCH),
        metrics_port=free_port(),
    )
    monitors.append(monitor)
    return monitor


def group_covers(group: list[MonitorProcess], topic: str) -> bool:
    """Every partition is assigned to exactly one of ``group``, by their logs."""
    owned = [assigned_partitions(m, topic) for m in group]
    every = [p for parts in owned for p in parts]
    return all(owned) and sorted(every) == list(range(PARTITIONS))


def test_monitors_leave_and_join_mid_stream(
    kafka_bootstrap: str,
    bundle: Path,
    tmp_path: Path,
    monitors: list[MonitorProcess],
    fault_table: FaultTable,
) -> None:
    """Three monitors share six partitions; mid-stream one stops (SIGTERM)
    and a fourth joins.

    Duplicates: a monitor that gives partitions up commits what it scored
    first, so at most the batch in its hands when the rebalance began is
    scored again by the new owner. Every "partitions revoked" line a monitor
    logs during the stream is one such hand-over, so the beats scored twice,
    and with them the alerts published twice, must number at most
    ``MAX_BATCH`` times those lines.

    Metrics: while all three run, their summed counters are bracketed by the
    records written (one batch each may be in flight). At the end the three
    still running are idle and their counters, plus the totals the stopped
    monitor logged on its way out (its counters went with its process), must
    equal the records written.
    """
    with fault_table.scenario("3 monitors, 1 stopped, 1 added (6 partitions)") as row:
        topics = make_topics(
            kafka_bootstrap, partitions=PARTITIONS, prefix="fault-rebalance"
        )
        group = [
            start_monitor(
                bundle, kafka_bootstrap, topics, tmp_path / f"m{i}.log", monitors
            )
            for i in range(3)
        ]
        wait_for(lambda: group_covers(group, topics.beats), "three monitors to share")
        log_marks = [len(m.text()) for m in group]

        ends = TopicEnds(kafka_bootstrap)
        feeder = ReplayProcess(
            kafka_bootstrap,
            topics.beats,
            BEATS,
            tmp_path / "replay.log",
            patients=30,
            speed=6,
        )
        try:
            ledger = MetricsLedger(ends, topics, MAX_BATCH)
            wait_for(lambda: ledger.since_mark().scored >= BEATS // 4, "a quarter")
            ledger.bracket(group)

            leaving = group.pop(0)
            assert leaving.stop() == 0
            left = exit_counts(leaving)
            wait_for(lambda: group_covers(group, topics.beats), "the hand-over")
            joining = start_monitor(
                bundle, kafka_bootstrap, topics, tmp_path / "m3.log", monitors
            )
            group.append(joining)
            log_marks.append(0)
            wait_for(lambda: group_covers(group, topics.beats), "the newcomer's share")
            assert feeder.proc.poll() is None, "the changes should land mid-stream"

            assert feeder.wait(timeout_s=120) == 0, feeder.text()[-2000:]
            outcome = check_stream(kafka_bootstrap, topics, bundle, BEATS)
            row.fill(outcome)
            counted = ledger.settled(group, others=left)

            handovers = sum(
                m.text()[mark:].count(REVOKED)
                for m, mark in zip([leaving, *group], log_marks, strict=True)
            )
            bound = MAX_BATCH * handovers
            rescored = outcome.score_records - outcome.scored
            row.result = (
                f"pass: {rescored} beats re-scored in {handovers} hand-overs, "
                f"bound {bound}"
            )
            assert rescored <= bound, (
                f"{rescored} beats scored twice, more than one batch of "
                f"{MAX_BATCH} for each of {handovers} hand-overs"
            )
            assert outcome.duplicates_before <= bound
            for monitor in group:
                assert monitor.stop() == 0
            assert sum((exit_counts(m) for m in group), left) == counted + left

            version = load_serving_bundle(bundle).version
            expected = uninterrupted_alarms(version, outcome)
            records = read_topic(kafka_bootstrap, topics.alarms, len(expected))
            assert alarm_identities([r.value for r in records]) == expected
        finally:
            feeder.kill()
            ends.close()
