"""The ``beatmon replay`` subcommand: stream a beat file onto Kafka."""

from __future__ import annotations

import argparse
import logging
import threading
from typing import TYPE_CHECKING, Any

from beatmon.cli import _add_data_options, load_labelled
from beatmon.errors import DataError, TransportError
from beatmon.shutdown import stop_on_signals
from producers import DEFAULT_TOPIC

if TYPE_CHECKING:
    from models.data import BeatSet
    from producers.replay import ReplaySettings

logger = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
LINGER_MS = 10
# Near the broker's 1 MiB cap on a record batch: at full speed, fewer and
# larger requests lift the send rate by about a quarter over 256 KiB.
BATCH_SIZE_BYTES = 960 * 1024
# How long send() may block on a full buffer or missing metadata.
MAX_BLOCK_MS = 30_000
CLOSE_TIMEOUT_S = 5.0


def make_producer(bootstrap: str, *, connect_timeout_s: float = 10.0) -> Any:
    """A batching KafkaProducer (idempotent, acks=all) for raw bytes.

    Raises TransportError when no broker at ``bootstrap`` answers within
    ``connect_timeout_s`` seconds.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="beatmon-replay",
            linger_ms=LINGER_MS,
            batch_size=BATCH_SIZE_BYTES,
            max_block_ms=MAX_BLOCK_MS,
            bootstrap_timeout_ms=int(connect_timeout_s * 1000),
        )
    except (KafkaError, OSError, ValueError) as exc:
        raise TransportError(
            f"cannot reach Kafka at {bootstrap} within {connect_timeout_s:g} s "
            f"({type(exc).__name__}: {exc}); start a broker (scripts/kafka start) "
            "or point --bootstrap at one"
        ) from exc


def load_replay_beats(args: argparse.Namespace) -> tuple[BeatSet, str | None]:
    """Read ``--data``; the normal label as the lab resolves it, or None.

    None means no ground truth goes out: ``--no-truth`` or an unlabelled file.
    """
    from models.data import describe_classes, load_beats

    if not args.no_truth:
        try:
            return load_labelled(args)
        except DataError:
            # load_labelled refuses unlabelled files; those replay without truth.
            data = load_beats(args.data, args.layout)
            if data.labels is not None:
                raise
            logger.info(
                "no labels: %d beats of %d samples; they go out without ground truth",
                len(data.beats),
                data.length,
            )
            return data, None

    data = load_beats(args.data, args.layout)
    for line in describe_classes(data, None):
        if not line.startswith("WARNING"):
            logger.info("%s", line)
    logger.info("--no-truth: beats go out without ground truth")
    return data, None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_parser(subparsers: Any) -> None:
    """Add the ``replay`` subcommand to ``beatmon``'s subparsers."""
    p = subparsers.add_parser(
        "replay",
        help="stream a beat file onto Kafka as simulated patients",
        description="Stream the beats of a file onto a Kafka topic as simulated "
        "patients, each with its own heart rate, keyed by patient id.",
    )
    _add_data_options(p, required_labels=False)
    p.add_argument(
        "--no-truth", action="store_true", help="send no ground-truth labels"
    )
    p.add_argument(
        "--topic", default=DEFAULT_TOPIC, help=f"topic to write ({DEFAULT_TOPIC})"
    )
    p.add_argument(
        "--bootstrap",
        default=DEFAULT_BOOTSTRAP,
        help=f"Kafka bootstrap servers, HOST:PORT[,...] ({DEFAULT_BOOTSTRAP})",
    )
    p.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the broker at start (10)",
    )
    p.add_argument(
        "--patients",
        type=_positive_int,
        default=100,
        metavar="N",
        help="simulated patients (100)",
    )
    p.add_argument(
        "--patient-prefix",
        default="p",
        metavar="TEXT",
        help="patient ids are TEXT0001, TEXT0002, ... (p)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of heart rates and rhythm (0)"
    )
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=_positive_float,
        default=1.0,
        metavar="X",
        help="time multiplier: 2 replays twice as fast as real time (1)",
    )
    pace.add_argument(
        "--max", action="store_true", help="send as fast as possible, no pacing"
    )
    p.add_argument("--loop", action="store_true", help="start the file over at its end")
    p.add_argument(
        "--limit", type=_positive_int, metavar="N", help="stop after N beats in all"
    )
    p.add_argument(
        "--duration",
        type=_positive_float,
        metavar="S",
        help="stop after S seconds of wall time",
    )
    p.add_argument(
        "--report-every",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds between progress lines (5)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Replay as ``args`` say; 0 when every beat was delivered, else 1."""
    from producers.replay import PreparedRows, replay

    data, normal_label = load_replay_beats(args)
    rows = PreparedRows.from_beats(data, normal_label)
    settings = replay_settings(args)
    producer = make_producer(args.bootstrap, connect_timeout_s=args.connect_timeout)
    stopping = threading.Event()
    try:
        with stop_on_signals(stopping):
            stats = replay(rows, producer, settings, stop=stopping.is_set)
    finally:
        producer.close(timeout=CLOSE_TIMEOUT_S)

    print(
        f"Replayed {stats.sent} beats of {data.source} to {settings.topic} as "
        f"{settings.patients} patients in {stats.elapsed_s:.1f} s "
        f"({stats.rate_per_s:.0f} beats/s; stopped by {stats.stopped_by}); "
        f"{stats.failed} not delivered."
    )
    return 0 if stats.failed == 0 else 1


def replay_settings(args: argparse.Namespace) -> ReplaySettings:
    """The replay settings the command line asks for."""
    from producers.replay import ReplaySettings

    return ReplaySettings(
        topic=args.topic,
        patients=args.patients,
        seed=args.seed,
        speed=None if args.max else args.speed,
        loop=args.loop,
        limit=args.limit,
        duration_s=args.duration,
        report_every_s=args.report_every,
        patient_prefix=args.patient_prefix,
    )
