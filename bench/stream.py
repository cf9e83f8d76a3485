"""End-to-end benchmark of the monitor over a real Kafka broker.

Phases, all in one run so the ratios compare like with like:

1. throughput: the replay producer fills a topic with ``--beats`` beats at
   full speed; then the monitor, in its own process and with its alarm
   policy and metrics on (MQTT off), scores them all. We report beats per
   second and the monitor's peak RSS.
2. latency: the producer replays live at about ``--rate`` beats/s (many
   patients at real heart rates) while the monitor runs; we report p50 and
   p99 of the time from a beat's production to the broker's acknowledgement
   of its batch's output.
3. baseline: a naive consumer scores each message alone with
   ``model.predict``, on the same beats, for ``--naive-beats`` beats.

    .venv/bin/python bench/stream.py [--beats 200000] [--rate 2000]

It starts its own broker on port 49092 through scripts/kafka and stops it at
the end (unless one already ran there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, ensure_bundle, kafka, monitor_settings, peak_rss_mb
from bench.common import replay as replay_to

PORT = 49092
BOOTSTRAP = f"127.0.0.1:{PORT}"


def run_monitor(args: argparse.Namespace) -> None:
    """Child role: the full monitor (alarm policy and metrics on, MQTT off),
    built from settings as ``beatmon monitor`` builds it; stops after
    ``--expect`` beats and prints figures as JSON."""
    import threading

    from monitor.batch import ScoredBatch
    from monitor.cli import serve

    settings = monitor_settings(
        args.bundle,
        args.topic,
        BOOTSTRAP,
        args.metrics_port,
        {"monitor.max_batch": args.max_batch},
    )
    stopping = threading.Event()
    first_at: list[float] = []

    class Stopper:
        scored = 0

        def on_batch(self, batch: ScoredBatch) -> None:
            if not first_at:
                first_at.append(time.perf_counter())
            self.scored += len(batch.beats)
            if self.scored >= args.expect:
                stopping.set()

    stats = serve(settings, stopping, observers=[Stopper()])
    done_at = time.perf_counter()
    print(
        json.dumps(
            {
                "scored": stats.scored,
                "flagged": stats.flagged,
                "alarm_events": stats.alarms,
                "seconds": done_at - first_at[0] if first_at else 0.0,
                "p50_ms": (stats.latency_quantile_s(0.5) or 0.0) * 1000,
                "p99_ms": (stats.latency_quantile_s(0.99) or 0.0) * 1000,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def run_naive(args: argparse.Namespace) -> None:
    """Child role: one model.predict per message, the way not to do it."""
    from beatmon.cli import quiet_tensorflow

    quiet_tensorflow()
    from kafka import KafkaConsumer

    from beatmon.messages import decode_beat
    from models.bundle import load_bundle

    bundle = load_bundle(Path(args.bundle))
    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=BOOTSTRAP,
        group_id=f"{args.topic}-naive",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    scored = 0
    started = None
    while scored < args.expect:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                if started is None:
                    started = time.perf_counter()
                beat = decode_beat(record.value)
                x = bundle.scaler.transform(beat.samples[None, :].astype(np.float32))
                reconstructed = bundle.model.predict(x, verbose=0)
                float(np.mean((x - reconstructed) ** 2))
                scored += 1
                if scored >= args.expect:
                    break
            if scored >= args.expect:
                break
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    print(
        json.dumps({"scored": scored, "seconds": elapsed, "peak_rss_mb": peak_rss_mb()})
    )


def child(
    role: str, bundle: Path, topic: str, expect: int, max_batch: int = 512
) -> dict[str, Any]:
    result = subprocess.run(
        [
            sys.executable,
            __file__,
            "--role",
            role,
            "--bundle",
            str(bundle),
            "--topic",
            topic,
            "--expect",
            str(expect),
            "--max-batch",
            str(max_batch),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if result.returncode != 0:
        sys.exit(f"{role} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def orchestrate(args: argparse.Namespace) -> None:
    from tests.services import create_topics, unique_name

    already = "running" in kafka("status", PORT)
    kafka("start", PORT)
    try:
        bundle = ensure_bundle(Path(args.bundle))
        print(f"machine: {os.cpu_count()} cores; bundle {bundle}; broker {BOOTSTRAP}")

        topic = unique_name("bench-throughput")
        create_topics(BOOTSTRAP, [topic], partitions=2)
        fill_s = replay_to(
            BOOTSTRAP,
            topic,
            "--max",
            "--loop",
            "--limit",
            str(args.beats),
            "--patients",
            "1000",
        )
        print(
            f"producer: {args.beats} beats written in {fill_s:.1f} s "
            f"({args.beats / fill_s:,.0f} beats/s, one process, --max)"
        )
        fast = child("monitor", bundle, topic, args.beats, args.max_batch)
        rate = fast["scored"] / fast["seconds"]
        print(
            f"monitor:  {fast['scored']} beats in {fast['seconds']:.2f} s = "
            f"{rate:,.0f} beats/s (max batch {args.max_batch}); "
            f"peak RSS {fast['peak_rss_mb']:.0f} MB"
        )

        naive = child("naive", bundle, topic, args.naive_beats)
        naive_rate = naive["scored"] / naive["seconds"]
        print(
            f"baseline: {naive['scored']} beats one by one with model.predict in "
            f"{naive['seconds']:.1f} s = {naive_rate:,.1f} beats/s; peak RSS "
            f"{naive['peak_rss_mb']:.0f} MB"
        )
        print(f"speed-up: {rate / naive_rate:,.0f}x")

        live = unique_name("bench-latency")
        create_topics(BOOTSTRAP, [live], partitions=2)
        patients = int(args.rate * 60 / 75)
        expect = int(args.rate * args.live_s * 0.9)
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--role",
                "monitor",
                "--bundle",
                str(bundle),
                "--topic",
                live,
                "--expect",
                str(expect),
                "--max-batch",
                str(args.max_batch),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        time.sleep(3.0)
        replay_to(
            BOOTSTRAP,
            live,
            "--loop",
            "--patients",
            str(patients),
            "--duration",
            str(args.live_s),
        )
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            sys.exit(f"live monitor failed:\n{err[-3000:]}")
        paced = json.loads(out.strip().splitlines()[-1])
        print(
            f"latency at about {args.rate} beats/s ({patients} patients, "
            f"{paced['scored']} beats): p50 {paced['p50_ms']:.1f} ms, "
            f"p99 {paced['p99_ms']:.1f} ms (produced -> output acknowledged); "
            f"peak RSS {paced['peak_rss_mb']:.0f} MB"
        )
    finally:
        if not already:
            kafka("stop", PORT)


def main() -> None:
    parser = argparse.ArgumentParser(description="end-to-end monitor benchmark")
    parser.add_argument(
        "--role", choices=["orchestrate", "monitor", "naive"], default="orchestrate"
    )
    parser.add_argument("--bundle", default=str(REPO / "runs" / "dense"))
    parser.add_argument("--topic")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--beats", type=int, default=200_000)
    parser.add_argument("--naive-beats", type=int, default=300)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--live-s", type=float, default=20.0)
    parser.add_argument("--max-batch", type=int, default=512)
    parser.add_argument("--metrics-port", type=int, default=49108)
    args = parser.parse_args()
    {"orchestrate": orchestrate, "monitor": run_monitor, "naive": run_naive}[args.role](
        args
    )


if __name__ == "__main__":
    main()
