"""The ``beatmon monitor`` subcommand: score the beat stream with a model bundle."""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beatmon.errors import TransportError

if TYPE_CHECKING:
    from beatmon.settings import MonitorSettings
    from monitor.service import BatchObserver, MonitorStats

logger = logging.getLogger(__name__)

# Flag destination -> settings key. Flags default to None: only the flags
# given on the command line override the file and the environment.
FLAG_KEYS = {
    "bundle": "monitor.bundle",
    "bootstrap": "kafka.bootstrap_servers",
    "beats_topic": "topics.beats",
    "alerts_topic": "topics.alerts",
    "dead_letter_topic": "topics.dead_letters",
    "scores_topic": "topics.scores",
    "group": "monitor.group_id",
    "max_batch": "monitor.max_batch",
    "max_wait_ms": "monitor.max_wait_ms",
    "report_every": "monitor.report_every_s",
    "metrics_port": "metrics.port",
    "mqtt_host": "mqtt.host",
    "mqtt_port": "mqtt.port",
}


def add_parser(subparsers: Any) -> None:
    """Add the ``monitor`` subcommand to ``beatmon``'s subparsers."""
    from beatmon.settings import MonitorSettings

    d = MonitorSettings.__dataclass_fields__
    p = subparsers.add_parser(
        "monitor",
        help="score beats from Kafka and publish alerts and alarms",
        description="Join a consumer group on the beat topic, score beats in "
        "micro-batches with a model bundle, publish alerts, alarms and dead "
        "letters, and serve Prometheus metrics. Settings come from the file, "
        "then BEATMON_* variables, then these flags.",
    )
    p.add_argument(
        "--config",
        help="settings file (default: config/beatmon.yaml if present, "
        "or $BEATMON_CONFIG)",
    )
    p.add_argument("--bundle", help=f"model bundle folder ({d['bundle'].default})")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (127.0.0.1:9092)")
    p.add_argument("--beats-topic", help="(beatmon.beats)")
    p.add_argument("--alerts-topic", help="(beatmon.alerts)")
    p.add_argument("--dead-letter-topic", help="(beatmon.beats.dlq)")
    p.add_argument("--scores-topic", help="also publish every beat's score here (off)")
    p.add_argument("--group", help=f"consumer group ({d['group_id'].default})")
    p.add_argument(
        "--max-batch",
        type=int,
        help=f"most beats scored in one call ({d['max_batch'].default})",
    )
    p.add_argument(
        "--max-wait-ms",
        type=int,
        help=f"longest wait to fill a batch after its first beat "
        f"({d['max_wait_ms'].default})",
    )
    p.add_argument(
        "--report-every",
        type=float,
        metavar="S",
        help=f"seconds between progress lines ({d['report_every_s'].default})",
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus metrics port (9108)")
    p.add_argument("--mqtt-host", help="MQTT broker host (127.0.0.1)")
    p.add_argument("--mqtt-port", type=int, help="MQTT broker port (1883)")
    p.add_argument("--no-mqtt", action="store_true", help="publish no alarms over MQTT")
    p.add_argument("--no-metrics", action="store_true", help="serve no metrics")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> MonitorSettings:
    """The monitor's settings: file, then environment, then the flags given."""
    from beatmon.settings import load_monitor_settings

    overrides: dict[str, object] = {
        key: getattr(args, dest) for dest, key in FLAG_KEYS.items()
    }
    if args.no_mqtt:
        overrides["mqtt.enabled"] = False
    if args.no_metrics:
        overrides["metrics.enabled"] = False
    return load_monitor_settings(
        Path(args.config) if args.config else None, overrides=overrides
    )


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT or SIGTERM; 0 after a clean drain."""
    from beatmon.shutdown import stop_on_signals

    settings = settings_from_args(args)
    logger.info("settings: %s", settings.describe())
    stopping = threading.Event()
    with stop_on_signals(stopping):
        stats = serve(settings, stopping)
    print(summary(stats))
    return 0


def serve(
    settings: MonitorSettings,
    stopping: threading.Event,
    observers: Sequence[BatchObserver] = (),
) -> MonitorStats:
    """Build the monitor from ``settings`` and run it until ``stopping`` is set."""
    from kafka.errors import KafkaError
    from prometheus_client import CollectorRegistry

    from beatmon.kafka_login import check_login
    from models.bundle import load_serving_bundle
    from models.scoring import limit_blas_threads
    from monitor.alarms import AlarmPolicy, AlarmSettings
    from monitor.metrics import MonitorMetrics
    from monitor.metrics import serve as serve_metrics
    from monitor.service import (
        Monitor,
        MonitorConfig,
        Rebalances,
        make_consumer,
        make_producer,
    )
    from monitor.topics import COMPACTED, ensure_topics

    model = load_serving_bundle(settings.bundle)
    limit_blas_threads()
    topics = settings.topics
    kafka_options = settings.kafka.client_options()
    config = MonitorConfig(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        beats_topic=topics.beats,
        alerts_topic=topics.alerts,
        dead_letter_topic=topics.dead_letters,
        scores_topic=topics.scores,
        alarms_topic=topics.alarms,
        alarm_state_topic=topics.alarm_state,
        group_id=settings.group_id,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        report_every_s=settings.report_every_s,
        session_timeout_ms=settings.session_timeout_ms,
        kafka_options=kafka_options,
    )
    alarms = AlarmPolicy(
        AlarmSettings.from_mapping(settings.alarms.as_mapping()),
        model_version=model.version,
    )
    with ExitStack() as stack:
        check_login(config.bootstrap_servers, kafka_options)
        try:
            ensure_topics(
                config.bootstrap_servers,
                {topics.alarm_state: COMPACTED},
                kafka_options,
            )
            producer = make_producer(config)
            stack.callback(producer.close, config.delivery_timeout_s)
            rebalances = Rebalances()
            consumer = make_consumer(config, rebalances)
            stack.callback(consumer.close, autocommit=False)
        except KafkaError as exc:
            raise TransportError(
                f"cannot reach Kafka at {config.bootstrap_servers} ({exc}); start a "
                "broker (scripts/kafka start) or point --bootstrap at one"
            ) from exc

        metrics = None
        if settings.metrics.enabled:
            registry = CollectorRegistry()
            metrics = MonitorMetrics(registry, model)
            server = serve_metrics(
                registry, host=settings.metrics.host, port=settings.metrics.port
            )
            stack.callback(server.close)
            logger.info("metrics served at %s", server.url)
        mqtt = _start_mqtt(settings, stack) if settings.mqtt.enabled else None
        watcher = None
        if settings.reload_interval_s > 0:
            from monitor.reload import BundleWatcher

            watcher = BundleWatcher(
                settings.bundle, model, settings.reload_interval_s, metrics=metrics
            )
            watcher.start()
            stack.callback(watcher.close)

        monitor = Monitor(
            config,
            model,
            consumer,
            producer,
            alarms=alarms,
            alarm_sink=mqtt,
            metrics=metrics,
            rebalances=rebalances,
            stop_event=stopping,
            observers=observers,
            gauges=[_mqtt_gauges(mqtt, metrics)] if mqtt and metrics else [],
            models=watcher,
        )
        return monitor.run()


def _start_mqtt(settings: MonitorSettings, stack: ExitStack) -> Any:
    from monitor.mqtt import MqttPublisher, MqttSettings

    config = settings.mqtt
    publisher = MqttPublisher(
        MqttSettings(
            host=config.host,
            port=config.port,
            username=config.username,
            password=config.password.reveal() if config.password else None,
            tls=config.tls,
            ca_file=config.ca_file,
            cert_file=config.cert_file,
            key_file=config.key_file,
            topic_prefix=config.topic_prefix,
            buffer_size=config.buffer_size,
        )
    )
    publisher.start()
    stack.callback(publisher.close)
    return _TopicSafe(publisher)


class _TopicSafe:
    """Hands alarms to the MQTT publisher under topic-safe patient ids."""

    def __init__(self, publisher: Any) -> None:
        from monitor.mqtt import topic_safe

        self.publisher = publisher
        self._safe = topic_safe

    def publish_alarm(self, patient: str, payload: bytes) -> None:
        self.publisher.publish_alarm(self._safe(patient), payload)

    def set_status(self, patient: str, payload: bytes) -> None:
        self.publisher.set_status(self._safe(patient), payload)


def _mqtt_gauges(mqtt: _TopicSafe, metrics: Any) -> Any:
    def update() -> None:
        publisher = mqtt.publisher
        metrics.mqtt_state(
            publisher.connected, publisher.buffered, publisher.dropped_total
        )

    return update


def summary(stats: MonitorStats) -> str:
    """A paragraph for the operator when the monitor stops."""
    import time

    elapsed_s = max(time.monotonic() - stats.started_at, 1e-9)

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{1000 * value:.1f} ms"

    priorities = ", ".join(
        f"{name} {stats.alarms_by_priority[name]}"
        for name in ("low", "medium", "high")
        if stats.alarms_by_priority[name]
    )
    truth = (
        f" Against the ground truth the beats carried: sensitivity "
        f"{pct(stats.sensitivity())}, false-alarm rate "
        f"{pct(stats.false_alarm_rate())}."
        if stats.truth
        else ""
    )
    return (
        f"Scored {stats.scored} beats in {elapsed_s:.1f} s "
        f"({stats.scored / elapsed_s:.0f} beats/s); {stats.flagged} flagged, "
        f"{stats.dead_lettered} dead-lettered. "
        f"Alarm events: {stats.alarms}{f' ({priorities})' if priorities else ''}."
        f"{truth} Latency from beat to acknowledged output: p50 "
        f"{ms(stats.latency_quantile_s(0.5))}, "
        f"p99 {ms(stats.latency_quantile_s(0.99))}."
    )
