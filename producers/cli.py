"""The ``beatmon replay`` subcommand: stream a beat file onto Kafka."""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beatmon.cli import (
    add_config_option,
    add_data_options,
    field_defaults,
    load_labelled,
)
from beatmon.errors import DataError, TransportError
from beatmon.settings import (
    KafkaSettings,
    ProducerSettings,
    TopicSettings,
    load_replay_settings,
)
from beatmon.shutdown import stop_on_signals

if TYPE_CHECKING:
    from models.data import BeatSet
    from producers.replay import ReplaySettings

logger = logging.getLogger(__name__)

LINGER_MS = 10
# Near the broker's 1 MiB cap on a record batch: at full speed, fewer and
# larger requests lift the send rate by about a quarter over 256 KiB.
BATCH_SIZE_BYTES = 960 * 1024
# How long send() may block on a full buffer or missing metadata.
MAX_BLOCK_MS = 30_000
CLOSE_TIMEOUT_S = 5.0

# Flag destination -> settings key. Flags default to None: only the flags
# given on the command line override the file and the environment.
FLAG_KEYS = {
    "bootstrap": "kafka.bootstrap_servers",
    "topic": "topics.beats",
    "data": "replay.data",
    "layout": "replay.layout",
    "normal_label": "replay.normal_label",
    "truth": "replay.truth",
    "patients": "replay.patients",
    "patient_prefix": "replay.patient_prefix",
    "seed": "replay.seed",
    "speed": "replay.speed",
    "max_rate": "replay.max_rate",
    "loop": "replay.loop",
    "limit": "replay.limit",
    "duration": "replay.duration_s",
    "report_every": "replay.report_every_s",
    "connect_timeout": "replay.connect_timeout_s",
}


