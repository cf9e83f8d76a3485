"""The ``beatmon monitor`` subcommand: score the beat stream with a model bundle."""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path
from typing import Any

from beatmon.errors import TransportError

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    """Add the ``monitor`` subcommand to ``beatmon``'s subparsers."""
    from monitor.service import MonitorConfig

    defaults = MonitorConfig()
    p = subparsers.add_parser(
        "monitor",
        help="score beats from Kafka and publish alerts",
        description="Join a consumer group on the beat topic, score beats in "
        "micro-batches with a model bundle, and publish alerts and dead letters.",
    )
    p.add_argument("--bundle", required=True, help="model bundle folder")
    p.add_argument(
        "--bootstrap",
        default=defaults.bootstrap_servers,
        help=f"Kafka bootstrap servers ({defaults.bootstrap_servers})",
    )
    p.add_argument("--beats-topic", default=defaults.beats_topic, help="(%(default)s)")
    p.add_argument(
        "--alerts-topic", default=defaults.alerts_topic, help="(%(default)s)"
    )
    p.add_argument(
        "--dead-letter-topic", default=defaults.dead_letter_topic, help="(%(default)s)"
    )
    p.add_argument(
        "--scores-topic",
        help="also publish every beat's score here (off by default)",
    )
    p.add_argument(
        "--group", default=defaults.group_id, help="consumer group (%(default)s)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=defaults.max_batch,
        help="most beats scored in one call (%(default)s)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=int,
        default=defaults.max_wait_ms,
        help="longest wait to fill a batch after its first beat (%(default)s)",
    )
    p.add_argument(
        "--report-every",
        type=float,
        default=defaults.report_every_s,
        metavar="S",
        help="seconds between progress lines (%(default)s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT or SIGTERM; 0 after a clean drain."""
    from kafka.errors import KafkaError

    from beatmon.shutdown import stop_on_signals
    from models.bundle import load_serving_bundle
    from models.scoring import limit_blas_threads
    from monitor.service import Monitor, MonitorConfig, make_consumer, make_producer

    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise TransportError(
            "--max-batch must be at least 1 and --max-wait-ms at least 0"
        )
    model = load_serving_bundle(Path(args.bundle))
    limit_blas_threads()
    config = MonitorConfig(
        bootstrap_servers=args.bootstrap,
        beats_topic=args.beats_topic,
        alerts_topic=args.alerts_topic,
        dead_letter_topic=args.dead_letter_topic,
        scores_topic=args.scores_topic,
        group_id=args.group,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        report_every_s=args.report_every,
    )
    try:
        producer = make_producer(config)
        consumer = make_consumer(config)
    except KafkaError as exc:
        raise TransportError(
            f"cannot reach Kafka at {config.bootstrap_servers} ({exc}); start a "
            "broker (scripts/kafka start) or point --bootstrap at one"
        ) from exc

    stopping = threading.Event()
    monitor = Monitor(config, model, consumer, producer, stop_event=stopping)
    try:
        with stop_on_signals(stopping):
            monitor.run()
    finally:
        monitor.close()
    return 0
