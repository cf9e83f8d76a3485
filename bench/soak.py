"""Soak benchmark: the monitor under a steady live load, and where it falls behind.

A monitor process (alarm policy and metrics on, MQTT off, as ``beatmon
monitor`` builds it) runs against a broker of the benchmark's own; the ramp
and the soak each have a monitor, topic and group of their own. The replay
producer feeds it live, paced beats from many simulated patients.

1. knee: the producer runs at rising rates (``--steps``, ``--step-s`` each).
   For each step we measure the rate actually produced (from the topic's end
   offsets) and how fast the consumer group's lag grows over the second half
   of the step. The knee is the first step at which the lag grows by more
   than 2% of the produced rate and ends above 3 s of beats; the ramp stops
   there.
2. soak: ``--soak-s`` seconds at ``--rate`` beats/s. Every ``--sample-s`` we
   record the lag; every ``--interval-s`` (a minute) the monitor reports its
   p99 latency (production to acknowledged output), the beats it scored, its
   RSS and the CPU time it used (in cores: 0.5 is half of one core).

Both phases also print how busy the whole machine was. The monitor, the
producer and the broker share its cores, so a figure taken while other work
ran says little; a busy share near 100% with the monitor's own cores well
below 1 means the machine, not the monitor, was the limit.

    .venv/bin/python bench/soak.py [--rate 10000] [--soak-s 600]

The lag is measured against committed offsets, which trail the scored beats
by up to one checkpoint (about 1 s of beats).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    REPO,
    busy_share,
    ensure_bundle,
    kafka,
    machine_ticks,
    monitor_settings,
    replay_command,
    rss_mb,
)

PORT = 49192
BOOTSTRAP = f"127.0.0.1:{PORT}"
MEAN_BPM = 75.0
LAG_GROWTH_LIMIT = 0.02
LAG_LIMIT_S = 3.0


def run_monitor(args: argparse.Namespace) -> None:
    """Child role: the full monitor; prints one JSON line per ``--interval-s``."""
    from beatmon.shutdown import stop_on_signals
    from monitor.batch import ScoredBatch
    from monitor.cli import serve

    settings = monitor_settings(args.bundle, args.topic, BOOTSTRAP, args.metrics_port)
    stopping = threading.Event()
    stop_on_signals(stopping)

    class Reporter:
        """Collects latencies per batch; a timer thread prints them per interval."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.latencies: list[np.ndarray] = []
            self.scored = 0
            self.lock = threading.Lock()

        def on_batch(self, batch: ScoredBatch) -> None:
            with self.lock:
                self.latencies.append(batch.latencies_s)
                self.scored += len(batch.beats)

        def every_interval(self) -> None:
            while not stopping.wait(args.interval_s):
                with self.lock:
                    seen, self.latencies = self.latencies, []
                    scored, self.scored = self.scored, 0
                joined = np.concatenate(seen) if seen else np.zeros(1)
                line = {
                    "t_s": round(time.monotonic() - self.started, 1),
                    "scored": scored,
                    "p50_ms": float(np.quantile(joined, 0.5)) * 1000,
                    "p99_ms": float(np.quantile(joined, 0.99)) * 1000,
                    "rss_mb": rss_mb(),
                    "cpu_s": sum(os.times()[:2]),
                }
                print(json.dumps(line), flush=True)

    reporter = Reporter()
    threading.Thread(target=reporter.every_interval, daemon=True).start()
    print(json.dumps({"t_s": 0.0, "rss_mb": rss_mb(), "started": True}), flush=True)
    serve(settings, stopping, observers=[reporter])


@dataclass
class LagProbe:
    """Committed lag of the monitor's group, summed over the topic's partitions."""

    topic: str
    group: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        from kafka import KafkaConsumer

        # It never subscribes, so it reads the group's offsets without joining.
        self._consumer = KafkaConsumer(
            bootstrap_servers=BOOTSTRAP, group_id=self.group, enable_auto_commit=False
        )

    def sample(self) -> tuple[float, int, int]:
        """(monotonic time, end offset sum, lag) now; also kept in ``samples``."""
        from kafka import TopicPartition

        parts = self._consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        ends = self._consumer.end_offsets(tps)
        lag = sum(ends[tp] - (self._consumer.committed(tp) or 0) for tp in tps)
        point = (time.monotonic(), sum(ends.values()), lag)
        self.samples.append(point)
        return point

    def close(self) -> None:
        self._consumer.close()