def make_producer(
    bootstrap: str, *, connect_timeout_s: float = 10.0, **client_options: Any
) -> Any:
    """A batching KafkaProducer (idempotent, acks=all) for raw bytes.

    ``client_options`` are further kafka-python keyword arguments, such as the
    security ones of :meth:`KafkaSettings.client_options`. Raises
    TransportError when the brokers refuse the SASL login, or when no broker
    at ``bootstrap`` answers within ``connect_timeout_s`` seconds.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from beatmon.kafka_login import check_login
    from beatmon.outage import RECONNECT_BACKOFF_MAX_MS
    from producers.replay import DELIVERY_TIMEOUT_S

    check_login(bootstrap, client_options)
    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="beatmon-replay",
            linger_ms=LINGER_MS,
            batch_size=BATCH_SIZE_BYTES,
            max_block_ms=MAX_BLOCK_MS,
            bootstrap_timeout_ms=int(connect_timeout_s * 1000),
            delivery_timeout_ms=int(DELIVERY_TIMEOUT_S * 1000),
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
            **client_options,
        )
    except (KafkaError, OSError, ValueError) as exc:
        raise TransportError(
            f"cannot reach Kafka at {bootstrap} within {connect_timeout_s:g} s "
            f"({type(exc).__name__}: {exc}); start a broker (scripts/kafka start) "
            "or point --bootstrap at one"
        ) from exc


def load_replay_beats(settings: ProducerSettings) -> tuple[BeatSet, str | None]:
    """Read ``replay.data``; the normal label as the lab resolves it, or None.

    None means no ground truth goes out: ``replay.truth`` is false
    (``--no-truth``) or the file has no labels.
    """
    from models.data import describe_classes, load_beats

    if settings.truth:
        try:
            return load_labelled(settings.data, settings.layout, settings.normal_label)
        except DataError:
            # load_labelled refuses unlabelled files; those replay without truth.
            data = load_beats(settings.data, settings.layout)
            if data.labels is not None:
                raise
            logger.info(
                "no labels: %d beats of %d samples; they go out without ground truth",
                len(data.beats),
                data.length,
            )
            return data, None

    data = load_beats(settings.data, settings.layout)
    for line in describe_classes(data, None):
        if not line.startswith("WARNING"):
            logger.info("%s", line)
    logger.info("truth off (--no-truth): beats go out without ground truth")
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
        "patients, each with its own heart rate, keyed by patient id. Settings "
        "come from the file (replay, kafka and topics sections), then BEATMON_* "
        "variables, then these flags; the defaults shown are the built-in ones. "
        "Kafka security (SASL, TLS) is set in the file or the environment only.",
    )
    d = field_defaults(ProducerSettings)
    add_config_option(p)
    add_data_options(
        p,
        data_default=d["data"],
        layout_default=d["layout"],
        required_labels=False,
    )
    p.add_argument(
        "--truth",
        action=argparse.BooleanOptionalAction,
        help="send each beat's ground-truth label, when the file has labels "
        f"(default {'--truth' if d['truth'] else '--no-truth'})",
    )
    p.add_argument(
        "--topic",
        help=f"topic to write (default {field_defaults(TopicSettings)['beats']})",
    )
    p.add_argument(
        "--bootstrap",
        help="Kafka bootstrap servers, HOST:PORT[,...] "
        f"(default {field_defaults(KafkaSettings)['bootstrap_servers']}); "
        "security settings come from the kafka section of the settings",
    )
    p.add_argument(
        "--connect-timeout",
        type=_positive_float,
        metavar="S",
        help="seconds to wait for the broker at start "
        f"(default {d['connect_timeout_s']:g})",
    )
    p.add_argument(
        "--patients",
        type=_positive_int,
        metavar="N",
        help=f"simulated patients (default {d['patients']})",
    )
    p.add_argument(
        "--patient-prefix",
        metavar="TEXT",
        help=f"patient ids are TEXT0001, TEXT0002, ... (default {d['patient_prefix']})",
    )
    p.add_argument(
        "--seed", type=int, help=f"seed of heart rates and rhythm (default {d['seed']})"
    )
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=_positive_float,
        metavar="X",
        help="time multiplier: 2 replays twice as fast as real time; overrides "
        f"replay.max_rate (default {d['speed']:g})",
    )
    pace.add_argument(
        "--max",
        dest="max_rate",
        action="store_const",
        const=True,
        help="send as fast as possible, no pacing",
    )
    p.add_argument(
        "--loop",
        action=argparse.BooleanOptionalAction,
        help="start the file over at its end "
        f"(default {'--loop' if d['loop'] else '--no-loop'})",
    )
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
        metavar="S",
        help=f"seconds between progress lines (default {d['report_every_s']:g})",
    )
    p.set_defaults(func=run)


def replay_settings_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> ProducerSettings:
    """The replay producer's settings: file, then environment (``env`` or
    os.environ), then the flags given."""
    overrides: dict[str, object] = {
        key: getattr(args, dest) for dest, key in FLAG_KEYS.items()
    }
    if args.speed is not None:
        # A pace asked for on the command line beats max_rate from file or env.
        overrides["replay.max_rate"] = False
    path = Path(args.config) if args.config else None
    return load_replay_settings(path, env, overrides)


def replay_settings(settings: ProducerSettings) -> ReplaySettings:
    """What the replay loop needs of the producer's settings."""
    from producers.replay import ReplaySettings

    return ReplaySettings(
        topic=settings.topics.beats,
        patients=settings.patients,
        seed=settings.seed,
        speed=None if settings.max_rate else settings.speed,
        loop=settings.loop,
        limit=settings.limit,
        duration_s=settings.duration_s,
        report_every_s=settings.report_every_s,
        patient_prefix=settings.patient_prefix,
    )


def run(args: argparse.Namespace) -> int:
    """Replay as the settings say; 0 when every beat was delivered, else 1."""
    from producers.replay import PreparedRows, replay

    settings = replay_settings_from_args(args)
    logger.info("settings: %s", settings.describe())
    data, normal_label = load_replay_beats(settings)
    rows = PreparedRows.from_beats(data, normal_label)
    loop_settings = replay_settings(settings)
    producer = make_producer(
        settings.kafka.bootstrap_servers,
        connect_timeout_s=settings.connect_timeout_s,
        **settings.kafka.client_options(),
    )
    stopping = threading.Event()
    try:
        with stop_on_signals(stopping):
            stats = replay(rows, producer, loop_settings, stop=stopping.is_set)
    finally:
        producer.close(timeout=CLOSE_TIMEOUT_S)

    print(
        f"Replayed {stats.sent} beats of {data.source} to {loop_settings.topic} as "
        f"{loop_settings.patients} patients in {stats.elapsed_s:.1f} s "
        f"({stats.rate_per_s:.0f} beats/s; stopped by {stats.stopped_by}); "
        f"{stats.failed} not delivered."
    )
    return 0 if stats.failed == 0 else 1