def watch(
    probe: LagProbe, seconds: float, every_s: float
) -> list[tuple[float, int, int]]:
    """Sample the lag every ``every_s`` for ``seconds``; returns those samples."""
    taken = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        taken.append(probe.sample())
        time.sleep(every_s)
    return taken


def slope_per_s(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (time, value) points, per second."""
    t = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points], dtype=float)
    return float(np.polyfit(t - t[0], y, 1)[0]) if len(points) > 1 else 0.0


def live_replay(topic: str, rate: float, seconds: float) -> subprocess.Popen[bytes]:
    patients = max(1, round(rate * 60 / MEAN_BPM))
    return subprocess.Popen(
        replay_command(
            BOOTSTRAP,
            topic,
            "--loop",
            "--patients",
            str(patients),
            "--duration",
            str(seconds),
            "--patient-prefix",
            f"r{int(rate)}-",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )


def finish(producer: subprocess.Popen[bytes]) -> None:
    _, err = producer.communicate(timeout=120)
    if producer.returncode != 0:
        sys.exit(f"replay failed:\n{err.decode(errors='replace')[-3000:]}")


def find_knee(probe: LagProbe, topic: str, args: argparse.Namespace) -> float | None:
    """Run the ramp; returns the produced rate of the first step that fell behind."""
    print(
        "\nknee: rate asked, rate produced, lag growth in the second half, lag at "
        "end, machine CPU busy"
    )
    for asked in args.steps:
        ticks = machine_ticks()
        producer = live_replay(topic, asked, args.step_s)
        points = watch(probe, args.step_s, args.sample_s)
        busy = busy_share(ticks, machine_ticks())
        finish(producer)
        second_half = points[len(points) // 2 :]
        produced = slope_per_s([(t, end) for t, end, _ in second_half])
        growth = slope_per_s([(t, lag) for t, _, lag in second_half])
        final_lag = points[-1][2]
        behind = (
            growth > LAG_GROWTH_LIMIT * produced and final_lag > LAG_LIMIT_S * produced
        )
        print(
            f"  {asked:>7,.0f}/s  {produced:>9,.0f}/s  {growth:>+9,.0f}/s"
            f"  {final_lag:>9,}  {busy:>4.0%}"
            f"  {'falls behind' if behind else 'keeps up'}"
        )
        if behind:
            return produced
    return None


def soak(
    probe: LagProbe, topic: str, args: argparse.Namespace, reports: list[dict[str, Any]]
) -> None:
    print(f"\nsoak: {args.soak_s:.0f} s at {args.rate:,.0f} beats/s asked")
    first = len(reports)
    ticks = machine_ticks()
    producer = live_replay(topic, args.rate, args.soak_s)
    points = watch(probe, args.soak_s, args.sample_s)
    busy = busy_share(ticks, machine_ticks())
    finish(producer)
    span = args.interval_s
    intervals = int(args.soak_s // span)
    deadline = time.monotonic() + span + 10
    while len(reports) < first + intervals and time.monotonic() < deadline:
        time.sleep(0.5)
    start_t = points[0][0]
    print(
        f"  per {span:.0f} s: produced/s  scored/s  lag max  lag end  p99 ms  RSS MB"
        "  monitor cores"
    )
    previous = reports[first - 1] if first else None
    for i, report in enumerate(reports[first:][:intervals]):
        cpu = (
            (report["cpu_s"] - previous["cpu_s"]) / (report["t_s"] - previous["t_s"])
            if previous and "cpu_s" in previous
            else float("nan")
        )
        previous = report
        window = [p for p in points if span * i <= p[0] - start_t < span * (i + 1)]
        if len(window) < 2:
            continue
        produced = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
        print(
            f"  {(i + 1) * span:>7.0f} s  {produced:>10,.0f}"
            f"  {report['scored'] / span:>8,.0f}"
            f"  {max(p[2] for p in window):>7,}  {window[-1][2]:>7,}"
            f"  {report['p99_ms']:>6.0f}  {report['rss_mb']:>6.0f}  {cpu:>13.2f}"
        )
    lags = [(t, lag) for t, _, lag in points]
    half = lags[len(lags) // 2 :]
    print(
        f"  lag trend over the second half: {slope_per_s(half):+,.0f} beats/s; "
        f"max lag {max(lag for _, lag in lags):,} beats; machine CPU busy "
        f"{busy:.0%} of {os.cpu_count()} cores"
    )


def delete_topic(topic: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()


class MonitorRun:
    """A fresh topic that keeps every beat, a monitor process scoring it, and a
    probe of its group's lag; :meth:`close` stops the monitor and deletes the
    topic.

    The ramp and the soak each get their own: patients of the ramp's steps
    would otherwise sit in the soak's monitor until it forgets them.
    """

    def __init__(self, bundle: Path, args: argparse.Namespace) -> None:
        from tests.services import create_topics, unique_name

        self.topic = unique_name("bench-soak")
        # The broker keeps 256 MB a partition by default, under a minute of
        # beats here: a backlog would be deleted unread and the lag would look
        # flat. This topic keeps everything.
        create_topics(
            BOOTSTRAP,
            [self.topic],
            partitions=2,
            configs={"retention.bytes": "-1", "retention.ms": "-1"},
        )
        self.monitor = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--role",
                "monitor",
                "--bundle",
                str(bundle),
                "--topic",
                self.topic,
                "--interval-s",
                str(args.interval_s),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        stdout = self.monitor.stdout
        assert stdout is not None
        self.reports: list[dict[str, Any]] = []
        self.started = json.loads(stdout.readline())
        self._reader = threading.Thread(
            target=lambda: self.reports.extend(json.loads(line) for line in stdout),
            daemon=True,
        )
        self._reader.start()
        time.sleep(5.0)
        self.probe = LagProbe(self.topic, f"{self.topic}-bench")

    def next_report(self) -> int:
        """Wait for the monitor's next report; how many there are then."""
        before = len(self.reports)
        while len(self.reports) == before and self.monitor.poll() is None:
            time.sleep(0.2)
        return len(self.reports)

    def close(self) -> None:
        self.probe.close()
        if self.monitor.poll() is None:
            self.monitor.terminate()
            try:
                self.monitor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.monitor.kill()
        self._reader.join(timeout=5)
        delete_topic(self.topic)


def orchestrate(args: argparse.Namespace) -> None:
    already = "running" in kafka("status", PORT)
    kafka("start", PORT)
    try:
        bundle = ensure_bundle(Path(args.bundle))
        print(f"machine: {os.cpu_count()} cores; bundle {bundle}; broker {BOOTSTRAP}")
        if args.steps:
            ramp = MonitorRun(bundle, args)
            try:
                knee = find_knee(ramp.probe, ramp.topic, args)
            finally:
                ramp.close()
            print(
                f"  knee: about {knee:,.0f} beats/s"
                if knee
                else "  knee: not reached in the ramp"
            )

        run = MonitorRun(bundle, args)
        try:
            # Start just after a monitor report, so that its reports line up
            # with the soak's intervals.
            before = run.next_report()
            soak(run.probe, run.topic, args, run.reports)
        finally:
            run.close()
        soaked = run.reports[before:]
        print(
            f"  monitor RSS: {run.started['rss_mb']:.0f} MB at start, "
            f"{soaked[0]['rss_mb'] if soaked else float('nan'):.0f} MB after the "
            f"first soak interval, {run.reports[-1]['rss_mb']:.0f} MB at the end"
        )
    finally:
        if not already:
            kafka("stop", PORT)


def main() -> None:
    parser = argparse.ArgumentParser(description="soak benchmark of the monitor")
    parser.add_argument(
        "--role", choices=["orchestrate", "monitor"], default="orchestrate"
    )
    parser.add_argument("--bundle", default=str(REPO / "runs" / "dense"))
    parser.add_argument("--topic")
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--soak-s", type=float, default=600)
    parser.add_argument(
        "--steps",
        type=lambda text: [float(x) for x in text.split(",") if x],
        default=[8000.0, 10_000.0, 12_000.0, 14_000.0, 16_000.0, 18_000.0],
        help="comma-separated rates for the knee ramp; empty to skip it",
    )
    parser.add_argument("--step-s", type=float, default=45)
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument("--interval-s", type=float, default=60)
    parser.add_argument("--metrics-port", type=int, default=49208)
    args = parser.parse_args()
    {"orchestrate": orchestrate, "monitor": run_monitor}[args.role](args)


if __name__ == "__main__":
    main()
